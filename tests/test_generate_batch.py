"""`seed generate --batch` against a local OpenAI Files + Batches server (helpers/batch_server.py).

What it proves: a batch run writes the records an online run writes (only `teacher.api` tells
them apart), every custom_id is submitted once, the answers are cached under the online keys (an
online run afterwards pays nothing), the budget charges batch prices and never submits a shard
whose worst case would cross --max-cost, expired / failed items are retried online or land in
failed.jsonl with the provider's reason, Azure's paths work, and the API key is in no file.
"""

from __future__ import annotations

import asyncio
import io
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from helpers.batch_server import BatchServer, batch_server
from helpers.cli import assert_one_line_error, run_cli
from helpers.recipes import teacher_recipe, write_prompts, write_recipe
from seed.errors import UserError
from seed.generate.batch_route import batch_on
from seed.generate.teacher import apply_overrides, generate_from_teacher
from seed.recipe import load_recipe
from seed.records import read_records

MODEL = "batch-model"
FAST = {"generate.batch.poll_interval": 0.05, "generate.limits.backoff_base": 0.05}


def _recipe(tmp: Path, server: BatchServer, n: int, overrides: dict[str, Any] | None = None,
            name: str = "r.toml") -> Path:
    prompts = write_prompts(tmp / f"p{n}.jsonl", n)
    return write_recipe(tmp / name, teacher_recipe(server.base_url, prompts, model=MODEL),
                        {**FAST, **(overrides or {})})


def _generate(recipe: Path, out: Path, *args: str, max_cost: float | None = None
              ) -> dict[str, Any]:
    """`seed generate RECIPE --out OUT [--batch]` in this process (the command line's own path is
    taken by the first test and the kill tests); its summary."""
    r, _ = load_recipe(recipe)
    cfg = apply_overrides(r.generate, None, max_cost, None, None)
    if "--batch" in args:
        cfg = batch_on(cfg)
    return generate_from_teacher(cfg, r.seed, out, console=Console(file=io.StringIO()))


def _by_prompt(out: Path) -> dict[tuple[str, int], dict[str, Any]]:
    rows = {}
    for r in read_records(out / "train.jsonl"):
        t = r.provenance.teacher
        assert t is not None
        rows[(r.messages[0].content, r.meta["sample"])] = {
            "messages": [m.model_dump(exclude_none=True) for m in r.messages],
            "model": (t.model_requested, t.model_returned, t.system_fingerprint, t.route),
            "params": t.params, "prompt_key": r.meta["prompt_key"], "job": r.meta["job"],
            "api": t.api}
    return rows


def _failed(out: Path) -> dict[str, str]:
    path = out / "failed.jsonl"
    lines = [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []
    return {x["messages"][0]["content"]: x["reason"] for x in lines}


def test_batch_records_equal_online_records_and_the_cache_serves_a_later_online_run(
        tmp_path: Path) -> None:
    with batch_server() as server:
        recipe = _recipe(tmp_path, server, 23, {"generate.samples": 2,
                                                "generate.batch.max_requests": 5})
        _generate(recipe, tmp_path / "online")
        online_asked = dict(server.counts()["online"])
        assert len(online_asked) == 23
        proc = run_cli("generate", recipe, "--out", tmp_path / "batch", "--batch")
        assert proc.returncode == 0, proc.stderr
        counts = server.counts()
        # sent once each, in ceil(23 / 5) jobs, none online
        assert counts["online"] == online_asked
        assert len(counts["submitted"]) == 23 and set(counts["submitted"].values()) == {1}
        assert len(counts["batches"]) == 5
        assert all(len(b["custom_ids"]) <= 5 for b in counts["batches"])
        assert set(counts["uploads"].values()) == {1}

        online, batch = _by_prompt(tmp_path / "online"), _by_prompt(tmp_path / "batch")
        assert len(online) == 46
        assert {k: {**v, "api": None} for k, v in batch.items()} == online
        assert {v["api"] for v in batch.values()} == {"batch"}
        assert batch[("question 3", 1)]["messages"][1]["content"] == "echo[1]: question 3"
        summary = json.loads((tmp_path / "batch" / "summary.json").read_text())
        assert summary["api"] == "batch" and summary["requests_paid"] == 23
        # usage: 2 prompt words and 3 completion words per choice, as the server counts
        assert (summary["prompt_tokens"], summary["completion_tokens"]) == (23 * 2, 46 * 3)

        # The cache holds the batch answers under the online keys: an online run pays nothing.
        (tmp_path / "batch" / "train.jsonl").unlink()
        _generate(recipe, tmp_path / "batch")
        assert server.counts()["online"] == online_asked
        again = _by_prompt(tmp_path / "batch")
        assert {k: {**v, "api": None} for k, v in again.items()} == online
        # ... and a second batch run submits nothing either
        (tmp_path / "batch" / "train.jsonl").unlink()
        _generate(recipe, tmp_path / "batch", "--batch")
        assert len(server.counts()["batches"]) == 5


def test_the_budget_charges_batch_prices_and_never_submits_past_max_cost(tmp_path: Path) -> None:
    # $/1M tokens: online 2 in, 4 out; batch 1 in, 2 out. With max_tokens = 20 a request's worst
    # case is (len("question N") + 8) + 20 tokens: 19 + 20 at batch prices = $0.000059.
    # It is billed 2 + 3 tokens: $0.000008. The cap $0.0001 lets one request fit per wave until
    # less than one worst case is left: after 6 paid answers ($0.000048 spent, $0.000052 left).
    prices = {MODEL: {"input": 2.0, "output": 4.0, "batch_input": 1.0, "batch_output": 2.0}}
    with batch_server() as server:
        recipe = _recipe(tmp_path, server, 10, {"generate.prices": prices,
                                                "generate.params": {"max_tokens": 20}})
        out = tmp_path / "out"
        _generate(recipe, out, "--batch", max_cost=0.0001)
        counts = server.counts()
        summary = json.loads((out / "summary.json").read_text())
        assert [len(b["custom_ids"]) for b in counts["batches"]] == [1] * 6
        assert summary["requests_paid"] == 6 and summary["records_written"] == 6
        assert abs(summary["batch_cost"] - 6 * (2 * 1 + 3 * 2) / 1e6) < 1e-12
        assert summary["cost"] <= 0.0001
        assert "cost cap" in summary["stopped"] and "batch prices" in summary["stopped"]
        assert counts["online"] == {}

        # Without a reply cap there is no worst case to hold a shard to: refused up front.
        bare = _recipe(tmp_path, server, 10, {"generate.prices": prices}, name="bare.toml")
        with pytest.raises(UserError, match=r"generate\.params\.max_tokens"):
            _generate(bare, tmp_path / "bare", "--batch", max_cost=1.0)
        assert len(server.counts()["batches"]) == 6


def test_expired_items_go_online_or_to_failed_jsonl(tmp_path: Path) -> None:
    with batch_server() as server:
        server.config(expire_after=3)
        recipe = _recipe(tmp_path, server, 8)
        _generate(recipe, tmp_path / "retry", "--batch")
        records = _by_prompt(tmp_path / "retry")
        assert len(records) == 8
        via = {k[0]: v["api"] for k, v in records.items()}
        assert sum(api == "batch" for api in via.values()) == 3
        online = server.counts()["online"]
        assert sorted(online) == sorted(p for p, api in via.items() if api is None)
        assert set(online.values()) == {1}
        assert all(v["messages"][1]["content"] == f"echo: {k[0]}" for k, v in records.items())

        kept = _recipe(tmp_path, server, 8, {"generate.batch.retry_online": False},
                       name="no-retry.toml")
        _generate(kept, tmp_path / "no-retry", "--batch")
        failed = _failed(tmp_path / "no-retry")
        assert len(failed) == 5 and len(_by_prompt(tmp_path / "no-retry")) == 3
        assert all("batch_expired" in why for why in failed.values())
        assert server.counts()["online"] == online  # nothing asked online this time


def test_failed_items_and_a_failed_batch(tmp_path: Path) -> None:
    with batch_server() as server:
        # A 500 inside the job is retried online; a 400 is the request's fault: failed.jsonl.
        server.config(fail_match="question 1", fail_status=500)
        _generate(_recipe(tmp_path, server, 12), tmp_path / "a", "--batch")
        assert len(_by_prompt(tmp_path / "a")) == 12
        assert server.counts()["online"] == {"question 1": 1, "question 10": 1, "question 11": 1}

        server.config(fail_match="question 2", fail_status=400)
        _generate(_recipe(tmp_path, server, 5, name="b.toml"), tmp_path / "b", "--batch")
        assert list(_failed(tmp_path / "b")) == ["question 2"]
        assert "HTTP 400" in _failed(tmp_path / "b")["question 2"]
        assert len(_by_prompt(tmp_path / "b")) == 4

        # A job that fails validation answers nothing: all of it goes online.
        server.config(fail_match=None, invalid=True)
        before = dict(server.counts()["online"])
        _generate(_recipe(tmp_path, server, 3, name="c.toml"), tmp_path / "c", "--batch")
        assert len(_by_prompt(tmp_path / "c")) == 3
        after = server.counts()["online"]
        assert {p: after[p] - before.get(p, 0) for p in after if after[p] > before.get(p, 0)} == {
            "question 0": 1, "question 1": 1, "question 2": 1}
        assert {v["api"] for v in _by_prompt(tmp_path / "c").values()} == {None}


def test_azure_batch_paths_and_the_key_is_in_no_file(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    key = "sk-batch-secret-7f3a9c"
    key_file = tmp_path / "key.txt"
    key_file.write_text(key)
    with batch_server(key=key) as server:
        prompts = write_prompts(tmp_path / "p.jsonl", 6)
        recipe = write_recipe(tmp_path / "r.toml", {
            "name": "azure", "seed": 7, "generate": {
                "teacher": {"kind": "openai", "base_url": server.root, "model": "my-deployment",
                            "route": "azure", "api_version": "2024-10-21",
                            "api_key_file": str(key_file), "batch": True},
                "prompts": [{"path": str(prompts), "license": "CC0-1.0"}]}}, FAST)
        _generate(recipe, tmp_path / "az")
        counts = server.counts()
        assert len(counts["submitted"]) == 6 and counts["online"] == {}
        assert counts["batches"][0]["endpoint"] == "/chat/completions"
        records = _by_prompt(tmp_path / "az")
        assert len(records) == 6
        assert {v["model"] for v in records.values()} == {
            ("my-deployment", "my-deployment", "fp_batch", "azure")}

        # the OpenAI route with a bearer key from the environment, expired items retried online
        server.config(expire_after=2)
        monkeypatch.setenv("BATCH_TEST_KEY", key)
        bearer = write_recipe(tmp_path / "b.toml", teacher_recipe(server.base_url, prompts,
                                                                   model=MODEL),
                              {**FAST, "generate.teacher.api_key_env": "BATCH_TEST_KEY"})
        _generate(bearer, tmp_path / "openai", "--batch")
        assert len(_by_prompt(tmp_path / "openai")) == 6
        assert len(server.counts()["online"]) == 4

    shards = 0
    for out in (tmp_path / "az", tmp_path / "openai"):
        db = sqlite3.connect(out / "cache.sqlite")
        rows = db.execute("SELECT steps, state FROM batch_shards").fetchall()
        db.close()
        shards += len(rows)
        assert all(json.loads(steps).get("job") and state == "collected" for steps, state in rows)
        for path in out.rglob("*"):
            if path.is_file():
                assert key.encode() not in path.read_bytes(), path
    assert shards == 2


def test_batch_refuses_what_it_cannot_do(tmp_path: Path) -> None:
    prompts = write_prompts(tmp_path / "p.jsonl", 3)
    base = teacher_recipe("http://127.0.0.1:9/v1", prompts, model=MODEL)
    turns = write_recipe(tmp_path / "t.toml", base, {"generate.turns": 2,
                                                     "generate.teacher.batch": True,
                                                     "generate.prices": {MODEL: [1.0, 2.0]}})
    assert_one_line_error(run_cli("generate", turns, "--out", tmp_path / "t"),
                          "generate.turns", "batch")
    tasks = write_recipe(tmp_path / "k.toml", {"name": "k", "generate": {"teacher": {
        "kind": "tasks", "tasks": [{"name": "basic_arithmetic"}]}}})
    assert_one_line_error(run_cli("generate", tasks, "--out", tmp_path / "k", "--batch"),
                          "--batch", "tasks")
    assert not (tmp_path / "t").exists() and not (tmp_path / "k").exists()


def test_the_runner_sends_a_repeated_request_once_and_shows_the_jobs_progress(
        tmp_path: Path) -> None:
    from seed.endpoints.openai import OpenAIEndpoint
    from seed.endpoints.openai_batch import OpenAIBatch
    from seed.generate import batch
    from seed.generate.cache import RequestCache
    from seed.generate.engine import Request, Result, Stats
    from seed.generate.progress import figures

    async def main(server: BatchServer) -> tuple[list[Result], list[str], Stats]:
        endpoint = OpenAIEndpoint(server.base_url, MODEL)
        provider = OpenAIBatch(endpoint)
        cache = RequestCache(tmp_path / "cache.sqlite")
        asks = [f"question {i}" for i in (0, 1, 2, 0, 3)]
        reqs = [Request(str(i), [{"role": "user", "content": q}], {}, payload=i)
                for i, q in enumerate(asks)]
        got: list[Result] = []
        seen: list[str] = []

        class Watched(Stats):  # every phase the runner shows, as the live view would draw it
            def __setattr__(self, name: str, value: Any) -> None:
                super().__setattr__(name, value)
                if name == "phase" and value is not None:
                    seen.append(figures(self, None)["batch"])

        stats = Watched(total=len(reqs))
        try:
            await batch.run(reqs, endpoint, provider, cache=cache, on_result=got.append,
                            stats=stats, options=batch.BatchOptions(poll_interval=0.05))
        finally:
            await provider.aclose()
            await endpoint.aclose()
        shards = batch.shards_of(cache)
        assert [(s.state, sorted(s.steps), len(s.keys)) for s in shards] == [
            ("collected", ["file", "job"], 4)]
        cache.close()
        return got, seen, stats

    with batch_server() as server:
        server.config(slow_polls=4)
        got, seen, stats = asyncio.run(main(server))
        assert set(server.counts()["submitted"].values()) == {1}
        assert len(server.counts()["submitted"]) == 4  # question 0 asked twice, sent once
    assert sorted(r.request.payload for r in got) == [0, 1, 2, 3, 4]
    for r in got:
        assert r.api == "batch"
        assert r.completions[0].text == f"echo: {r.request.messages[0]['content']}"
    assert (stats.done, stats.paid, stats.phase) == (5, 4, None)
    assert any("0/1 jobs ended" in s and "in_progress" in s for s in seen), seen
    assert any("1/1 jobs ended, 4/4 requests (completed)" in s for s in seen), seen


def test_the_verifier_judges_batch_answers_as_it_judges_online_ones(tmp_path: Path) -> None:
    # The server answers "echo: N"; the reference is N for even prompts and N + 1 for odd ones.
    prompts = tmp_path / "math.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": str(i), "answer": str(i + i % 2)}) + "\n"
                               for i in range(6)))
    with batch_server() as server:
        recipe = write_recipe(tmp_path / "v.toml", teacher_recipe(server.base_url, prompts,
                                                                  model=MODEL),
                              {**FAST, "generate.verify": {"kind": "math", "extract": "whole"}})
        online = _generate(recipe, tmp_path / "online")
        batch = _generate(recipe, tmp_path / "batch", "--batch")
        assert len(server.counts()["submitted"]) == 6
    assert online["verify"] == batch["verify"]
    assert sorted(k[0] for k in _by_prompt(tmp_path / "batch")) == ["0", "2", "4"]
    assert sorted(_failed(tmp_path / "batch")) == sorted(_failed(tmp_path / "online")) == [
        "1", "3", "5"]


def test_jobs_stay_within_the_byte_cap_and_a_request_too_big_for_any_fails(
        tmp_path: Path) -> None:
    prompts = tmp_path / "sized.jsonl"
    texts = [f"question {i}" for i in range(7)] + ["x" * 800]
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    with batch_server() as server:
        recipe = write_recipe(tmp_path / "s.toml", teacher_recipe(server.base_url, prompts,
                                                                  model=MODEL),
                              {**FAST, "generate.batch.max_bytes": 500})
        _generate(recipe, tmp_path / "out", "--batch")
        batches = server.counts()["batches"]
    # each line is ~200 bytes (a 64-character custom_id, the URL, the body): two per job
    assert [len(b["custom_ids"]) for b in batches] == [2, 2, 2, 1]
    assert all(b["input_bytes"] <= 500 for b in batches)
    assert len(_by_prompt(tmp_path / "out")) == 7
    failed = _failed(tmp_path / "out")
    assert list(failed) == ["x" * 800] and "bytes" in failed["x" * 800]


def test_online_retries_are_charged_online_prices_under_the_same_cap(tmp_path: Path) -> None:
    prices = {MODEL: {"input": 2.0, "output": 4.0, "batch_input": 1.0, "batch_output": 2.0}}
    with batch_server() as server:
        server.config(expire_after=2)
        recipe = _recipe(tmp_path, server, 4, {"generate.prices": prices,
                                               "generate.params": {"max_tokens": 20}})
        summary = _generate(recipe, tmp_path / "out", "--batch", max_cost=1.0)
        assert len(server.counts()["online"]) == 2
    # 2 prompt and 3 completion tokens each: 2 answers at batch prices, 2 retried online
    assert abs(summary["batch_cost"] - 2 * (2 * 1 + 3 * 2) / 1e6) < 1e-12
    assert abs(summary["online_cost"] - 2 * (2 * 2 + 3 * 4) / 1e6) < 1e-12
    assert abs(summary["cost"] - summary["batch_cost"] - summary["online_cost"]) < 1e-12
    assert summary["requests_paid"] == 4 and summary["stopped"] is None


def test_the_token_cap_holds_on_the_batch_route_too(tmp_path: Path) -> None:
    with batch_server() as server:
        recipe = _recipe(tmp_path, server, 20, {"generate.params": {"max_tokens": 20},
                                                "generate.max_tokens": 100})
        summary = _generate(recipe, tmp_path / "out", "--batch")
        counts = server.counts()
    spent = summary["prompt_tokens"] + summary["completion_tokens"]
    # worst case of "question N": 10 bytes + 8 (template) + 20 (max_tokens) = 38 tokens (39 for
    # N >= 10); each answer bills 2 + 3. Waves of 2, 2, 2, then 1 at a time: 13 answered.
    assert spent <= 100 < spent + 38  # stopped only when not one more request fitted
    assert "token cap" in summary["stopped"]
    assert summary["requests_paid"] == len(counts["submitted"]) == spent // 5 == 13
    assert max(len(b["custom_ids"]) for b in counts["batches"]) == 2  # 2 * 38 <= 100 < 3 * 38
