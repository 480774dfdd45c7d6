"""The one tiny-model builder: a random-weight Llama and its tokenizer, saved in a directory.

Built from a config in a few seconds and loadable offline with `AutoModelForCausalLM` and
`AutoTokenizer`; nothing is downloaded. Two kinds of tokenizer:

- `"chatml"` (the default): a byte-level BPE trained on a small corpus, with a ChatML chat
  template, like a chat checkpoint from a model hub; every string (JSON included) encodes. For
  serving, generation and judging tests.
- one of Seed's kinds (`"digits"`, `"bpe"`, `"chars"`): `seed.train.tokenizer.train_tokenizer`
  with Seed's chat template, like a student Seed trains. For training tests; trained on the
  arithmetic chats of `helpers.training.sums` unless `texts` is given.

`size` takes the shape from Seed's named student sizes (the model `seed train` builds);
otherwise `hidden` and `layers` set it. The weights are noise: what the model says is for a test
to pass through a real server or loop, not to assert.
"""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Seed builds a chat model you own from a stronger model you can call.",
    '{"verdict": "A", "score": 7, "reason": "clear and correct"}',
    '{"name": "Ada", "age": 36, "tags": ["math", "code"], "ok": true, "none": null}',
    "What is 12 + 30? The answer is 42. 0 1 2 3 4 5 6 7 8 9 10 100 1000",
    "Hello! How can I help you today? Please explain the idea in simple words.",
    "user assistant system: a helpful, honest and harmless assistant answers questions.",
]

# Seed's kinds ask for 200 tokens unless told: below the 256 bytes plus specials, so the BPE learns
# no merges and every character is one token, as the training tests were written for.
CHATML_VOCAB, SEED_KIND_VOCAB = 400, 200


def tiny_model(path: Path, *, tokenizer: str = "chatml", texts: list[str] | None = None,
               vocab: int | None = None, size: str | None = None, hidden: int = 64,
               layers: int = 2, context: int = 256, chat_template: bool = True,
               seed: int = 0) -> Path:
    """Save a random-weight Llama chat model with its tokenizer in `path`; returns `path`.

    `tokenizer`: "chatml" or a Seed tokenizer kind; `texts` it is trained on; `vocab` its
    requested size; `size`: a Seed student size ("nano", "tiny", ...) instead of `hidden` and
    `layers`; `context`: positions; `chat_template=False` leaves the tokenizer without one
    ("chatml" only); `seed` draws the weights.
    """
    if tokenizer == "chatml":
        tok = _chatml_tokenizer(texts or CORPUS, vocab or CHATML_VOCAB, chat_template)
    else:
        from seed.train.tokenizer import train_tokenizer

        tok = train_tokenizer(texts or _sums_texts(), tokenizer, vocab or SEED_KIND_VOCAB)
    tok.save_pretrained(str(path))
    if size is not None:
        _save_seed_student(path, tok, size, context, seed)
    else:
        _save_chat_llama(path, tok, hidden, layers, context, seed)
    return path


def _sums_texts() -> list[str]:
    from helpers.training import sums

    return [m["content"] for chat in sums() for m in chat] * 3


def _chatml_tokenizer(texts: list[str], vocab: int, chat_template: bool):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts * 20, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>",
                                  eos_token="<|im_end|>", pad_token="<|endoftext|>")
    if chat_template:
        tok.chat_template = CHATML
    return tok


def _save_seed_student(path: Path, tok, size: str, context: int, seed: int) -> None:
    from seed.train.models import build_student, student_config

    config = student_config(size, len(tok), context, tok.pad_token_id, tok.eos_token_id)
    build_student(config, seed).save_pretrained(str(path))


def _save_chat_llama(path: Path, tok, hidden: int, layers: int, context: int, seed: int) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=context, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True, initializer_range=0.3)
    LlamaForCausalLM(cfg).save_pretrained(str(path))
    GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                     temperature=1.0, top_p=1.0).save_pretrained(str(path))
