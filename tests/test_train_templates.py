"""Checkpoint chat templates: masks without generation markers, a recipe's template, none."""

from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from helpers.models import tiny_model
from helpers.recipes import SMALL
from helpers.training import sums, write_chats
from seed.endpoints.local import load_tokenizer
from seed.errors import UserError
from seed.recipe import TrainConfig
from seed.train import train_student
from seed.train.data import assistant_mask

CHATML = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant."
    "<|im_end|>\n{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CHAT = [{"role": "user", "content": "What is 2 + 2?"}, {"role": "assistant", "content": "4"},
        {"role": "user", "content": "And 3 + 3?"}, {"role": "assistant", "content": "It is 6."}]


def _chatml_tokenizer(template: str | None) -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<|im_start|>", "<|im_end|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([m["content"] for m in CHAT] * 20 + ["system user assistant"] * 20,
                            trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>",
                                      pad_token="<|im_end|>")
    wrapped.chat_template = template
    return wrapped


def _turns(tok: PreTrainedTokenizerFast, ids: list[int], mask: list[int]) -> list[str]:
    """The decoded text of each run of masked tokens."""
    runs, current = [], []
    for i, m in zip(ids, mask, strict=True):
        if m:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tok.decode(r) for r in runs]


def test_a_template_without_generation_markers_masks_exactly_the_assistant_turns() -> None:
    tok = _chatml_tokenizer(CHATML)
    example = assistant_mask(tok, CHAT)
    text = tok.apply_chat_template(CHAT, tokenize=False)
    assert example.ids == tok(text, add_special_tokens=False)["input_ids"]
    # Each assistant turn's content and its end-of-turn marker; nothing of the prompts.
    assert _turns(tok, example.ids, example.mask) == ["4<|im_end|>\n", "It is 6.<|im_end|>\n"]


def test_a_checkpoint_without_a_template_is_an_error_naming_the_setting(tmp_path: Path) -> None:
    base = tiny_model(tmp_path / "base", tokenizer="digits", size="nano")
    (base / "chat_template.jinja").unlink()
    config = TrainConfig.model_validate({**SMALL, "student": {"checkpoint": str(base)}})
    with pytest.raises(UserError, match=r"no chat template; set train\.student\.chat_template"):
        train_student(write_chats(tmp_path / "r.jsonl", sums()), tmp_path / "out", config, 0)


def test_a_model_directory_without_a_template_is_refused_for_serving(tmp_path: Path) -> None:
    _chatml_tokenizer(None).save_pretrained(tmp_path)
    with pytest.raises(UserError, match=r"no chat template; add chat_template\.jinja"):
        load_tokenizer(tmp_path)


def test_a_directory_without_tokenizer_files_is_refused_in_one_line(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(UserError, match=r"no tokenizer can be loaded from this directory"):
        load_tokenizer(tmp_path)


def test_a_recipe_template_inline_or_from_a_file_fills_the_gap(tmp_path: Path) -> None:
    _chatml_tokenizer(None).save_pretrained(tmp_path / "ckpt")
    (tmp_path / "chatml.jinja").write_text(CHATML)
    from_file = load_tokenizer(tmp_path / "ckpt", str(tmp_path / "chatml.jinja"))
    inline = load_tokenizer(tmp_path / "ckpt", CHATML)
    assert from_file.chat_template == inline.chat_template == CHATML
    example = assistant_mask(from_file, CHAT)
    assert _turns(from_file, example.ids, example.mask)[1] == "It is 6.<|im_end|>\n"


def test_a_plain_tokenizer_loads_without_auto_tokenizer_and_the_same(tiny_model_dir: Path) -> None:
    """Seed's students (`TokenizersBackend`) load by their class, not through AutoTokenizer's
    config lookup: the same class, tokens, special tokens and rendered chats either way."""
    from transformers import AutoTokenizer

    direct, auto = load_tokenizer(tiny_model_dir), AutoTokenizer.from_pretrained(tiny_model_dir)
    assert type(direct) is type(auto)
    assert direct("Calculate 12 + 34.")["input_ids"] == auto("Calculate 12 + 34.")["input_ids"]
    assert direct.all_special_tokens == auto.all_special_tokens
    assert (direct.eos_token_id, direct.pad_token_id) == (auto.eos_token_id, auto.pad_token_id)
    assert direct.apply_chat_template(CHAT, tokenize=False) == auto.apply_chat_template(
        CHAT, tokenize=False)
