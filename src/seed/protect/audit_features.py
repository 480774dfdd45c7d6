"""What one served request contributes to a distillation audit: the usage log's fields, no text.

`request_features(req)` turns a validated chat, completion or responses request into plain JSON
values for its usage-log line: the sampling it asked for (temperature, top_p, max_tokens, n,
whether a seed was set, logprobs and top_logprobs, the response_format type, the client's `user`
field), and what its prompt looks like without saying what it is:

- `minhash`: a MinHash signature (`NUM_PERM` 32-bit ints) of the last user turn's shingles (word
  3-grams, character 5-grams for short texts, as `seed.generate.filters` shingles), by the scheme
  of datasketch's classic `MinHash` (a 32-bit SHA-1 hash of each shingle, affine permutations
  modulo the Mersenne prime 2^61 - 1), with fixed parameters of its own. Written here in numpy
  because importing datasketch pulls in scipy (~1.5 s) at every server start. The share of equal
  positions of two signatures estimates the Jaccard similarity of the two turns.
- `template`: the last user turn with numbers, quoted strings, code, URLs, e-mail addresses and
  capitalised names masked, case and spaces folded, as a SHA-256 prefix (`HASH_HEX` hex): two
  prompts that differ only in what an app fills into its template share it.
- `system`: the system (or developer) prompt's SHA-256 prefix, or None.
- `flags`: `cot` (the prompt asks for step-by-step reasoning) and `identity` (it asks the model
  who or what it is), from the patterns below, English and Chinese and a few others.

The hashes are plain SHA-256 prefixes, not keyed: a template, a system prompt or a turn carries no
secret of the server's, and the same text must hash alike across restarts for the audit to join
keys. So the log cannot be read back into prompts, but whoever holds it can confirm a prompt they
guess: keep it as private as an access log. Only the first `MAX_CHARS` characters of a turn are
looked at. This module ranks nothing (that is `audit.py`) and stores nothing.
"""

from __future__ import annotations

import hashlib
import re
import struct
from typing import Any

import numpy as np

from seed.serve.responses import ResponsesRequest
from seed.serve.schemas import ChatCompletionRequest, CompletionRequest

NUM_PERM = 32
HASH_HEX = 16
MAX_CHARS = 8192

_PRIME = np.uint64((1 << 61) - 1)
_MASK32 = np.uint64((1 << 32) - 1)
_rng = np.random.RandomState(1)
# a and b below 2^32, so a * h + b (h a 32-bit hash) never wraps a uint64
_A = _rng.randint(1, 1 << 32, size=NUM_PERM, dtype=np.uint64)
_B = _rng.randint(0, 1 << 32, size=NUM_PERM, dtype=np.uint64)

_MASKS = [
    (re.compile(r"```.*?```", re.S), " C "),
    (re.compile(r"https?://\S+|\b[\w.+-]+@[\w-]+\.[\w.]+\b"), " U "),
    # a double-quoted filling may hold lines; a single-quoted one may not (apostrophes)
    (re.compile(r"\"[^\"]*\"|“[^”]*”|«[^»]*»|「[^」]*」|(?<!\w)'[^'\n]*'(?!\w)"), ' "Q" '),
    (re.compile(r"\d+(?:[.,:/-]\d+)*"), " 0 "),
    # a capitalised word that does not open a sentence or a line: a name, a product, a place
    (re.compile(r"(?<=[^\s.!?:\n])([ \t]+)[A-Z][\w'-]*"), r"\1N"),
]

COT = re.compile(
    r"step[- ]by[- ]step|chain[- ]of[- ]thought|show (?:your|all|the) (?:work|reasoning|steps)|"
    r"explain your (?:reasoning|thinking)|think (?:carefully |hard )?(?:before|aloud|out loud)|"
    r"reason (?:carefully )?before (?:you )?answer|let'?s think|<think>|"
    r"逐步|一步一步|一步步|思考过程|推理过程|schritt für schritt|étape par étape|paso a paso",
    re.IGNORECASE)
IDENTITY = re.compile(
    r"\bwho are you\s*(?:[?？.!,]|$)|\bwho (?:made|created|built|trained|developed) you\b|"
    r"\bwhat (?:model|llm|ai|language model|version) are you\b|"
    r"\bwhich (?:model|llm|company|ai)\b[^.?!]{0,40}\byou\b|"
    r"\bare you (?:chatgpt|gpt|claude|gemini|bard|llama|qwen|deepseek|mistral)|"
    r"\byour (?:model name|creator|developer|underlying model)\b|"
    r"你是谁|你叫什么|你是什么模型|哪个模型|谁(?:开发|训练|创造|制造)了你|"
    r"\bwer bist du\b|\bqui es-tu\b|\bquién eres\b|\bquem é você\b",
    re.IGNORECASE)


def fold(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


def shingles(text: str) -> set[bytes]:
    """Word 3-grams of the folded text, character 5-grams when it has fewer than 6 words."""
    words = fold(text).split()
    if len(words) >= 6:
        return {" ".join(words[i:i + 3]).encode() for i in range(len(words) - 2)}
    s = " ".join(words)
    return {s[i:i + 5].encode() for i in range(max(1, len(s) - 4))} if s else set()


def minhash(text: str) -> list[int] | None:
    """The text's `NUM_PERM`-int MinHash signature, or None for an empty text."""
    grams = shingles(text[:MAX_CHARS])
    if not grams:
        return None
    h = np.array([struct.unpack("<I", hashlib.sha1(g).digest()[:4])[0] for g in grams],
                 dtype=np.uint64).reshape(-1, 1)
    values = np.bitwise_and((h * _A + _B) % _PRIME, _MASK32)
    return [int(v) for v in values.min(axis=0)]


def similarity(a: list[int], b: list[int]) -> float:
    """Estimated Jaccard similarity of two texts from their signatures."""
    return sum(x == y for x, y in zip(a, b, strict=True)) / len(a)


def short_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_HEX]


def masked(text: str) -> str:
    """The text as a template: what an app fills in (numbers, quotes, names...) masked, folded."""
    text = text[:MAX_CHARS]
    for pattern, repl in _MASKS:
        text = pattern.sub(repl, text)
    return fold(text)


def prompt_features(last_user: str | None, system: str | None) -> dict[str, Any]:
    """The prompt's part of the usage-log fields (see the module docstring)."""
    text = last_user or ""
    return {"minhash": minhash(text), "template": short_hash(masked(text)) if text else None,
            "system": short_hash(fold(system)) if system else None,
            "cot": bool(COT.search(text[:MAX_CHARS])) or bool(system and COT.search(system)),
            "identity": bool(IDENTITY.search(text[:MAX_CHARS]))}


def request_features(req: Any) -> dict[str, Any] | None:
    """The usage-log fields of a chat, completion or responses request; None for other routes."""
    if isinstance(req, ChatCompletionRequest):
        users = [m.text() for m in req.messages if m.role == "user"]
        system = "\n".join(m.text() for m in req.messages if m.role in ("system", "developer"))
        return {**sampling(req.temperature, req.top_p, req.max_completion_tokens or req.max_tokens,
                           req.n, req.seed is not None, req.logprobs, req.top_logprobs,
                           req.response_format.type if req.response_format else None, req.user),
                "turns": len(users), **prompt_features(users[-1] if users else None, system)}
    if isinstance(req, CompletionRequest):
        first = req.prompt if isinstance(req.prompt, str) else req.prompt[0]
        return {**sampling(req.temperature, req.top_p, req.max_tokens, req.n,
                           req.seed is not None, req.logprobs is not None, req.logprobs, None,
                           req.user),
                "turns": 1, **prompt_features(first if isinstance(first, str) else None, None)}
    if isinstance(req, ResponsesRequest):
        fmt = req.text.format.type if req.text and req.text.format else None
        users = ([req.input] if isinstance(req.input, str) else
                 [_item_text(item.content) for item in req.input
                  if item.role == "user" and item.content is not None])
        return {**sampling(req.temperature, req.top_p, req.max_output_tokens, 1, False, False,
                           None, fmt, req.user),
                "turns": len(users),
                **prompt_features(users[-1] if users else None, req.instructions)}
    return None


def sampling(temperature: float | None, top_p: float | None, max_tokens: int | None, n: int,
             seed: bool, logprobs: bool, top_logprobs: int | None, response_format: str | None,
             user: str | None) -> dict[str, Any]:
    """The sampling part of the usage-log fields: as the request set them (None: not set)."""
    return {"temperature": temperature, "top_p": top_p, "max_tokens": max_tokens, "n": n,
            "seed": seed, "logprobs": logprobs, "top_logprobs": top_logprobs,
            "response_format": response_format, "user": user}


def _item_text(content: Any) -> str:
    return content if isinstance(content, str) else "".join(p.text or "" for p in content)
