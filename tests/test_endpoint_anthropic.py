"""The `anthropic` endpoint against a local server speaking the Messages API: records, thinking,
prompt caching in usage and cost, retries, refusals, rate limits, params, the judge, the terms."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from helpers.anthropic_server import AnthropicServer, anthropic_server
from helpers.cli import assert_one_line_error, cli_env, run_cli
from helpers.recipes import write_recipe
from seed.endpoints.anthropic import AnthropicEndpoint, rate_limit_headers
from seed.endpoints.base import PromptRefused
from seed.errors import UserError
from seed.evaluate.judge import JudgeSettings, judge_single
from seed.evaluate.questions import Question
from seed.generate.engine import Limits, RateLimiter
from seed.generate.teacher import generate_from_teacher
from seed.recipe import load_recipe
from seed.records import read_records

KEY = "sk-ant-test-7f3a9c1e5b"
MODEL = "claude-test-1"
SYSTEM = "Tutor mode: answer kindly and briefly, as a patient teacher would for a curious student."
LIMITS = {"max_attempts": 3, "timeout": 10, "backoff_base": 0.05, "concurrency": 1}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AnthropicServer]:
    """One server for the module: each test asks its own prompts (and system prompt, where the
    prompt cache matters), so faults, the cache and the log never cross tests."""
    with anthropic_server(tmp_path_factory.mktemp("anthropic"), key=KEY) as s:
        yield s


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)


def env() -> dict[str, str]:
    return cli_env(ANTHROPIC_API_KEY=KEY)


def prompts(path: Path, n: int, prefix: str, system: str | None = SYSTEM) -> Path:
    rows = []
    for i in range(n):
        msgs = [{"role": "system", "content": system}] if system else []
        rows.append({"messages": [*msgs, {"role": "user", "content": f"{prefix} {i}"}]})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def recipe(tmp: Path, server: AnthropicServer, prefix: str, n: int = 6, model: str = MODEL,
           system: str | None = SYSTEM, **generate: Any) -> Path:
    teacher = {"kind": "anthropic", "base_url": server.root, "model": model,
               **generate.pop("teacher", {})}
    # a price for the test model: Seed warns about a model its table does not price
    generate.setdefault("prices", {model: [1.0, 5.0]})
    data = {"name": "claude-gen", "seed": 7, "generate": {
        "teacher": teacher, "limits": LIMITS,
        "prompts": [{"path": str(prompts(tmp / "p.jsonl", n, prefix, system)),
                     "license": "CC0-1.0"}],
        **generate}}
    return write_recipe(tmp / "r.toml", data)


def generate(tmp: Path, server: AnthropicServer, prefix: str, **generate: Any
             ) -> tuple[Path, dict[str, Any]]:
    """`seed generate` in this process (the CLI's own path is tested once, below)."""
    out = tmp / "out"
    r, _ = load_recipe(recipe(tmp, server, prefix, **generate))
    info = generate_from_teacher(r.generate, r.seed, out, Console(quiet=True))
    return out, info


def messages_sent(server: AnthropicServer, prefix: str) -> list[dict[str, Any]]:
    return [r["body"] for r in server.requests()
            if r["path"] == "/v1/messages" and r["user"].startswith(prefix)]


def tried(server: AnthropicServer, prefix: str) -> list[str]:
    return [r["user"] for r in server.requests()
            if r["path"] == "/v1/messages" and r["user"].startswith(prefix)]


def test_generate_keeps_thinking_blocks_as_reasoning_and_sends_the_system_prompt_apart(
        tmp_path: Path, server: AnthropicServer) -> None:
    out = tmp_path / "out"
    path = recipe(tmp_path, server, "think", teacher={"thinking_budget": 2048},
                  params={"temperature": 1, "stop": ["NEVER"]})
    res = run_cli("generate", str(path), "--out", str(out), env=env())
    assert res.returncode == 0, res.stderr
    assert "6 records written" in res.stdout and KEY not in res.stdout + res.stderr
    sent = messages_sent(server, "think")
    recs = sorted(read_records(out / "train.jsonl"), key=lambda r: r.messages[1].content)
    assert len(recs) == 6
    r = recs[2]
    assert [m.role for m in r.messages] == ["system", "user", "assistant"]
    assert r.messages[2].content == "[Tutor] claude: think 2"
    assert r.messages[2].reasoning_content == "thinking about: think 2"
    t = r.provenance.teacher
    assert (t.route, t.host, t.model_requested, t.model_returned) == (
        "local", "127.0.0.1", MODEL, MODEL)
    assert r.meta["finish_reason"] == "stop"
    assert (t.model_extra or {})["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    body = sent[0]
    assert body["system"] == [{"type": "text", "text": SYSTEM,
                               "cache_control": {"type": "ephemeral"}}]
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 2048}
    assert body["max_tokens"] == 4096 + 2048  # the documented default, above the budget
    assert body["stop_sequences"] == ["NEVER"] and body["temperature"] == 1


def test_cached_system_prompts_are_counted_in_usage_and_charged_at_cache_prices(
        tmp_path: Path, server: AnthropicServer) -> None:
    system = "Cache test: a system prompt shared by every request of this one run, word for word."
    sys_words, n = len(system.split()), 6
    prices = {MODEL: {"input": 1000.0, "output": 5000.0, "cached_input": 100.0,
                      "cache_write": 1250.0}}
    out, info = generate(tmp_path, server, "cached", n=n, system=system, prices=prices)
    assert len(messages_sent(server, "cached")) == n
    # per request: "cached i" (2 words) fresh; the system prompt written once, then read
    answer_words = 4  # "[Cache] claude: cached 0"
    assert info["prompt_tokens"] == n * (2 + sys_words)
    assert info["completion_tokens"] == n * answer_words
    expected = (n * 2 * 1000.0 + sys_words * 1250.0 + (n - 1) * sys_words * 100.0
                + n * answer_words * 5000.0) / 1e6
    assert info["cost"] == pytest.approx(expected, rel=1e-9)
    uncached = (n * (2 + sys_words) * 1000.0 + n * answer_words * 5000.0) / 1e6
    assert info["cost"] < uncached  # what the same run costs with cache_system = false
    assert json.loads((out / "summary.json").read_text())["cost"] == info["cost"]


def test_cache_system_false_sends_no_cache_control(tmp_path: Path,
                                                   server: AnthropicServer) -> None:
    generate(tmp_path, server, "nocache", n=2, teacher={"cache_system": False})
    assert messages_sent(server, "nocache")[0]["system"] == [{"type": "text", "text": SYSTEM}]


def test_429_and_529_are_retried_and_a_refusal_fails_only_its_prompt(
        tmp_path: Path, server: AnthropicServer) -> None:
    server.faults(["429:0", "529"], match="retry 1")
    server.faults(["500"], match="retry 3")
    server.faults(["refusal"], match="retry 4")
    out, info = generate(tmp_path, server, "retry", n=6)
    asked = tried(server, "retry")
    assert asked.count("retry 1") == 3 and asked.count("retry 3") == 2
    assert asked.count("retry 4") == 1  # a refusal is not asked again
    recs = list(read_records(out / "train.jsonl"))
    assert sorted(r.messages[1].content for r in recs) == [f"retry {i}" for i in (0, 1, 2, 3, 5)]
    [failed] = [json.loads(line) for line in (out / "failed.jsonl").read_text().splitlines()]
    assert failed["messages"][-1]["content"] == "retry 4"
    assert failed["reason"].startswith("refused:") and "refusal" in failed["reason"]
    assert info["retries"] == 3 and info["failed"] == 1


def test_samples_are_concurrent_requests_with_their_usage_summed(
        tmp_path: Path, server: AnthropicServer) -> None:
    out, info = generate(tmp_path, server, "samples", n=2, samples=3,
                         teacher={"cache_system": False})
    sent = messages_sent(server, "samples")
    assert len(sent) == 6 and all("n" not in b for b in sent)
    recs = list(read_records(out / "train.jsonl"))
    assert len(recs) == 6 and sorted({r.meta["sample"] for r in recs}) == [0, 1, 2]
    assert info["prompt_tokens"] == 6 * (2 + len(SYSTEM.split()))


def test_a_parameter_with_no_anthropic_mapping_is_a_one_line_error(
        tmp_path: Path, server: AnthropicServer) -> None:
    path = recipe(tmp_path, server, "logprobs", n=2, params={"logprobs": True})
    res = run_cli("generate", str(path), "--out", str(tmp_path / "out"), env=env())
    assert_one_line_error(res, "'logprobs'", "no mapping", "Anthropic")
    assert tried(server, "logprobs") == []  # refused before anything was sent


def test_a_refused_key_an_unknown_model_or_a_missing_key_stop_the_run(
        tmp_path: Path, server: AnthropicServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for d in "abc":
        (tmp_path / d).mkdir()
    with pytest.raises(UserError, match=r"HTTP 404.*claude-nope"):
        generate(tmp_path / "a", server, "unknown", n=2, model="not-claude-nope")
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-wrong")
    with pytest.raises(UserError, match=r"HTTP 401.*invalid x-api-key"):
        generate(tmp_path / "b", server, "wrongkey", n=2)
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(UserError, match="ANTHROPIC_API_KEY is not set"):
        generate(tmp_path / "c", server, "nokey", n=2)


def test_the_key_lands_in_no_file_or_log_line_the_run_wrote(
        tmp_path: Path, server: AnthropicServer, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    key_file = tmp_path / "key.txt"
    key_file.write_text(KEY + "\n")
    out, info = generate(tmp_path, server, "secret", n=3,
                         teacher={"api_key_file": str(key_file), "thinking_budget": 1024})
    assert info["records_written"] == 3
    written = [p for p in out.rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"train.jsonl", "cache.sqlite", "summary.json"}
    for p in written:
        assert KEY.encode() not in p.read_bytes(), p
    assert caplog.records and KEY not in caplog.text  # httpx logged the requests, not the key


def test_rate_limit_headers_are_translated_and_tighten_the_limiter(
        server: AnthropicServer) -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    headers = rate_limit_headers({
        "anthropic-ratelimit-requests-limit": "50", "anthropic-ratelimit-requests-remaining": "7",
        "anthropic-ratelimit-requests-reset": "2026-01-01T12:00:30Z",
        "anthropic-ratelimit-input-tokens-limit": "40000",
        "anthropic-ratelimit-input-tokens-remaining": "39000",
        "anthropic-ratelimit-input-tokens-reset": "2026-01-01T12:00:01.5Z",
        "Retry-After": "4"}, now)
    assert headers["x-ratelimit-limit-requests"] == "50"
    assert headers["x-ratelimit-remaining-requests"] == "7"
    assert float(headers["x-ratelimit-reset-requests"]) == 30.0
    assert headers["x-ratelimit-limit-tokens"] == "40000"
    assert float(headers["x-ratelimit-reset-tokens"]) == 1.5
    assert headers["retry-after"] == "4"

    async def ask(endpoint: AnthropicEndpoint, limiter: RateLimiter) -> None:
        endpoint.on_headers = limiter.observe
        try:
            await endpoint.complete([{"role": "user", "content": "limits"}], max_tokens=16)
        finally:
            await endpoint.aclose()

    server.control("ratelimit", {"requests": [30, 0, 20], "tokens": [6000, 5000, 10]})
    limiter = RateLimiter(Limits())
    try:
        asyncio.run(ask(AnthropicEndpoint(MODEL, base_url=server.root), limiter))
    finally:
        server.control("ratelimit", {})
    assert limiter.requests is not None and limiter.tokens is not None
    assert limiter.requests.rate == pytest.approx(30 / 60)
    assert limiter.tokens.rate == pytest.approx(6000 / 60)
    # nothing left until the window resets in ~20 s: the bucket owes what refills by then
    assert -20 * 0.5 <= limiter.requests.level <= -15 * 0.5


def test_params_map_onto_the_messages_api() -> None:
    e = AnthropicEndpoint("claude-sonnet-4-5", thinking_budget=1024)
    body = e.body([{"role": "system", "content": "a"}, {"role": "developer", "content": "b"},
                   {"role": "user", "content": "q"},
                   {"role": "assistant", "content": "x", "reasoning_content": "secret"},
                   {"role": "user", "content": "q2"}],
                  {"max_completion_tokens": 3000, "top_p": 0.95, "top_k": 5, "stop": "END",
                   "n": 4})
    assert body == {
        "model": "claude-sonnet-4-5", "max_tokens": 3000,
        "system": [{"type": "text", "text": "a"},
                   {"type": "text", "text": "b", "cache_control": {"type": "ephemeral"}}],
        "messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "x"},
                     {"role": "user", "content": "q2"}],
        "thinking": {"type": "enabled", "budget_tokens": 1024}, "top_p": 0.95, "top_k": 5,
        "stop_sequences": ["END"]}
    with pytest.raises(UserError, match="thinking_budget = 1024 must be below max_tokens"):
        e.body([{"role": "user", "content": "q"}], {"max_tokens": 1024})
    with pytest.raises(UserError, match=r"'response_format'.*json_schema = false"):
        e.body([{"role": "user", "content": "q"}], {"response_format": {"type": "json_object"}})
    with pytest.raises(UserError, match="'tool'"):
        e.body([{"role": "tool", "content": "42"}], {})
    adaptive = AnthropicEndpoint("claude-opus-4-7", adaptive_thinking=True)
    assert adaptive.body([{"role": "user", "content": "q"}], {})["thinking"] == {
        "type": "adaptive"}
    with pytest.raises(UserError, match="thinking_budget or adaptive_thinking, not both"):
        AnthropicEndpoint("claude-opus-4-7", adaptive_thinking=True, thinking_budget=2048)
    with pytest.raises(UserError, match="least thinking budget is 1024"):
        AnthropicEndpoint("claude-opus-4-7", thinking_budget=512)
    t = e.teacher()
    assert (t.route, t.host, t.model_requested) == ("direct", "api.anthropic.com",
                                                    "claude-sonnet-4-5")
    assert KEY not in json.dumps(e.identity()) + t.model_dump_json()


def test_redacted_thinking_is_counted_never_kept_and_max_tokens_is_length(
        server: AnthropicServer) -> None:

    async def ask(e: AnthropicEndpoint, text: str) -> Any:
        try:
            return await e.complete([{"role": "user", "content": text}], max_tokens=4000)
        finally:
            await e.aclose()

    s = server
    s.faults(["redacted"], match="redacted plan")
    s.faults(["max_tokens"], match="long essay")
    s.faults(["refusal"], match="bad idea")
    e = AnthropicEndpoint(MODEL, base_url=s.root + "/v1", thinking_budget=1024)
    [c] = asyncio.run(ask(e, "redacted plan"))
    assert c.reasoning == "thinking about: redacted plan" and e.redacted == 1
    assert "ZW5j" not in (c.reasoning + c.text)
    [c] = asyncio.run(ask(AnthropicEndpoint(MODEL, base_url=s.root), "long essay"))
    assert c.finish_reason == "length"
    with pytest.raises(PromptRefused):
        asyncio.run(ask(AnthropicEndpoint(MODEL, base_url=s.root), "bad idea"))


def test_the_judge_can_be_an_anthropic_model(tmp_path: Path, server: AnthropicServer) -> None:
    questions = [Question("q1", ["What is 2+2?"]), Question("q2", ["Name a colour."])]
    answers = {"student": {"q1": ["4"], "q2": ["blue"]}}
    s = server
    s.control("replies", {"[Assistant's answer]": '{"score": 8, "reason": "correct and brief"}'})
    judge = AnthropicEndpoint(MODEL, base_url=s.root, what="eval.judge.endpoint")
    counts = asyncio.run(judge_single(questions, answers, judge, tmp_path / "grades.jsonl",
                                      settings=JudgeSettings(json_schema=False),
                                      limits=Limits(max_attempts=2)))
    sent = messages_sent(s, "[Question]")
    with pytest.raises(UserError, match=r"eval\.judge\.endpoint.*response_format"):
        asyncio.run(judge_single(questions, answers, AnthropicEndpoint(
            MODEL, base_url=s.root, what="eval.judge.endpoint"), tmp_path / "g2.jsonl"))
    assert counts["written"] == 2 and counts["unparseable"] == 0
    rows = [json.loads(x) for x in (tmp_path / "grades.jsonl").read_text().splitlines()]
    assert sorted((r["id"], r["score"]) for r in rows) == [("q1", 8), ("q2", 8)]
    assert sent[0]["system"][0]["text"] and sent[0]["temperature"] == 0.0
    assert sent[0]["max_tokens"] == 512


def test_seed_check_judges_anthropic_records_by_anthropics_terms(
        tmp_path: Path, server: AnthropicServer) -> None:
    model = "claude-sonnet-4-5"
    out, _ = generate(tmp_path, server, "terms", n=3, model=model, teacher={"route": "direct"})
    proc = run_cli("check", str(out / "train.jsonl"), "--distribute", "--json")
    report = json.loads(proc.stdout)
    [f] = report["findings"]
    assert f["entry"] == "anthropic" and f["records"] == 3
    assert f["teacher"] == f"direct:{model} @ 127.0.0.1"
    assert f["verdict"] == "block" and proc.returncode == 1  # Anthropic's terms: no distribution
    internal = run_cli("check", str(out / "train.jsonl"), "--internal", "--json")
    assert json.loads(internal.stdout)["verdict"] == "warn" and internal.returncode == 0


def test_a_failed_sample_is_asked_again_alone(tmp_path: Path, server: AnthropicServer) -> None:
    server.faults(["529"], match="partial 0")
    out, info = generate(tmp_path, server, "partial", n=1, samples=3)
    assert len(tried(server, "partial")) == 4  # three at once, then the one that failed
    recs = list(read_records(out / "train.jsonl"))
    assert sorted(r.meta["sample"] for r in recs) == [0, 1, 2]
    assert info["retries"] == 0 and info["prompt_tokens"] == 3 * (2 + len(SYSTEM.split()))


def test_a_recipe_names_an_anthropic_judge(tmp_path: Path) -> None:
    from seed.evaluate.judge_run import answerer, endpoint_name

    judge_table = {"endpoint": {"kind": "anthropic", "model": "claude-haiku-4-5",
                                "thinking_budget": 1024}}
    path = write_recipe(tmp_path / "r.toml", {"name": "j", "generate": {"teacher": {
        "kind": "tasks"}}, "eval": {"judge": judge_table}})
    r, _ = load_recipe(path)
    assert r.eval.judge is not None
    assert r.eval.judge.json_schema is False  # the default for an anthropic judge
    write_recipe(tmp_path / "bad.toml", {"name": "j", "generate": {"teacher": {
        "kind": "tasks"}}, "eval": {"judge": {**judge_table, "json_schema": True}}})
    with pytest.raises(UserError, match=r"eval\.judge.*json_schema = false"):
        load_recipe(tmp_path / "bad.toml")
    cfg = r.eval.judge.endpoint
    judge = answerer(cfg, "eval.judge.endpoint", Limits())
    assert isinstance(judge, AnthropicEndpoint) and endpoint_name(cfg) == "claude-haiku-4-5"
    assert judge.identity()["thinking_budget"] == 1024
    asyncio.run(judge.aclose())


def test_the_example_recipe_loads_and_asks_for_its_key(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    r, _ = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "anthropic_teacher.toml")
    assert (r.generate.teacher.kind, r.generate.max_cost) == ("anthropic", 5.0)
    config = r.generate.model_copy(update={"prompts": []})
    from seed.generate.teacher import apply_overrides

    config = apply_overrides(config, [prompts(tmp_path / "p.jsonl", 2, "example")], None, None,
                             None)
    with pytest.raises(UserError, match="ANTHROPIC_API_KEY is not set"):
        generate_from_teacher(config, r.seed, tmp_path / "o", Console(quiet=True))
    assert not (tmp_path / "o").exists()


def test_multi_turn_conversations_never_send_a_trace_back(tmp_path: Path,
                                                          server: AnthropicServer) -> None:
    out, info = generate(tmp_path, server, "turns", n=2, turns=2,
                         teacher={"thinking_budget": 1024})
    assert info["records_written"] == 2
    [r, _] = sorted(read_records(out / "train.jsonl"), key=lambda r: r.messages[1].content)
    assert [m.role for m in r.messages] == ["system", "user", "assistant", "user", "assistant"]
    assert r.messages[2].reasoning_content == "thinking about: turns 0"
    last = [b for b in messages_sent(server, "") if len(b["messages"]) == 3
            and b["messages"][0]["content"] == "turns 0"]
    assert len(last) == 1
    assert last[0]["messages"][1] == {"role": "assistant", "content": "[Tutor] claude: turns 0"}
