"""Filters on instructions (before paying for answers) and on answers (before they become records).

- `ExactDuplicates`: the same text after case and whitespace folding.
- `NearDuplicates`: MinHash LSH (`datasketch`) over word 3-grams (character 5-grams for short
  texts); `add()` says whether a text is new and remembers it.
- `EmbeddingDuplicates`: cosine similarity of mean-pooled embeddings from a local
  sentence-transformers model directory (loaded with `transformers`, offline).
- `is_refusal`, `length_ok`: heuristics (refusals, "as an AI language model", too short or long).
- `PromptFilter`: the configured set, in that order, as one `reason(text) -> str | None`.
- `AnswerFilter`: the answer filters (length, identity claims, refusals) over a prompt's records:
  drops what they reject, counts why, and with `identity = "flag"` keeps an answer that claims
  another model's identity with the vendors in `meta["identity_claims"]` (seed.protect.identity).

Each filter holds state in memory (a hash per exact text, a 64-number signature per near-duplicate
text), so very large jobs that turn near-duplicate removal on grow by ~1 KB per prompt.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

from seed.errors import UserError
from seed.protect.identity import identity_claims
from seed.quiet import quiet_progress_bars
from seed.records import Record

_REFUSAL = re.compile(
    r"\bas an ai(?: language)? model\b|\bi(?:'m| am) (?:sorry|unable|not able)\b|"
    r"\bi (?:cannot|can't|can not|won't) (?:help|assist|provide|comply|do that|fulfil)|"
    r"\bi apologi[sz]e\b|\bas a large language model\b|\bi don't have (?:personal|the ability)",
    re.IGNORECASE,
)


def is_refusal(text: str) -> bool:
    """True for refusals and self-descriptions that a student should not learn to imitate."""
    return bool(_REFUSAL.search(text[:600]))


def length_ok(text: str, min_chars: int = 1, max_chars: int | None = None) -> bool:
    n = len(text.strip())
    return n >= min_chars and (max_chars is None or n <= max_chars)


def _fold(text: str) -> str:
    return re.sub(r"\s+", " ", text.strip().lower())


class ExactDuplicates:
    def __init__(self) -> None:
        self._seen: set[bytes] = set()

    def add(self, text: str) -> bool:
        """True if the text is new (and now remembered)."""
        h = hashlib.blake2b(_fold(text).encode(), digest_size=12).digest()
        if h in self._seen:
            return False
        self._seen.add(h)
        return True


def _shingles(text: str) -> set[bytes]:
    words = _fold(text).split()
    if len(words) >= 6:
        return {" ".join(words[i:i + 3]).encode() for i in range(len(words) - 2)}
    s = " ".join(words)
    return {s[i:i + 5].encode() for i in range(max(1, len(s) - 4))}


def similarity(a: str, b: str) -> float:
    """Exact Jaccard similarity of two texts' shingles (what MinHash estimates for many)."""
    sa, sb = _shingles(a), _shingles(b)
    return len(sa & sb) / max(1, len(sa | sb))


class NearDuplicates:
    """MinHash LSH: a text whose estimated Jaccard similarity to a kept one passes `threshold`."""

    def __init__(self, threshold: float = 0.85, num_perm: int = 64) -> None:
        if not 0 < threshold < 1:
            raise UserError(f"near-duplicate threshold {threshold} must be between 0 and 1")
        from datasketch import MinHash, MinHashLSH  # imports scipy (~1.5 s): only when asked for

        self._minhash = MinHash
        self.num_perm = num_perm
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        self._n = 0

    def add(self, text: str) -> bool:
        """True if no kept text is near this one (it is then kept too)."""
        m = self._minhash(num_perm=self.num_perm)
        m.update_batch(list(_shingles(text)))
        if self._lsh.query(m):
            return False
        self._lsh.insert(str(self._n), m)
        self._n += 1
        return True


class EmbeddingDuplicates:
    """Cosine similarity of mean-pooled sentence embeddings from a local model directory."""

    def __init__(self, model_dir: str | Path, threshold: float = 0.95) -> None:
        import torch
        from transformers import AutoModel, AutoTokenizer

        path = Path(model_dir)
        if not (path / "config.json").is_file():
            raise UserError(f"{model_dir}: not a local sentence-transformers model directory "
                            "(no config.json); point generate.filters.embedding_model at one")
        self._torch = torch
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        with quiet_progress_bars():
            self.model = AutoModel.from_pretrained(path).eval()
        self.threshold = threshold
        self._kept: list[Any] = []

    def embed(self, text: str) -> Any:
        torch = self._torch
        batch = self.tokenizer([text], return_tensors="pt", truncation=True, max_length=256)
        with torch.no_grad():
            hidden = self.model(**batch).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        vec = (hidden * mask).sum(1) / mask.sum(1)
        return torch.nn.functional.normalize(vec, dim=-1)[0]

    def add(self, text: str) -> bool:
        """True if no kept text is closer than the threshold (it is then kept too)."""
        torch = self._torch
        v = self.embed(text)
        if self._kept and float((torch.stack(self._kept) @ v).max()) >= self.threshold:
            return False
        self._kept.append(v)
        return True


class PromptFilter:
    """The configured instruction filters; `reason(text)` is why a prompt is dropped, or None."""

    def __init__(self, exact: bool = True, near_threshold: float | None = None,
                 min_chars: int = 1, max_chars: int | None = None,
                 embedding_model: str | None = None, embedding_threshold: float = 0.95) -> None:
        self.min_chars, self.max_chars = min_chars, max_chars
        self.exact = ExactDuplicates() if exact else None
        self.near = NearDuplicates(near_threshold) if near_threshold else None
        self.embedding = (EmbeddingDuplicates(embedding_model, embedding_threshold)
                          if embedding_model else None)
        self.dropped: dict[str, int] = {}

    def _why(self, text: str) -> str | None:
        if not length_ok(text, self.min_chars, self.max_chars):
            return "length"
        if self.exact is not None and not self.exact.add(text):
            return "exact duplicate"
        if self.near is not None and not self.near.add(text):
            return "near duplicate"
        if self.embedding is not None and not self.embedding.add(text):
            return "embedding duplicate"
        return None

    def reason(self, text: str) -> str | None:
        why = self._why(text)
        if why is not None:
            self.dropped[why] = self.dropped.get(why, 0) + 1
        return why


class AnswerFilter:
    """The configured answer filters; `keep(records)` is the records that pass, some flagged.

    Every assistant turn of a record is the teacher's, so each is checked for identity claims
    (a multi-turn record is dropped for a claim in any turn); length and refusals are checked on
    the last answer, as before. A record is dropped for the first reason that applies, in the
    order length, identity, refusal, so `dropped["identity"]` counts every claim not already too
    short, refusals included ("As an AI language model developed by OpenAI, I cannot ...").
    """

    def __init__(self, min_chars: int = 1, drop_refusals: bool = True,
                 identity: str = "drop") -> None:
        self.min_chars, self.drop_refusals, self.identity = min_chars, drop_refusals, identity
        self.dropped: dict[str, int] = {}
        self.flagged = 0

    def _claims(self, record: Record) -> list[str]:
        if self.identity == "off":
            return []
        return list(dict.fromkeys(v for m in record.messages if m.role == "assistant"
                                  for v in identity_claims(m.content)))

    def _why(self, record: Record) -> str | None:
        text = record.messages[-1].content
        if not length_ok(text, self.min_chars):
            return "length"
        claims = self._claims(record)
        if claims and self.identity == "drop":
            return "identity"
        if self.drop_refusals and is_refusal(text):
            return "refusal"
        if claims:
            record.meta["identity_claims"] = claims
            self.flagged += 1
        return None

    def keep(self, records: list[Record]) -> tuple[list[Record], str | None]:
        """The records that pass, and when none does, why (the reasons, for failed.jsonl)."""
        kept, reasons = [], []
        for r in records:
            why = self._why(r)
            if why is None:
                kept.append(r)
            else:
                self.dropped[why] = self.dropped.get(why, 0) + 1
                reasons.append(why)
        if kept or not reasons:
            return kept, None
        return kept, "filtered: " + ", ".join(_REASON_WORDS[w] for w in dict.fromkeys(reasons))


_REASON_WORDS = {"length": "empty answer", "identity": "identity claim", "refusal": "refusal"}
