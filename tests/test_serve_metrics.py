"""`/metrics` as Prometheus and a dashboard built for vLLM read it, after real requests.

One real `seed serve` of a tiny model. The end-of-sequence token is biased away so every request
generates exactly `max_tokens`, which makes each count known: tokens, requests, finish reasons,
and the inter-token latency observations (one per generated token after a sequence's first). The
exposition text is checked line by line against the format's grammar (prometheus_client is not
installed to parse it).
"""

from __future__ import annotations

import re

import httpx
import openai
import pytest
from transformers import AutoTokenizer

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\["\\n])*"'
SAMPLE = re.compile(rf"^({NAME})(?:\{{({LABEL}(?:,{LABEL})*)\}})? "
                    r"(-?[0-9]+(?:\.[0-9]+)?(?:e[+-]?[0-9]+)?|\+Inf|-Inf|NaN)$")
HELP = re.compile(rf"^# HELP ({NAME}) \S.*$")
TYPE = re.compile(rf"^# TYPE ({NAME}) (counter|gauge|histogram)$")
VLLM = {"model_name": "tiny", "engine": "0"}
ASK = [{"role": "user", "content": "Hello! How can I help you today?"}]


@pytest.fixture(scope="module")
def model_dir(tiny_chat_model):
    return tiny_chat_model


@pytest.fixture(scope="module")
def url(tiny_server):
    return tiny_server


@pytest.fixture(scope="module")
def no_eos(model_dir):
    """A logit_bias that keeps the model from ending early."""
    return {str(AutoTokenizer.from_pretrained(str(model_dir)).eos_token_id): -100}


def scrape(url: str) -> dict[tuple[str, frozenset], float]:
    """Every sample of /metrics by (name, labels), after checking each line's grammar, that each
    sample's family was declared once just before it, and that histogram buckets add up."""
    r = httpx.get(url + "/metrics")
    assert r.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples: dict[tuple[str, frozenset], float] = {}
    types: dict[str, str] = {}
    family = None
    for line in r.text.splitlines():
        if m := HELP.match(line):
            assert m.group(1) not in types, f"{m.group(1)} declared twice"
            family = m.group(1)
            continue
        if m := TYPE.match(line):
            assert m.group(1) == family
            types[family] = m.group(2)
            continue
        m = SAMPLE.match(line)
        assert m, f"not a valid sample line: {line!r}"
        name, labels, value = m.groups()
        base = re.sub(r"_(bucket|sum|count)$", "", name) if types.get(family) == "histogram" \
            else name
        assert base == family, f"{name} outside its family {family}"
        pairs = frozenset(tuple(p.split("=", 1)) for p in re.findall(LABEL, labels or ""))
        samples[(name, pairs)] = float(value)
    for family_name, kind in types.items():
        if kind == "histogram":
            _check_buckets(samples, family_name)
    return samples


def _check_buckets(samples: dict[tuple[str, frozenset], float], name: str) -> None:
    buckets = [(dict(labels), v) for (n, labels), v in samples.items() if n == name + "_bucket"]
    bounds = [float(labels.pop("le").strip('"')) for labels, _ in buckets]
    counts = [v for _, v in buckets]
    assert bounds == sorted(bounds) and bounds[-1] == float("inf"), name
    assert counts == sorted(counts), f"{name}: buckets are not cumulative"
    [rest] = {frozenset(labels.items()) for labels, _ in buckets}
    assert samples[(name + "_count", rest)] == counts[-1]


def value(samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset((k, f'"{v}"') for k, v in labels.items())), 0.0)


def test_counts_and_histograms_after_a_stream_a_batch_and_a_refusal(url, no_eos):
    client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
    before = scrape(url)  # the server is shared: what this test adds is the change from here
    assert value(before, "vllm:num_requests_running", **VLLM) == 0
    assert value(before, "vllm:num_requests_waiting", **VLLM) == 0

    def added(samples, name: str, **labels: str) -> float:
        return value(samples, name, **labels) - value(before, name, **labels)

    stream = list(client.chat.completions.create(
        model="tiny", messages=ASK, max_tokens=12, temperature=0, logit_bias=no_eos, stream=True,
        stream_options={"include_usage": True}))
    usage = stream[-1].usage
    assert usage.completion_tokens == 12
    one = scrape(url)
    for itl in ("seed_inter_token_latency_seconds_count", "vllm:inter_token_latency_seconds_count",
                "vllm:time_per_output_token_seconds_count"):
        labels = {} if itl.startswith("seed") else VLLM
        assert added(one, itl, **labels) == 11, itl
    assert added(one, "seed_time_to_first_token_seconds_count") == 1
    assert added(one, "vllm:time_to_first_token_seconds_count", **VLLM) == 1
    assert added(one, "vllm:e2e_request_latency_seconds_count", **VLLM) == 1
    assert added(one, "vllm:generation_tokens_total", **VLLM) == 12
    assert added(one, "vllm:prompt_tokens_total", **VLLM) == usage.prompt_tokens
    assert added(one, "vllm:request_success_total", **VLLM, finished_reason="length") == 1
    assert added(one, "seed_requests_total", route="/v1/chat/completions", status="200") == 1
    # the gaps may all be 0: tokens that reach the API process in one read share one instant
    assert 0 <= added(one, "vllm:inter_token_latency_seconds_sum", **VLLM) == \
        added(one, "seed_inter_token_latency_seconds_sum")

    batch = client.completions.create(model="tiny", prompt=["Hello! How", "The quick"], n=2,
                                      max_tokens=5, temperature=1.0, seed=3, logit_bias=no_eos)
    assert batch.usage.completion_tokens == 20  # 2 prompts x 2 choices x 5 tokens
    with pytest.raises(openai.BadRequestError):
        client.completions.create(model="tiny", prompt="x", max_tokens=5,
                                  extra_body={"frobnicate": 1})
    two = scrape(url)
    assert added(two, "vllm:inter_token_latency_seconds_count", **VLLM) == 11 + 4 * 4
    assert added(two, "vllm:time_to_first_token_seconds_count", **VLLM) == 2  # one per request
    assert added(two, "vllm:e2e_request_latency_seconds_count", **VLLM) == 2  # the 400 never ran
    assert added(two, "vllm:generation_tokens_total", **VLLM) == 32
    assert added(two, "vllm:prompt_tokens_total", **VLLM) == \
        usage.prompt_tokens + batch.usage.prompt_tokens
    assert added(two, "vllm:request_success_total", **VLLM, finished_reason="length") == 5
    assert added(two, "seed_requests_total", route="/v1/completions", status="400") == 1
    assert added(two, "seed_generation_tokens_total") == 32
