"""The engine against a local server that injects faults: each retried or reported as specified."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.servers import FaultServer, fault_server
from seed.endpoints.openai import OpenAIEndpoint, infer_route
from seed.errors import UserError
from seed.generate.budget import Budget, price_for
from seed.generate.cache import RequestCache
from seed.generate.engine import Limits, Request, Result, TokenBucket, parse_reset, run_sync

FAST = Limits(concurrency=8, max_attempts=4, timeout=1.0, backoff_base=0.01, backoff_max=0.05)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultServer]:
    with fault_server(tmp_path_factory.mktemp("fault")) as s:
        yield s


def answer(server: FaultServer, prompts: list[str], limits: Limits = FAST,
           params: dict | None = None, **kw: object) -> dict[str, Result]:
    got: dict[str, Result] = {}
    reqs = [Request(p, [{"role": "user", "content": p}], dict(params or {})) for p in prompts]
    run_sync(reqs, OpenAIEndpoint(server.base_url, "fault-model"), limits,
             on_result=lambda r: got.__setitem__(r.request.key, r), **kw)
    return got


def requests_for(server: FaultServer, text: str) -> list[dict]:
    return [r for r in server.requests() if r["user"] == text]


@pytest.mark.parametrize("fault", ["429:0.05", "500", "timeout:3", "drop", "truncated", "slow:3"])
def test_each_transient_fault_is_retried_and_the_answer_is_correct(server: FaultServer,
                                                                   fault: str) -> None:
    text = f"transient {fault}"
    server.faults([fault, fault], match=text)
    got = answer(server, [text, f"other {fault}"])
    assert got[text].ok and got[text].completions[0].text == f"echo: {text}"
    assert got[text].attempts == 3
    assert len(requests_for(server, text)) == 3
    assert got[f"other {fault}"].completions[0].text == f"echo: other {fault}"


def test_retry_after_is_honoured(server: FaultServer) -> None:
    server.faults(["429:0.6"], match="patient")
    t0 = time.monotonic()
    got = answer(server, ["patient"])
    assert got["patient"].ok
    stamps = [r["t"] for r in requests_for(server, "patient")]
    assert len(stamps) == 2 and stamps[1] - stamps[0] >= 0.6
    assert time.monotonic() - t0 >= 0.6


def test_a_fault_that_never_clears_is_reported_after_max_attempts(server: FaultServer) -> None:
    server.faults(["500"] * 10, match="hopeless")
    got = answer(server, ["hopeless", "fine"])
    assert not got["hopeless"].ok
    assert "HTTP 500" in got["hopeless"].error and "after 4 attempts" in got["hopeless"].error
    assert len(requests_for(server, "hopeless")) == 4
    assert got["fine"].ok


@pytest.mark.parametrize("model,status", [("no-such-model", "404"), ("fault-model", "401")])
def test_client_errors_stop_at_once_with_the_servers_message(tmp_path: Path, model: str,
                                                             status: str) -> None:
    with fault_server(tmp_path, key="sk-right") as s:
        reqs = [Request(str(i), [{"role": "user", "content": f"q{i}"}]) for i in range(50)]
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SEED_TEST_KEY", "sk-right" if status == "404" else "sk-wrong")
            ep = OpenAIEndpoint(s.base_url, model, api_key_env="SEED_TEST_KEY")
            with pytest.raises(UserError, match=f"HTTP {status}") as err:
                run_sync(reqs, ep, Limits(concurrency=4, backoff_base=0.01))
        assert ("does not exist" if status == "404" else "Incorrect API key") in str(err.value)
        assert len(s.requests()) <= 4  # only the requests already in flight, none retried


def test_finish_reason_length_is_retried_only_when_asked(server: FaultServer) -> None:
    server.faults(["length"], match="long one")
    kept = answer(server, ["long one"])
    assert kept["long one"].completions[0].finish_reason == "length"
    server.faults(["length"], match="long two")
    retried = answer(server, ["long two"], Limits(**{**FAST.__dict__, "retry_on_length": True}))
    assert retried["long two"].completions[0].finish_reason == "stop"
    assert retried["long two"].attempts == 2


def test_an_answer_failing_the_json_schema_is_retried(server: FaultServer) -> None:
    schema = {"type": "object", "properties": {"answer": {"type": "string"}},
              "required": ["answer"]}
    server.faults(["badjson"], match="structured")
    got = answer(server, ["structured"], params={"response_schema": schema})
    assert got["structured"].attempts == 2
    assert got["structured"].completions[0].text == '{"answer": "echo: structured"}'


def test_n_samples_and_logprobs_come_back(server: FaultServer) -> None:
    got = answer(server, ["sampled"], params={"n": 3, "logprobs": True, "top_logprobs": 2})
    comps = got["sampled"].completions
    assert [c.text for c in comps] == [f"echo[{i}]: sampled" for i in range(3)]
    assert comps[1].logprobs[0] == {"token": "echo[1]:", "logprob": -0.5, "top_logprobs": [
        {"token": "echo[1]:", "logprob": -0.5}, {"token": "alt1", "logprob": -1.5}]}
    assert comps[0].model == "fault-model-2024" and comps[0].system_fingerprint == "fp_fault"


def test_cache_answers_a_repeated_request_without_sending_it(server: FaultServer,
                                                            tmp_path: Path) -> None:
    cache = RequestCache(tmp_path / "cache.sqlite")
    first = answer(server, ["cache me", "cache me too"], cache=cache)
    again = answer(server, ["cache me", "cache me too"], cache=cache)
    assert not first["cache me"].cached and again["cache me"].cached
    assert again["cache me"].completions[0].text == "echo: cache me"
    assert len(requests_for(server, "cache me")) == 1
    other = answer(server, ["cache me"], params={"temperature": 0.5}, cache=cache)
    assert not other["cache me"].cached  # another parameter is another request
    assert len(requests_for(server, "cache me")) == 2


def test_budget_stops_new_requests_and_lets_those_in_flight_finish(server: FaultServer) -> None:
    # Each request costs 2 prompt + 3 completion "tokens" at $1/$1 per million = $5e-6.
    budget = Budget("fault-model", {"fault-model": (1.0, 1.0)}, max_cost=2e-5)
    got = answer(server, [f"budget {i}" for i in range(100)], Limits(concurrency=2), budget=budget)
    assert 4 <= len(got) <= 6  # 4 reach the cap; at most the other in-flight one finishes
    assert all(r.ok for r in got.values())
    assert budget.cost >= 2e-5 and budget.exhausted().startswith("cost cap")


def test_concurrency_bounds_requests_in_flight_and_requests_created(tmp_path: Path) -> None:
    created = 0

    def stream() -> Iterator[Request]:
        nonlocal created
        for i in range(40):
            created += 1
            yield Request(str(i), [{"role": "user", "content": f"bounded {i}"}])

    peak = done = 0

    def seen(r: Result) -> None:
        nonlocal peak, done
        peak = max(peak, created - done)  # requests made and not yet answered
        done += 1

    with fault_server(tmp_path, latency=0.05) as s:
        run_sync(stream(), OpenAIEndpoint(s.base_url, "fault-model"), Limits(concurrency=5),
                 on_result=seen)
    assert created == 40 and peak <= 5


def test_rate_limit_headers_tighten_the_request_bucket(server: FaultServer) -> None:
    server.faults(["ratelimit:60:0:1s"], match="limited 0")
    t0 = time.monotonic()
    got = answer(server, [f"limited {i}" for i in range(3)], Limits(concurrency=1))
    assert all(r.ok for r in got.values())
    # 60/min = 1/s once the server said so, and nothing left for 1 s: the other two wait.
    assert time.monotonic() - t0 >= 1.5


def test_token_bucket_paces_requests_per_minute() -> None:
    async def take(n: int) -> float:
        bucket = TokenBucket(600)  # 10/s, bursts of 10
        t0 = time.monotonic()
        for _ in range(n):
            await bucket.take(1)
        return time.monotonic() - t0

    assert asyncio.run(take(10)) < 0.2
    assert 0.9 <= asyncio.run(take(20)) <= 1.6


def test_small_parsers() -> None:
    assert parse_reset("6m0s") == 360 and parse_reset("20ms") == pytest.approx(0.02)
    assert parse_reset("1.5") == 1.5 and parse_reset(None) is None
    assert infer_route("https://api.openai.com/v1") == "direct"
    assert infer_route("https://x.openai.azure.com") == "azure"
    assert infer_route("https://openrouter.ai/api/v1") == "openrouter"
    assert infer_route("http://127.0.0.1:8000/v1") == "local"
    mini = price_for("gpt-4o-mini-2024-07-18")
    assert mini is not None and (mini.input, mini.output) == (0.15, 0.60)
    mine = price_for("my-model", {"my": (1.0, 2.0)})
    assert mine is not None and (mine.input, mine.output) == (1.0, 2.0)
    assert price_for("unknown") is None


def test_an_unreachable_base_url_is_one_clear_error() -> None:
    ep = OpenAIEndpoint("http://127.0.0.1:9/v1", "m")
    with pytest.raises(UserError, match="cannot reach the teacher"):
        asyncio.run(ep.check_reachable())


def test_azure_deployments_get_api_version_and_the_api_key_header(tmp_path: Path,
                                                                  monkeypatch) -> None:
    monkeypatch.setenv("SEED_AZURE_KEY", "az-secret")
    with fault_server(tmp_path, key="az-secret") as s:
        ep = OpenAIEndpoint(s.base_url.removesuffix("/v1"), "fault-model", route="azure",
                            api_version="2024-10-21", api_key_env="SEED_AZURE_KEY")
        got: list[Result] = []
        run_sync([Request("a", [{"role": "user", "content": "from azure"}])], ep, FAST,
                 on_result=got.append)
    assert got[0].completions[0].text == "echo: from azure"
    assert ep.teacher().route == "azure" and "az-secret" not in ep.teacher().model_dump_json()
    with pytest.raises(UserError, match="api_version"):
        OpenAIEndpoint("https://x.openai.azure.com", "dep")


def test_max_tokens_cap_stops_the_run(server: FaultServer) -> None:
    budget = Budget("fault-model", max_tokens=50)  # 5 tokens a request: 10 requests
    got = answer(server, [f"capped {i}" for i in range(60)], Limits(concurrency=1), budget=budget)
    assert len(got) == 10 and budget.tokens == 50
    assert budget.exhausted().startswith("token cap")
    assert budget.cost is None  # no price for this model, and none needed without --max-cost


def test_progress_figures_and_summary(server: FaultServer) -> None:
    from rich.console import Console

    from seed.generate.engine import Stats
    from seed.generate.progress import figures, live, summary

    budget = Budget("fault-model", {"fault-model": (1.0, 1.0)})
    stats = Stats(total=20)
    console = Console(force_terminal=True, record=True, width=200)
    with live(stats, budget, console):
        answer(server, [f"progress {i}" for i in range(20)], Limits(concurrency=4),
               budget=budget, stats=stats)
    f = figures(stats, budget)
    assert f["done"] == "20 / 20" and f["failures"] == "0" and f["tokens"] == "100"
    assert f["cost"] == "$0.0001" and f["projected"] == "$0.0001"
    assert summary(stats, budget)[-1].startswith("elapsed: ")  # not stopped early
    assert "done" in console.export_text()
