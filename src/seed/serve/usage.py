"""One request's accounting: metrics when it ends, and a line in the usage log if there is one.

The usage log is append-only JSONL (time, key label, route, model, status, tokens, latency, finish
reasons, and for generation routes what `seed audit` reads: the sampling fields and a signature of
the prompt without its text, `seed.protect.audit_features`); a key appears by its label ("key-2"),
never its value, and the strings a client chooses (the model name, `user`) are bounded. The log
is checked writable at start; a write that fails later (disk full, the path replaced) never fails
the request it records: it is counted in `seed_usage_log_errors_total` and warned about at most
once a minute.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seed.errors import UserError
from seed.files import seal_jsonl
from seed.serve.metrics import ServerMetrics

log = logging.getLogger(__name__)

MODEL_CHARS = 256
WARN_EVERY_S = 60.0


class UsageLog:
    """Appends one JSON line per finished request."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._warned_at: float | None = None
        self._failed_since_warning = 0

    @classmethod
    def open(cls, path: Path) -> UsageLog:
        """The log at `path`, its directory made, its last line whole (files.seal_jsonl: a line torn
        by a kill is cut); refused in one line if it cannot be appended."""
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8"):
                pass
            seal_jsonl(path)
        except (FileExistsError, NotADirectoryError):
            raise UserError(f"serve.usage_log (--usage-log) {path}: a directory on its path is a "
                            "file; give a file in a writable directory") from None
        except OSError as e:
            raise UserError(f"serve.usage_log (--usage-log) {path}: cannot append to it "
                            f"({e.strerror or e}); give a file in a writable directory") from None
        return cls(path)

    def append(self, entry: dict) -> bool:
        """Write `entry` as one line; False (and a warning now and then) if the write failed."""
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        with self._lock:
            try:
                with self.path.open("a", encoding="utf-8") as f:
                    f.write(line)
                return True
            except OSError as e:
                self._warn(e)
                return False

    def _warn(self, error: OSError) -> None:
        self._failed_since_warning += 1
        now = time.monotonic()
        if self._warned_at is not None and now - self._warned_at < WARN_EVERY_S:
            return
        log.warning("usage log %s: %d request(s) not written (%s); requests are still answered",
                    self.path, self._failed_since_warning, error.strerror or error)
        self._warned_at, self._failed_since_warning = now, 0


@dataclass
class RequestRecord:
    """One request's accounting, from its arrival to `finish`; the tokens it generated are told
    to it as they arrive (`tokens`), which feeds the time-to-first-token and inter-token latency
    histograms."""

    route: str
    metrics: ServerMetrics
    usage_log: UsageLog | None = None
    key: str | None = None
    model: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    start: float = field(default_factory=time.monotonic)
    ttft: float | None = None
    done: bool = False
    finish_reasons: list[str] = field(default_factory=list)  # each finished sequence's
    # What the request asked for, for `seed audit` (protect.audit_features.request_features):
    # sampling fields, prompt signature and hashes, flags; never its text.
    request: dict[str, Any] | None = None
    watermark_key_id: str | None = None  # the id of the key its replies were watermarked with
    _last_tokens: dict[tuple[int, int], float] = field(default_factory=dict)  # per sequence

    def first_token(self, now: float | None = None) -> None:
        if self.ttft is None:
            self.ttft = (time.monotonic() if now is None else now) - self.start
            self.metrics.first_token(self.ttft)

    def tokens(self, sequence: tuple[int, int], count: int, finish_reason: str | None) -> None:
        """`count` tokens of one sequence (its run's tag and its index) arrived now, and its
        finish reason once it has one. Tokens that arrive together share the gap before them;
        those with the sequence's first are 0 apart."""
        if count:
            now = time.monotonic()
            last = self._last_tokens.get(sequence)
            self._last_tokens[sequence] = now
            if last is None:
                self.first_token(now)
                if count > 1:
                    self.metrics.itl.observe(0.0, count - 1)
            else:
                self.metrics.itl.observe((now - last) / count, count)
        if finish_reason in ("stop", "length"):
            self.finish_reasons.append(finish_reason)

    def finish(self, status: int) -> None:
        """Count the request once, whichever path ends it."""
        if self.done:
            return
        self.done = True
        latency = time.monotonic() - self.start
        m = self.metrics
        m.finished(self.route, status, latency, self.prompt_tokens, self.completion_tokens,
                   self.finish_reasons)
        if self.usage_log is not None and not self.usage_log.append({
                "time": round(time.time(), 3), "key": self.key, "route": self.route,
                "model": None if self.model is None else self.model[:MODEL_CHARS],
                "status": status, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "latency_s": round(latency, 4),
                "ttft_s": None if self.ttft is None else round(self.ttft, 4),
                "finish_reasons": self.finish_reasons, **(self.request or {}),
                **({"watermark_key_id": self.watermark_key_id} if self.watermark_key_id else {})}):
            m.usage_log_errors.inc()
