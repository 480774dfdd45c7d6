"""`seed watermark detect`: how likely texts are to carry a key's watermark, as a p-value.

Texts (plain text files, Seed records' assistant turns, OpenAI response bodies) are tokenized with
the served model's tokenizer; every token after a whole window of `context` tokens gives one
(window, token) pair, and each distinct pair is scored once across all inputs: a sentence repeated
100 times is one sentence's evidence, not 100 (repeats are not independent draws, and would make
a null text look watermarked). Under the null hypothesis (text written without the key) each
distinct pair is green with probability gamma, independently, so the green count is
Binomial(n, gamma): the p-value is its exact upper tail (`binomial_tail`, a log-space sum, no
scipy), reported with z, the green rate and n. Several keys (key epochs: one key per period) are
each scored and the smallest p-value is Bonferroni-corrected (times the number of keys).

The first `context` tokens of each text are never scored: the server's window for them held prompt
tokens the detector does not see. A small p-value is evidence the text came from the watermarked
server (or was copied from it); a large one proves nothing: paraphrase, low-entropy answers and
short texts carry little signal. This module never prints or returns a key, only its id.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from seed.errors import UserError
from seed.protect.watermark import GreenList, WatermarkKey

STOP_LOG = 50.0  # a tail sum stops once a term is e^-50 of the sum so far (terms only fall there)


def binomial_tail(k: int, n: int, p: float) -> float:
    """P(X >= k) for X ~ Binomial(n, p), exact up to float rounding: the terms are summed in log
    space from k away from the mode (the upper tail itself when k is above the mode, else one
    minus the lower tail), stopping once they no longer count."""
    if k <= 0:
        return 1.0
    if k > n:
        return 0.0
    if p <= 0.0 or p >= 1.0:
        return 1.0 if p >= 1.0 else 0.0
    mode = math.floor((n + 1) * p)
    if k > mode:
        return min(1.0, math.exp(_log_sum(n, p, range(k, n + 1))))
    return max(0.0, 1.0 - math.exp(_log_sum(n, p, range(k - 1, -1, -1))))


def _log_sum(n: int, p: float, terms: Iterable[int]) -> float:
    """log of the sum of the binomial terms at `terms` (which move away from the mode)."""
    log_p, log_q, log_n = math.log(p), math.log1p(-p), math.lgamma(n + 1)
    total = -math.inf
    for i in terms:
        t = log_n - math.lgamma(i + 1) - math.lgamma(n - i + 1) + i * log_p + (n - i) * log_q
        if t < total - STOP_LOG:
            break
        hi, lo = max(total, t), min(total, t)
        total = hi + math.log1p(math.exp(lo - hi)) if lo > -math.inf else hi
    return total


def z_score(green: int, n: int, gamma: float) -> float:
    """How many standard deviations the green count is above gamma * n (0 for no tokens)."""
    if n == 0:
        return 0.0
    return (green - gamma * n) / math.sqrt(n * gamma * (1 - gamma))


@dataclass(frozen=True)
class KeyScore:
    """One key's result over the distinct pairs."""

    key_id: str
    tokens_scored: int
    green: int
    green_rate: float
    z: float
    p_value: float


@dataclass(frozen=True)
class Detection:
    """The result over all keys: `p_value` is the best key's, Bonferroni-corrected."""

    texts: int
    tokens: int  # tokens of the texts, repeats included
    tokens_scored: int  # distinct (window, token) pairs
    gamma: float
    context: int
    key_id: str  # the key with the smallest p-value
    p_value: float
    keys: list[KeyScore]

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def distinct_pairs(token_lists: Iterable[list[int]], context: int) -> list[tuple[int, ...]]:
    """Each distinct (window..., token) of the texts once, in order of first appearance."""
    seen: dict[tuple[int, ...], None] = {}
    for ids in token_lists:
        for end in range(context, len(ids)):
            seen.setdefault(tuple(ids[end - context:end + 1]), None)
    return list(seen)


def score_key(key: WatermarkKey, pairs: list[tuple[int, ...]], gamma: float,
              context: int) -> KeyScore:
    """How many of the distinct pairs are green under `key`, and how unlikely that is by chance."""
    n = len(pairs)
    green = 0
    if n:
        table = torch.tensor(pairs, dtype=torch.int64)
        green = int(GreenList(key, gamma, context).pairs(table[:, :context],
                                                         table[:, context]).sum())
    return KeyScore(key.key_id, n, green, green / n if n else 0.0, z_score(green, n, gamma),
                    binomial_tail(green, n, gamma))


def detect(token_lists: list[list[int]], keys: list[bytes], *, gamma: float,
           context: int) -> Detection:
    """Score token lists under each key (at least one); the smallest p-value times the number of
    keys is the result."""
    if not keys:
        raise ValueError("detect needs at least one key")
    pairs = distinct_pairs(token_lists, context)
    scores = [score_key(WatermarkKey.from_bytes(k), pairs, gamma, context) for k in keys]
    best = min(scores, key=lambda s: s.p_value)
    return Detection(texts=len(token_lists), tokens=sum(len(t) for t in token_lists),
                     tokens_scored=len(pairs), gamma=gamma, context=context, key_id=best.key_id,
                     p_value=min(1.0, best.p_value * len(scores)), keys=scores)


# -- inputs ---------------------------------------------------------------------------------------


def read_texts(path: Path) -> list[str]:
    """The texts in one input file: the assistant turns of Seed records (`.jsonl`, one record a
    line; OpenAI response bodies too), the replies in an OpenAI response body (`.json`: a chat
    completion, completion or Responses object, or a list of them), else the whole file as one
    plain text. A file that cannot be read that way is a UserError naming it."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot be read ({e.strerror or e}); check the path") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; give text files, Seed records (.jsonl) or "
                        "OpenAI response bodies (.json)") from None
    if path.suffix == ".jsonl":
        texts = []
        for lineno, line in enumerate(text.splitlines(), start=1):
            if line.strip():
                texts += _replies(_json(line, f"{path}:{lineno}"), f"{path}:{lineno}")
        return texts
    if path.suffix == ".json":
        body = _json(text, str(path))
        return [t for item in (body if isinstance(body, list) else [body])
                for t in _replies(item, str(path))]
    return [text]


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"{where}: not valid JSON ({e.msg}); fix it, or give the text in a file "
                        "that does not end in .json or .jsonl") from None


def _replies(item: Any, where: str) -> list[str]:
    """The model-written texts of one JSON object: a Seed record's assistant turns, a chat
    completion's messages, a completion's texts, a Responses object's output text."""
    if isinstance(item, dict) and isinstance(item.get("messages"), list):
        return [m["content"] for m in item["messages"] if isinstance(m, dict)
                and m.get("role") == "assistant" and isinstance(m.get("content"), str)]
    if isinstance(item, dict) and isinstance(item.get("choices"), list):
        texts = []
        for c in item["choices"]:
            message = c.get("message") if isinstance(c, dict) else None
            content = message.get("content") if isinstance(message, dict) else None
            if content is None and isinstance(c, dict):
                content = c.get("text")
            if isinstance(content, str):
                texts.append(content)
        return texts
    if isinstance(item, dict) and isinstance(item.get("output"), list):
        return [part["text"] for out in item["output"] if isinstance(out, dict)
                for part in out.get("content") or [] if isinstance(part, dict)
                and part.get("type") == "output_text" and isinstance(part.get("text"), str)]
    raise UserError(f"{where}: neither a Seed record (messages) nor an OpenAI response body "
                    "(choices or output); give records, response bodies or plain text")


# -- the command ----------------------------------------------------------------------------------


def run_detect(files: list[Path], key_files: list[Path], model: Path, *, gamma: float,
               context: int, threshold: float, as_json: bool) -> bool:
    """`seed watermark detect`: print the result (JSON or lines); True when the p-value is below
    `threshold`. Bad input (a file, a key, the model's tokenizer, gamma, context) is a UserError."""
    from seed.endpoints.local import load_tokenizer
    from seed.protect.watermark import read_key

    if not 0.0 < gamma < 1.0:
        raise UserError(f"--gamma {gamma}: give the green share the server used, between 0 and 1")
    if context < 1:
        raise UserError(f"--context {context}: give the server's window width, 1 or more tokens")
    keys = [read_key(k, "--key-file") for k in key_files]
    texts = [t for f in files for t in read_texts(f)]
    tokenizer = load_tokenizer(model)
    token_lists = [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    result = detect(token_lists, keys, gamma=gamma, context=context)
    detected = result.p_value < threshold
    if as_json:
        print(json.dumps({**result.as_json(), "threshold": threshold, "detected": detected}))
    else:
        _print_lines(result, threshold, detected)
    return detected


def _print_lines(result: Detection, threshold: float, detected: bool) -> None:
    for s in result.keys:
        print(f"key {s.key_id}: {s.green} of {s.tokens_scored} tokens green "
              f"(rate {s.green_rate:.3f}, gamma {result.gamma}), z {s.z:.2f}, p {s.p_value:.3g}")
    verdict = "watermark detected" if detected else "no watermark detected"
    corrected = f", Bonferroni over {len(result.keys)} keys" if len(result.keys) > 1 else ""
    print(f"{verdict}: p {result.p_value:.3g}{corrected} (threshold {threshold:g}); "
          f"{result.tokens_scored} distinct tokens scored of {result.tokens} in {result.texts} "
          "texts")
