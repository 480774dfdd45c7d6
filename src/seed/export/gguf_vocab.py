"""A student's tokenizer as GGUF metadata with which llama.cpp tokenizes exactly as `tokenizers`.

Seed's three tokenizer kinds are byte-level BPE (seed.train.tokenizer), which llama.cpp calls the
"gpt2" tokenizer model; what differs is the pre-tokenizer, which GGUF names (`tokenizer.ggml.pre`)
rather than stores, so each kind must match one llama.cpp already implements:

- `bpe` and `chars`: ByteLevel with GPT-2's regex, llama.cpp's "gpt-2". `chars` learns no merges,
  but llama.cpp refuses a gpt2 vocabulary without any, and the gguf writer an empty array, so it
  gets one merge of two special tokens, which never applies (special tokens are cut out of the
  text before BPE sees it).
- `digits`: every digit split off first, then ByteLevel, which is StarCoder's pre-tokenizer,
  llama.cpp's "starcoder" (a `\\p{N}` split, then GPT-2's regex).

Any other tokenizer (a checkpoint's SentencePiece, WordPiece, a normalizer, prefix spaces) is a
UserError naming what was found: llama.cpp might load it, but nothing here would prove that it
tokenizes the same. Added tokens become CONTROL tokens (special) or USER_DEFINED ones, which
llama.cpp, like `tokenizers`, matches in the text before BPE. This module reads tokenizer files;
it knows nothing about weights.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gguf import TokenType

from seed.errors import UserError

BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}
DIGITS = {"type": "Digits", "individual_digits": True}
SUPPORTED = "Seed's byte-level BPE tokenizers (train.tokenizer.kind = digits, bpe or chars)"


@dataclass
class Vocab:
    """What GGUF's `tokenizer.*` keys hold for one tokenizer."""

    pre: str  # llama.cpp's pre-tokenizer name
    tokens: list[str]  # by id, in the byte-level alphabet (as tokenizer.json stores them)
    types: list[int]  # gguf.TokenType per token
    merges: list[str]  # "left right", by rank
    eos_id: int | None
    pad_id: int | None
    bos_id: int | None
    chat_template: str | None
    specials: dict[str, int] = field(default_factory=dict)  # special token text -> id


def _matches(found: Any, want: dict[str, Any]) -> bool:
    return isinstance(found, dict) and all(found.get(k) == v for k, v in want.items())


def _pre_name(pre: Any) -> str | None:
    """llama.cpp's name for a tokenizer.json pre_tokenizer, or None if none matches it."""
    if _matches(pre, BYTE_LEVEL):
        return "gpt-2"
    if isinstance(pre, dict) and pre.get("type") == "Sequence":
        steps = pre.get("pretokenizers") or []
        if len(steps) == 2 and _matches(steps[0], DIGITS) and _matches(steps[1], BYTE_LEVEL):
            return "starcoder"
    return None


def _describe(pre: Any) -> str:
    if isinstance(pre, dict) and pre.get("type") == "Sequence":
        return "Sequence[" + ", ".join(_describe(p) for p in pre.get("pretokenizers") or []) + "]"
    return str(pre.get("type")) if isinstance(pre, dict) else str(pre)


def _merge_text(merge: Any) -> str:
    return merge if isinstance(merge, str) else " ".join(merge)


def _token_id(config: dict[str, Any], tokenizer_config: dict[str, Any], key: str,
              ids: dict[str, int]) -> int | None:
    """A special token's id: config.json's `<key>_token_id`, else tokenizer_config's token."""
    value = config.get(f"{key}_token_id")
    if isinstance(value, list):  # generation may stop on several; GGUF holds one eos
        value = value[0] if value else None
    if isinstance(value, int):
        return value
    text = tokenizer_config.get(f"{key}_token")
    if isinstance(text, dict):
        text = text.get("content")
    return ids.get(text) if isinstance(text, str) else None


def _chat_template(model_dir: Path, tokenizer_config: dict[str, Any]) -> str | None:
    file = model_dir / "chat_template.jinja"
    if file.is_file():
        return file.read_text(encoding="utf-8")
    template = tokenizer_config.get("chat_template")
    return template if isinstance(template, str) else None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: does not read as JSON ({e}); re-save the model") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not a JSON object; re-save the model")
    return data


def read_vocab(model_dir: Path, config: dict[str, Any], vocab_size: int) -> Vocab:
    """The GGUF vocabulary of the tokenizer saved in `model_dir` (tokenizer.json), padded to the
    model's `vocab_size` embedding rows with unused tokens."""
    path = model_dir / "tokenizer.json"
    if not path.is_file():
        raise UserError(f"{model_dir}: no tokenizer.json; export needs the tokenizer saved with "
                        f"the model ({SUPPORTED})")
    tok = _read_json(path)
    model = tok.get("model") or {}
    if model.get("type") != "BPE" or not isinstance(model.get("vocab"), dict):
        raise UserError(f"{path}: a {model.get('type')} tokenizer; GGUF export supports "
                        f"{SUPPORTED}")
    pre = _pre_name(tok.get("pre_tokenizer"))
    odd = [k for k in ("byte_fallback", "continuing_subword_prefix", "end_of_word_suffix",
                       "dropout") if model.get(k)]
    if pre is None or tok.get("normalizer") or odd:
        what = (f"normalizer {tok['normalizer'].get('type')}" if tok.get("normalizer")
                else f"BPE option {odd[0]}" if odd
                else f"pre-tokenizer {_describe(tok.get('pre_tokenizer'))}")
        raise UserError(f"{path}: {what} has no exact llama.cpp equivalent; GGUF export "
                        f"supports {SUPPORTED}")
    by_id: dict[int, tuple[str, TokenType]] = {
        int(i): (t, TokenType.NORMAL) for t, i in model["vocab"].items()}
    specials: dict[str, int] = {}
    for added in tok.get("added_tokens") or []:
        if added.get("lstrip") or added.get("rstrip") or added.get("single_word"):
            raise UserError(f"{path}: added token {added.get('content')!r} strips spaces or "
                            f"matches whole words only, which llama.cpp does not; GGUF export "
                            f"supports {SUPPORTED}")
        kind = TokenType.CONTROL if added.get("special") else TokenType.USER_DEFINED
        by_id[int(added["id"])] = (added["content"], kind)
        if added.get("special"):
            specials[added["content"]] = int(added["id"])
    size = max(vocab_size, max(by_id) + 1)
    if size > vocab_size:
        raise UserError(f"{path}: token id {size - 1} is past the model's {vocab_size} embedding "
                        "rows (config.json vocab_size); the tokenizer is not this model's")
    tokens, types = [], []
    for i in range(size):
        text, kind = by_id.get(i, (f"[PAD{i}]", TokenType.UNUSED))
        tokens.append(text)
        types.append(int(kind))
    merges = [_merge_text(m) for m in model.get("merges") or []]
    if not merges:
        if len(specials) < 1:
            raise UserError(f"{path}: a BPE without merges or special tokens; GGUF export "
                            f"supports {SUPPORTED}")
        first = next(iter(specials))
        merges = [f"{first} {first}"]  # never applies: see the module docstring
    tokenizer_config = (_read_json(model_dir / "tokenizer_config.json")
                        if (model_dir / "tokenizer_config.json").is_file() else {})
    ids = {t: i for i, t in enumerate(tokens)}
    return Vocab(pre=pre, tokens=tokens, types=types, merges=merges,
                 eos_id=_token_id(config, tokenizer_config, "eos", ids),
                 pad_id=_token_id(config, tokenizer_config, "pad", ids),
                 bos_id=_token_id(config, tokenizer_config, "bos", ids),
                 chat_template=_chat_template(model_dir, tokenizer_config), specials=specials)
