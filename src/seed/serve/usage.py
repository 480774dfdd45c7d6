"""One request's accounting: metrics when it ends, and a line in the usage log if there is one.

The usage log is append-only JSONL (time, key label, route, model, status, tokens, latency); a key
appears by its label ("key-2"), never its value.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from seed.serve.metrics import ServerMetrics


class UsageLog:
    """Appends one JSON line per finished request."""

    def __init__(self, path: Path):
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()

    def append(self, entry: dict) -> None:
        line = json.dumps(entry, separators=(",", ":")) + "\n"
        with self._lock, self.path.open("a", encoding="utf-8") as f:
            f.write(line)


@dataclass
class RequestRecord:
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

    def first_token(self) -> None:
        if self.ttft is None:
            self.ttft = time.monotonic() - self.start
            self.metrics.ttft.observe(self.ttft)

    def finish(self, status: int) -> None:
        """Count the request once, whichever path ends it."""
        if self.done:
            return
        self.done = True
        latency = time.monotonic() - self.start
        m = self.metrics
        m.requests.inc(route=self.route, status=str(status))
        m.latency.observe(latency)
        if self.prompt_tokens:
            m.prompt_tokens.inc(self.prompt_tokens)
        if self.completion_tokens:
            m.generation_tokens.inc(self.completion_tokens)
        if self.usage_log is not None:
            self.usage_log.append({
                "time": round(time.time(), 3), "key": self.key, "route": self.route,
                "model": self.model, "status": status, "prompt_tokens": self.prompt_tokens,
                "completion_tokens": self.completion_tokens, "latency_s": round(latency, 4),
                "ttft_s": None if self.ttft is None else round(self.ttft, 4)})
