"""Prometheus metrics for the server, rendered in the text exposition format (version 0.0.4).

Counters, gauges read at scrape time, and histograms with fixed buckets: the few lines needed here
rather than a client library. Two families of names for the same quantities: Seed's own
(`seed_*`), and the names vLLM exports (`vllm:*`, labelled `model_name` and `engine`, with vLLM's
buckets), so a dashboard built for vLLM reads a Seed server unchanged. When the server has keys,
/metrics needs one like /v1 does (see seed.serve.guard); requests refused at the edge (400 Host,
401, 413) are counted like any other. This module knows nothing about HTTP routes or the engine.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# vLLM's own buckets (vllm/v1/metrics/loggers.py), so quantiles read off them compare directly.
VLLM_TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5,
                     5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
VLLM_ITL_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0,
                    7.5, 10.0, 20.0, 40.0, 80.0)
VLLM_E2E_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                    60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0)

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: Labels, *more: tuple[str, str]) -> str:
    pairs = [*labels, *more]
    if not pairs:
        return ""
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs) + "}"


def _num(value: float) -> str:
    """A sample value whole: `:g` would print 1234567 tokens as 1.23457e+06."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _head(name: str, help_: str, kind: str) -> list[str]:
    return [f"# HELP {name} {help_}", f"# TYPE {name} {kind}"]


class Counter:
    """A counter by label set; `labels` are added to every series it renders."""

    def __init__(self, name: str, help_: str, labels: Labels = ()):
        self.name, self.help, self.labels = name, help_, labels
        self.values: dict[Labels, float] = {}
        self._lock = threading.Lock()

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self.values[key] = self.values.get(key, 0.0) + amount

    def render(self) -> list[str]:
        lines = _head(self.name, self.help, "counter")
        for key, v in sorted(self.values.items()):
            lines.append(f"{self.name}{_labels(self.labels, *key)} {_num(v)}")
        if not self.values:
            lines.append(f"{self.name}{_labels(self.labels)} 0")
        return lines


class Gauge:
    def __init__(self, name: str, help_: str, read: Callable[[], float], labels: Labels = ()):
        self.name, self.help, self.read, self.labels = name, help_, read, labels

    def render(self) -> list[str]:
        return [*_head(self.name, self.help, "gauge"),
                f"{self.name}{_labels(self.labels)} {_num(self.read())}"]


class Histogram:
    """Observations in fixed buckets; one histogram may be rendered under several names."""

    def __init__(self, name: str, help_: str, buckets: tuple[float, ...] = LATENCY_BUCKETS,
                 labels: Labels = ()):
        self.name, self.help, self.buckets, self.labels = name, help_, buckets, labels
        self.counts = [0] * (len(buckets) + 1)  # per bucket, not cumulative; the last is +Inf
        self.sum = 0.0
        self.count = 0
        self._lock = threading.Lock()

    def observe(self, value: float, times: int = 1) -> None:
        """`times` observations of `value`."""
        at = bisect.bisect_left(self.buckets, value)  # the first bucket with value <= its bound
        with self._lock:
            self.sum += value * times
            self.count += times
            self.counts[at] += times

    def render(self, name: str | None = None, help_: str | None = None,
               labels: Labels | None = None) -> list[str]:
        name = name or self.name
        labels = self.labels if labels is None else labels
        lines = _head(name, help_ or self.help, "histogram")
        with self._lock:
            counts, total, count = list(self.counts), self.sum, self.count
        below = 0
        for bound, c in zip(self.buckets, counts, strict=False):
            below += c
            lines.append(f"{name}_bucket{_labels(labels, ('le', f'{bound:g}'))} {below}")
        lines += [f"{name}_bucket{_labels(labels, ('le', '+Inf'))} {count}",
                  f"{name}_sum{_labels(labels)} {_num(total)}",
                  f"{name}_count{_labels(labels)} {count}"]
        return lines


class ServerMetrics:
    """Everything `/metrics` shows; queue depth and running sequences are read when scraped.

    Inter-token latency: each sequence's gap between the arrivals of its tokens at this process
    (after its first token, which is the time to first token); tokens that arrive together share
    the gap before them evenly. One histogram holds it, shown as Seed's and as vLLM's two names
    for it (`time_per_output_token` is vLLM's older one).
    """

    def __init__(self, queue_depth: Callable[[], float], running: Callable[[], float],
                 model_name: str = ""):
        vllm: Labels = (("engine", "0"), ("model_name", model_name))
        self.vllm_labels = vllm
        self.requests = Counter("seed_requests_total", "Requests answered, by route and status.")
        self.prompt_tokens = Counter("seed_prompt_tokens_total", "Prompt tokens processed.")
        self.generation_tokens = Counter("seed_generation_tokens_total", "Tokens generated.")
        self.usage_log_errors = Counter("seed_usage_log_errors_total",
                                        "Finished requests the usage log could not record.")
        self.ttft = Histogram("seed_time_to_first_token_seconds",
                              "Time from request to the first generated token.")
        self.itl = Histogram("seed_inter_token_latency_seconds",
                             "Time between a sequence's consecutive generated tokens.",
                             VLLM_ITL_BUCKETS)
        self.latency = Histogram("seed_request_latency_seconds", "Time from request to last byte.")
        self.queue = Gauge("seed_queue_depth", "Sequences waiting for a batch slot.", queue_depth)
        self.running = Gauge("seed_running_sequences", "Sequences in the running batch.", running)
        self.vllm_running = Gauge("vllm:num_requests_running",
                                  "Number of requests in model execution batches.", running, vllm)
        self.vllm_waiting = Gauge("vllm:num_requests_waiting",
                                  "Number of requests waiting to be processed.", queue_depth, vllm)
        self.vllm_prompt_tokens = Counter("vllm:prompt_tokens_total",
                                          "Number of prefill tokens processed.", vllm)
        self.vllm_generation_tokens = Counter("vllm:generation_tokens_total",
                                              "Number of generation tokens processed.", vllm)
        self.vllm_success = Counter("vllm:request_success_total",
                                    "Count of successfully processed requests.", vllm)
        self.vllm_ttft = Histogram("vllm:time_to_first_token_seconds",
                                   "Histogram of time to first token in seconds.",
                                   VLLM_TTFT_BUCKETS, vllm)
        self.vllm_e2e = Histogram("vllm:e2e_request_latency_seconds",
                                  "Histogram of e2e request latency in seconds.",
                                  VLLM_E2E_BUCKETS, vllm)

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)
        self.vllm_ttft.observe(seconds)

    def finished(self, route: str, status: int, latency: float, prompt_tokens: int,
                 completion_tokens: int, finish_reasons: list[str]) -> None:
        """One request answered: `finish_reasons` are its sequences' (stop, length)."""
        self.requests.inc(route=route, status=str(status))
        self.latency.observe(latency)
        if prompt_tokens:
            self.prompt_tokens.inc(prompt_tokens)
            self.vllm_prompt_tokens.inc(prompt_tokens)
        if completion_tokens:
            self.generation_tokens.inc(completion_tokens)
            self.vllm_generation_tokens.inc(completion_tokens)
        if status == 200 and finish_reasons:  # a request that ran in the engine, as vLLM counts
            self.vllm_e2e.observe(latency)
            for reason in finish_reasons:
                self.vllm_success.inc(finished_reason=reason)

    def render(self) -> str:
        lines: list[str] = []
        for m in (self.requests, self.prompt_tokens, self.generation_tokens,
                  self.usage_log_errors, self.ttft, self.itl, self.latency, self.queue,
                  self.running, self.vllm_running, self.vllm_waiting, self.vllm_prompt_tokens,
                  self.vllm_generation_tokens, self.vllm_success, self.vllm_ttft):
            lines += m.render()
        lines += self.itl.render("vllm:inter_token_latency_seconds",
                                 "Histogram of inter-token latency in seconds.", self.vllm_labels)
        lines += self.itl.render("vllm:time_per_output_token_seconds",
                                 "Histogram of time per output token in seconds (deprecated in "
                                 "vLLM: the same as vllm:inter_token_latency_seconds).",
                                 self.vllm_labels)
        lines += self.vllm_e2e.render()
        return "\n".join(lines) + "\n"
