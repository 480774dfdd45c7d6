"""Prometheus metrics for the server, rendered in the text exposition format (version 0.0.4).

Counters, gauges read at scrape time, and histograms with fixed buckets: the few lines needed here
rather than a client library. When the server has keys, /metrics needs one like /v1 does (see
seed.serve.guard); requests refused at the edge (400 Host, 401, 413) are counted like any other.
This module knows nothing about HTTP routes or the engine.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


class Counter:
    def __init__(self, name: str, help_: str):
        self.name, self.help = name, help_
        self.values: dict[tuple[tuple[str, str], ...], float] = {}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self.values[key] = self.values.get(key, 0.0) + amount

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} counter"]
        for key, v in sorted(self.values.items()):
            lines.append(f"{self.name}{_labels(dict(key))} {v:g}")
        if not self.values:
            lines.append(f"{self.name} 0")
        return lines


class Gauge:
    def __init__(self, name: str, help_: str, read: Callable[[], float]):
        self.name, self.help, self.read = name, help_, read

    def render(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} gauge",
                f"{self.name} {self.read():g}"]


class Histogram:
    def __init__(self, name: str, help_: str, buckets: tuple[float, ...] = LATENCY_BUCKETS):
        self.name, self.help, self.buckets = name, help_, buckets
        self.counts = [0] * len(buckets)
        self.sum = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, value: float) -> None:
        with self._lock:
            self.sum += value
            self.count += 1
            for i, b in enumerate(self.buckets):
                if value <= b:
                    self.counts[i] += 1

    def render(self) -> list[str]:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} histogram"]
        for b, c in zip(self.buckets, self.counts, strict=True):
            lines.append(f'{self.name}_bucket{{le="{b:g}"}} {c}')
        lines += [f'{self.name}_bucket{{le="+Inf"}} {self.count}',
                  f"{self.name}_sum {self.sum:g}", f"{self.name}_count {self.count}"]
        return lines


class ServerMetrics:
    """Everything `/metrics` shows; queue depth and running sequences are read when scraped."""

    def __init__(self, queue_depth: Callable[[], float], running: Callable[[], float]):
        self.requests = Counter("seed_requests_total", "Requests answered, by route and status.")
        self.prompt_tokens = Counter("seed_prompt_tokens_total", "Prompt tokens processed.")
        self.generation_tokens = Counter("seed_generation_tokens_total", "Tokens generated.")
        self.usage_log_errors = Counter("seed_usage_log_errors_total",
                                        "Finished requests the usage log could not record.")
        self.ttft = Histogram("seed_time_to_first_token_seconds",
                              "Time from request to the first generated token.")
        self.latency = Histogram("seed_request_latency_seconds", "Time from request to last byte.")
        self.queue = Gauge("seed_queue_depth", "Sequences waiting for a batch slot.", queue_depth)
        self.running = Gauge("seed_running_sequences", "Sequences in the running batch.", running)

    def render(self) -> str:
        lines: list[str] = []
        for m in (self.requests, self.prompt_tokens, self.generation_tokens,
                  self.usage_log_errors, self.ttft, self.latency, self.queue, self.running):
            lines += m.render()
        return "\n".join(lines) + "\n"
