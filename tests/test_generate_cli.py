"""`seed generate` with an HTTP teacher: records, resume, budget, failures, bad input, keys."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from rich.console import Console

from helpers.cli import assert_one_line_error, cli_env, run_cli
from helpers.recipes import teacher_recipe, write_prompts, write_recipe
from helpers.servers import fault_server
from seed.generate.teacher import generate_from_teacher
from seed.recipe import load_recipe
from seed.records import read_records

LIMITS = {"generate.limits.max_attempts": 3, "generate.limits.timeout": 5,
          "generate.limits.backoff_base": 0.05}


def records(out: Path) -> list:
    return list(read_records(out / "train.jsonl"))


def test_records_carry_answers_samples_logprobs_and_full_provenance(tmp_path: Path) -> None:
    with fault_server(tmp_path) as s:
        prompts = write_prompts(tmp_path / "p.jsonl", 20)
        recipe = write_recipe(tmp_path / "r.toml", teacher_recipe(s.base_url, prompts), {
            "generate.samples": 2,
            "generate.params": {"temperature": 0.7, "logprobs": True, "top_logprobs": 1}})
        res = run_cli("generate", str(recipe), "--out", str(tmp_path / "out"))
        assert res.returncode == 0, res.stderr
        assert "40 records written" in res.stdout
    recs = records(tmp_path / "out")
    assert len(recs) == 40
    by_prompt: dict[str, list] = {}
    for r in recs:
        by_prompt.setdefault(r.messages[0].content, []).append(r)
    assert sorted(by_prompt) == sorted(f"question {i}" for i in range(20))
    pair = by_prompt["question 3"]
    assert [r.messages[1].content for r in pair] == ["echo[0]: question 3", "echo[1]: question 3"]
    t = pair[0].provenance.teacher
    assert (t.route, t.host, t.model_requested, t.model_returned, t.system_fingerprint) == (
        "local", "127.0.0.1", "fault-model", "fault-model-2024", "fp_fault")
    assert t.params == {"temperature": 0.7, "logprobs": True, "top_logprobs": 1, "n": 2}
    assert t.requested_at <= t.responded_at
    src = pair[0].provenance.source
    assert (src.kind, src.name, src.license) == ("file", "p.jsonl", "CC0-1.0")
    assert pair[0].provenance.purpose == "train"
    lp = pair[1].meta["logprobs"]
    assert len(lp) == 1 and [t["token"] for t in lp[0]] == ["echo[1]:", "question", "3"]


def test_rerun_resumes_without_a_request_and_repairs_a_torn_tail(tmp_path: Path) -> None:
    with fault_server(tmp_path) as s:
        prompts = write_prompts(tmp_path / "p.jsonl", 30)
        recipe = write_recipe(tmp_path / "r.toml", teacher_recipe(s.base_url, prompts))
        out = tmp_path / "out"
        assert run_cli("generate", str(recipe), "--out", str(out)).returncode == 0
        lines = (out / "train.jsonl").read_bytes().splitlines(keepends=True)
        # A crash mid-write: the last record is torn in half.
        (out / "train.jsonl").write_bytes(b"".join(lines[:-1]) + lines[-1][:40])
        sent = len(s.requests())
        res = run_cli("generate", str(recipe), "--out", str(out))
        assert res.returncode == 0, res.stderr
        assert len(s.requests()) == sent  # the torn prompt came back from the cache
    recs = records(out)
    assert len(recs) == 30 and len({r.meta["prompt_key"] for r in recs}) == 30


def test_max_cost_stops_cleanly_and_a_higher_cap_finishes_the_job(tmp_path: Path) -> None:
    with fault_server(tmp_path) as s:
        prompts = write_prompts(tmp_path / "p.jsonl", 200)
        recipe = write_recipe(tmp_path / "r.toml", teacher_recipe(s.base_url, prompts), {
            "generate.prices": {"fault-model": [1000.0, 1000.0]}, **LIMITS,
            "generate.limits.concurrency": 4})
        out = tmp_path / "out"
        # each request: 2 prompt + 3 completion tokens at $1000/M = $0.005
        res = run_cli("generate", str(recipe), "--out", str(out), "--max-cost", "0.1")
        assert res.returncode == 0, res.stderr
        assert "cost cap reached" in res.stdout
        first = records(out)
        assert 20 <= len(first) <= 24  # 20 reach the cap; those in flight finish and are kept
        summary = json.loads((out / "summary.json").read_text())
        assert summary["cost"] == pytest.approx(0.005 * len(first))
        res = run_cli("generate", str(recipe), "--out", str(out), "--max-cost", "10")
        assert res.returncode == 0, res.stderr
        asked = [r["user"] for r in s.requests()]
    assert len(records(out)) == 200
    assert len(asked) == len(set(asked)) == 200  # no prompt was paid for twice


def test_failures_go_to_failed_jsonl_and_a_rerun_retries_them(tmp_path: Path) -> None:
    with fault_server(tmp_path) as s:
        prompts = write_prompts(tmp_path / "p.jsonl", 10)
        recipe = write_recipe(tmp_path / "r.toml", teacher_recipe(s.base_url, prompts),
                              {**LIMITS, "generate.limits.max_attempts": 2})
        s.faults(["500", "500"], match="question 7")
        out = tmp_path / "out"
        res = run_cli("generate", str(recipe), "--out", str(out))
        assert res.returncode == 0 and "failures: 1" in res.stdout
        failed = [json.loads(x) for x in (out / "failed.jsonl").read_text().splitlines()]
        assert len(failed) == 1 and failed[0]["messages"][0]["content"] == "question 7"
        assert "HTTP 500" in failed[0]["reason"] and failed[0]["attempts"] == 2
        assert len(records(out)) == 9
        assert run_cli("generate", str(recipe), "--out", str(out)).returncode == 0
    assert len(records(out)) == 10


def test_refusals_are_dropped_and_duplicate_prompts_are_never_paid_for(tmp_path: Path) -> None:
    with fault_server(tmp_path) as s:
        p = tmp_path / "p.txt"
        p.write_text("Tell me a joke\ntell me  a JOKE\nI'm sorry, but as an AI language model\n"
                     "Name three primes\n")
        recipe = write_recipe(tmp_path / "r.toml", teacher_recipe(s.base_url, p))
        assert run_cli("generate", str(recipe), "--out", str(tmp_path / "out")).returncode == 0
        assert sorted(r["user"] for r in s.requests()) == [
            "I'm sorry, but as an AI language model", "Name three primes", "Tell me a joke"]
    assert sorted(r.messages[0].content for r in records(tmp_path / "out")) == [
        "Name three primes", "Tell me a joke"]
    failed = (tmp_path / "out" / "failed.jsonl").read_text()
    assert "filtered: refusal" in failed


def test_bad_input_is_one_clear_line_and_nothing_written_is_lost(tmp_path: Path) -> None:
    with fault_server(tmp_path) as s:
        prompts = write_prompts(tmp_path / "p.jsonl", 5)
        out = tmp_path / "out"
        good = write_recipe(tmp_path / "good.toml", teacher_recipe(s.base_url, prompts))
        assert run_cli("generate", str(good), "--out", str(out)).returncode == 0
        before = (out / "train.jsonl").read_bytes()

        broken = tmp_path / "broken.jsonl"
        broken.write_text('{"prompt": "fine"}\n{"prompt": "oops\n')
        res = run_cli("generate", write_recipe(tmp_path / "b.toml", teacher_recipe(s.base_url,
                                                                                   broken)),
                      "--out", str(out))
        assert_one_line_error(res, "broken.jsonl:2", "not valid JSON")

        res = run_cli("generate", write_recipe(
            tmp_path / "k.toml", teacher_recipe(s.base_url, prompts),
            {"generate.teacher.api_key_env": "SEED_TEST_MISSING_KEY"}), "--out", str(out))
        assert_one_line_error(res, "SEED_TEST_MISSING_KEY is not set")

        res = run_cli("generate", write_recipe(tmp_path / "m.toml", teacher_recipe(
            s.base_url, prompts, model="gpt-nonexistent")), "--out", str(out))
        assert_one_line_error(res, "HTTP 404", "gpt-nonexistent")

    res = run_cli("generate", write_recipe(tmp_path / "u.toml", teacher_recipe(
        "http://127.0.0.1:9/v1", prompts)), "--out", str(out))
    assert_one_line_error(res, "cannot reach the teacher at http://127.0.0.1:9/v1")
    assert (out / "train.jsonl").read_bytes() == before


def test_the_api_key_appears_in_no_file_and_no_log_line(tmp_path: Path, monkeypatch,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    key = "sk-SEEDSECRET-7f3a9c1e5b"
    monkeypatch.setenv("SEED_TEST_KEY", key)
    with fault_server(tmp_path / "srv", key=key) if (tmp_path / "srv").mkdir() is None else None \
            as s:
        prompts = write_prompts(tmp_path / "p.jsonl", 12)
        s.faults(["500"] * 6, match="question 4")
        s.faults(["429:0.01"], match="question 5")
        recipe = write_recipe(tmp_path / "r.toml", teacher_recipe(s.base_url, prompts),
                              {**LIMITS, "generate.teacher.api_key_env": "SEED_TEST_KEY"})
        res = run_cli("generate", str(recipe), "--out", str(tmp_path / "out"),
                      env=cli_env(SEED_TEST_KEY=key))
        assert res.returncode == 0 and "failures: 1" in res.stdout
        caplog.set_level(logging.DEBUG)
        r, _ = load_recipe(recipe)
        console = Console(record=True, width=200)
        generate_from_teacher(r.generate, r.seed, tmp_path / "out2", console=console)
        bad = run_cli("generate", str(recipe), "--out", str(tmp_path / "out3"),
                      env=cli_env(SEED_TEST_KEY="sk-WRONG-but-also-secret"))
        assert bad.returncode == 2 and "Incorrect API key" in bad.stderr
    assert len(records(tmp_path / "out")) == 11 and len(records(tmp_path / "out2")) == 11
    written = [p for p in tmp_path.rglob("*") if p.is_file() and "srv" not in p.parts]
    assert any(p.name == "cache.sqlite" for p in written)
    for p in written:
        data = p.read_bytes()
        assert key.encode() not in data and b"SEEDSECRET" not in data, p
        assert b"sk-WRONG" not in data, p
    for text in (res.stdout, res.stderr, bad.stdout, bad.stderr, console.export_text(),
                 caplog.text, *(rec.getMessage() for rec in caplog.records)):
        assert "SEEDSECRET" not in text and "sk-WRONG" not in text
    assert caplog.records  # httpx did log the requests, without the key


def test_the_example_recipe_loads_and_asks_for_its_key(tmp_path: Path) -> None:
    recipe = Path(__file__).resolve().parents[1] / "recipes" / "openai_teacher.toml"
    r, _ = load_recipe(recipe)
    assert (r.generate.teacher.model, r.generate.max_cost) == ("gpt-4o-mini", 5.0)
    prompts = write_prompts(tmp_path / "p.jsonl", 2)
    res = run_cli("generate", str(recipe), "--prompts", str(prompts), "--out", str(tmp_path / "o"),
                  env=cli_env(OPENAI_API_KEY=""))
    assert_one_line_error(res, "OPENAI_API_KEY is not set")
    assert not (tmp_path / "o").exists()
