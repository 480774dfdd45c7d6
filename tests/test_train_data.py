"""Rendering chats, the assistant-only mask, packing and the tokenizers."""

from __future__ import annotations

import pytest
from transformers import AutoTokenizer

from seed.errors import UserError
from seed.train.data import Example, assistant_mask, pack, render
from seed.train.layout import token_count
from seed.train.tokenizer import train_tokenizer


def _masked_text(tok, ex: Example) -> str:
    return tok.decode([i for i, m in zip(ex.ids, ex.mask, strict=True) if m])


def test_mask_covers_exactly_the_assistant_answer_and_its_end_token(tiny_tokenizer):
    chat = [{"role": "user", "content": "Calculate 12 + 34."},
            {"role": "assistant", "content": "46"}]
    ex = assistant_mask(tiny_tokenizer, chat)
    tokens = tiny_tokenizer.convert_ids_to_tokens(ex.ids)
    assert tokens[-4:] == ["<|assistant|>", "4", "6", "<|end|>"]
    assert ex.mask == [0] * (len(ex.ids) - 3) + [1, 1, 1]


def test_mask_in_a_multi_turn_chat_covers_every_assistant_turn_and_nothing_else(tiny_tokenizer):
    chat = [{"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hello there"},
            {"role": "assistant", "content": "Fine"},
            {"role": "user", "content": "Calculate 12 + 34."},
            {"role": "assistant", "content": "46"}]
    ex = assistant_mask(tiny_tokenizer, chat)
    assert _masked_text(tiny_tokenizer, ex) == "Fine<|end|>46<|end|>"
    # The masked runs are two separate spans, each right after an assistant role token.
    starts = [i for i in range(1, len(ex.mask)) if ex.mask[i] and not ex.mask[i - 1]]
    assert [tiny_tokenizer.convert_ids_to_tokens(ex.ids[i - 1]) for i in starts] == \
        ["<|assistant|>", "<|assistant|>"]
    assert tiny_tokenizer.decode(ex.ids) == tiny_tokenizer.apply_chat_template(chat, tokenize=False)


def test_a_chat_without_assistant_turn_has_no_trainable_token(tiny_tokenizer):
    ex = render(tiny_tokenizer, [[{"role": "user", "content": "Calculate 12 + 34."}]])[0]
    assert sum(ex.mask) == 0
    batch = pack([ex], 32, tiny_tokenizer.pad_token_id)
    assert token_count({"mask": batch.mask}) == 0


def test_pack_restarts_positions_per_example_and_pads_with_mask_zero():
    a, b, c = Example([5, 6, 7], [0, 1, 1]), Example([8, 9], [0, 1]), Example([1, 2, 3, 4], [0] * 4)
    batch = pack([a, b, c], 6, pad_id=0)
    assert batch.input_ids.tolist() == [[5, 6, 7, 8, 9, 0], [1, 2, 3, 4, 0, 0]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1, 0], [0, 1, 2, 3, 0, 1]]
    assert batch.mask.tolist() == [[0, 1, 1, 0, 1, 0], [0, 0, 0, 0, 0, 0]]
    assert token_count({"mask": batch.mask}) == 3


def test_pack_truncates_an_example_longer_than_a_row():
    batch = pack([Example(list(range(1, 11)), [1] * 10)], 4, pad_id=0)
    assert batch.input_ids.tolist() == [[1, 2, 3, 4]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 3]]
    assert token_count({"mask": batch.mask}) == 3


def test_digits_tokenizer_splits_numbers_and_bpe_does_not():
    texts = ["Calculate 12 + 34.", "46", "Calculate 77 - 12.", "65"] * 50
    digits = train_tokenizer(texts, "digits", 400)
    bpe = train_tokenizer(texts, "bpe", 400)
    chars = train_tokenizer(texts, "chars")
    assert [t for t in digits.tokenize("1234") if t.strip("Ġ")] == ["1", "2", "3", "4"]
    assert any(len(t) > 1 and t.isdigit() for t in bpe.tokenize("12 34"))
    assert chars.tokenize("Calc") == ["C", "a", "l", "c"]
    for tok in (digits, bpe, chars):
        assert tok.decode(tok.encode("Calculate -( 96 + -73 ).")) == "Calculate -( 96 + -73 )."


def test_saved_tokenizer_loads_offline_with_its_chat_template_and_eos(tmp_path, tiny_tokenizer):
    tiny_tokenizer.save_pretrained(tmp_path)
    tok = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    prompt = tok.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False,
                                     add_generation_prompt=True)
    assert prompt == "<|user|>Hi<|end|><|assistant|>"
    assert tok.eos_token == "<|end|>"
    assert tok.convert_tokens_to_ids("<|end|>") == tok.eos_token_id
    assert len(tok) == len(tiny_tokenizer)


def test_unknown_tokenizer_kind_is_a_user_error():
    with pytest.raises(UserError, match=r"train\.tokenizer\.kind"):
        train_tokenizer(["x"], "words")

