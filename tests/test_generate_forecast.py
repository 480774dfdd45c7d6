"""`seed generate --forecast`: its figures against the full run, what it pays for, what it writes.

The teacher (helpers.priced_teacher) answers each prompt the same way every time (a hash of its
text decides a refusal, 15% of prompts, or an answer of 5-64 words; usage in words), so a sample's
figures and the full run's are both fixed, and the comparison below is deterministic.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from helpers.cli import assert_one_line_error, cli_env, run_cli
from helpers.priced_teacher import REFUSAL, answer_for, priced_teacher
from helpers.recipes import teacher_recipe, write_recipe
from helpers.thread_server import app_in_thread
from seed.errors import UserError
from seed.generate.forecast import forecast, sample_indices, wilson
from seed.generate.teacher import generate_from_teacher
from seed.recipe import GenerateConfig, load_recipe

PRICE = {"input": 2.0, "output": 8.0, "cached_input": 0.5}  # $/1M tokens


def write_prompts(path: Path, n: int, duplicates: int) -> list[str]:
    """`n` distinct prompts of 3-20 words, then the first `duplicates` of them again."""
    texts = [f"prompt {i}: " + " ".join(["tell me about harbors"] * (1 + i % 5))
             for i in range(n)]
    texts += texts[:duplicates]
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    return texts


def config(tmp: Path, base: str, prompts: Path, **extra: Any) -> tuple[GenerateConfig, int]:
    recipe = write_recipe(tmp / "r.toml", teacher_recipe(base, prompts, model="priced-model"), {
        "generate.prices": {"priced-model": PRICE}, "generate.limits.concurrency": 4,
        "generate.limits.max_attempts": 2, **extra})
    r, _ = load_recipe(recipe)
    return r.generate, r.seed


def test_forecast_predicts_the_full_runs_cost_and_yield_and_is_not_paid_twice(
        tmp_path: Path) -> None:
    app = priced_teacher(refusal_share=0.15, system_words=30)
    texts = write_prompts(tmp_path / "p.jsonl", 240, duplicates=40)
    distinct = list(dict.fromkeys(texts))
    out = tmp_path / "out"
    with app_in_thread(app) as base:
        cfg, seed = config(tmp_path, base, tmp_path / "p.jsonl")
        console = Console(record=True, width=200)
        fc = forecast(cfg, seed, out, sample=60, console=console)
        assert not (out / "train.jsonl").exists() and not (out / "failed.jsonl").exists()
        assert json.loads((out / "forecast.json").read_text()) == json.loads(json.dumps(fc))
        assert sum(app.state.sent.values()) == 60  # the sample, nothing beyond it
        full = generate_from_teacher(cfg, seed, out, console=Console(width=200))
    # the filters ran over the whole stream: the dedup figures are exact, not estimated
    assert fc["prompts_seen"] == 280 and fc["prompts_dropped"] == {"exact duplicate": 40}
    assert fc["prompts_to_send"] == 240 and fc["sample"] == 60
    # the full run found the sample in the cache: every prompt was asked exactly once
    assert sorted(app.state.sent) == sorted(distinct) and set(app.state.sent.values()) == {1}
    assert full["answers_from_cache"] == 60 and full["requests_paid"] == 180
    assert full["cached_tokens"] == 180 * 30  # the teacher's cached prefix, read into the budget
    # what the job really cost: the forecast's sample plus the full run's requests
    spent = fc["sample_cost"] + full["cost"]
    kept = full["records_written"]
    refused = sum(answer_for(t, 0.15) == REFUSAL for t in distinct)
    assert kept == 240 - refused and full["filtered_answers"] == {"refusal": refused}
    # Tolerance: with 60 of 240 prompts, the standard error of the mean cost per request is
    # about 6% of it (its answers vary 5-64 words; times the finite-population correction 0.87),
    # and of the kept share about 4%; 15% is over two and a half standard errors, and the
    # reported 95% intervals must hold the truth too.
    assert spent == pytest.approx(fc["cost_online"], rel=0.15)
    lo, hi = fc["cost_online_interval"]
    assert lo <= spent <= hi
    assert kept == pytest.approx(fc["records_expected"], rel=0.15)
    lo, hi = fc["records_interval"]
    assert lo <= kept <= hi
    assert fc["answers_dropped"].get("refusal", 0) > 0
    # batch prices: half of online, the cached prefix at the cached price in both
    assert fc["cost_batch"] == pytest.approx(fc["cost_online"] / 2)
    assert fc["mean_prompt_tokens"] > 30 and fc["mean_completion_tokens"] > 5
    text = console.export_text()
    assert "cost online: $" in text and "through a batch API" in text and "records kept" in text


def test_a_second_forecast_pays_nothing_and_reports_the_same(tmp_path: Path) -> None:
    app = priced_teacher(refusal_share=0.2)
    write_prompts(tmp_path / "p.jsonl", 50, duplicates=0)
    with app_in_thread(app) as base:
        cfg, seed = config(tmp_path, base, tmp_path / "p.jsonl")
        first = forecast(cfg, seed, tmp_path / "out", sample=10, console=Console())
        second = forecast(cfg, seed, tmp_path / "out", sample=10, console=Console())
    assert sum(app.state.sent.values()) == 10
    assert (first["sample_paid"], second["sample_paid"], second["sample_from_cache"]) == (10, 0, 10)
    for key in ("cost_online", "records_expected", "answers_kept", "mean_completion_tokens"):
        assert first[key] == second[key], key


def test_too_few_prompts_for_num_records_is_said(tmp_path: Path) -> None:
    app = priced_teacher(refusal_share=0.15)
    write_prompts(tmp_path / "p.jsonl", 30, duplicates=10)
    with app_in_thread(app) as base:
        cfg, seed = config(tmp_path, base, tmp_path / "p.jsonl", **{"generate.num_records": 500,
                           "generate.limits.requests_per_minute": 60})
        console = Console(record=True, width=300)
        fc = forecast(cfg, seed, tmp_path / "out", sample=8, console=console)
    assert fc["prompts_surviving"] == 30 and not fc["enough_prompts"]
    assert "not enough prompts" in console.export_text()
    # 22 prompts still to send at 60 requests a minute (the binding limit: the teacher is fast)
    assert fc["binding_limit"] == "requests_per_minute"
    assert fc["wall_time_s"] == pytest.approx(22.0)


def test_num_records_limits_the_prompts_planned_and_sets_the_target(tmp_path: Path) -> None:
    app = priced_teacher(refusal_share=0.0, latency=0.2)
    write_prompts(tmp_path / "p.jsonl", 40, duplicates=0)
    with app_in_thread(app) as base:
        cfg, seed = config(tmp_path, base, tmp_path / "p.jsonl", **{"generate.num_records": 20})
        fc = forecast(cfg, seed, tmp_path / "out", sample=5, console=Console())
    assert (fc["prompts_planned"], fc["prompts_to_send"]) == (20, 20)
    assert fc["kept_share"] == 1.0 and fc["prompts_needed"] == 20 and fc["enough_prompts"]
    assert fc["spend_needed"] == pytest.approx(fc["cost_per_request"] * 20)
    # no rate limits: 4 requests in flight, each as long as the sample's took, bind the time
    assert fc["binding_limit"] == "concurrency" and fc["mean_latency_s"] >= 0.2
    assert fc["wall_time_s"] == pytest.approx(15 * fc["mean_latency_s"] / 4)


def test_the_sample_is_spread_over_the_stream_and_fixed_by_the_seed() -> None:
    picked = sample_indices(1000, 10, seed=7)
    assert [i // 100 for i in picked] == list(range(10))  # one from each tenth
    assert picked == sample_indices(1000, 10, seed=7) != sample_indices(1000, 10, seed=8)
    assert sample_indices(5, 10, seed=1) == [0, 1, 2, 3, 4]
    lo, hi = wilson(85, 100)
    assert 0.76 < lo < 0.85 < hi < 0.91
    assert wilson(85, 100, fpc=0.0) == (0.85, 0.85)  # the whole stream: no uncertainty left


def test_bad_forecast_flags_are_one_line_errors(tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    write_prompts(prompts, 3, duplicates=0)
    recipe = write_recipe(tmp_path / "r.toml", teacher_recipe("http://127.0.0.1:9/v1", prompts))
    for flags, needle in ((["--forecast", "--forecast-sample", "0"], "--forecast-sample 0"),
                          (["--forecast-sample", "5"], "goes with --forecast")):
        res = run_cli("generate", str(recipe), "--out", str(tmp_path / "out"), *flags,
                      env=cli_env(OPENAI_API_KEY="sk-test"))
        assert_one_line_error(res, needle)
    tasks = write_recipe(tmp_path / "t.toml", {"name": "t", "generate": {
        "teacher": {"kind": "tasks"}, "forecast": True}})
    with pytest.raises(UserError, match="forecast"):
        load_recipe(tasks)
    cfg, seed = load_recipe(recipe)[0].generate, 7
    with pytest.raises(UserError, match="turns = 1"):
        forecast(cfg.model_copy(update={"turns": 2}), seed, tmp_path / "o", 5)
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def test_the_key_is_written_nowhere_by_a_forecast(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    key = "sk-FORECASTSECRET-1234567890"
    monkeypatch.setenv("SEED_FORECAST_KEY", key)
    write_prompts(tmp_path / "p.jsonl", 12, duplicates=2)
    with app_in_thread(priced_teacher()) as base:
        recipe = write_recipe(tmp_path / "r.toml", teacher_recipe(
            base, tmp_path / "p.jsonl", model="priced-model"), {
            "generate.teacher.api_key_env": "SEED_FORECAST_KEY",
            "generate.prices": {"priced-model": [1.0, 1.0]}, "generate.num_records": 5})
        res = run_cli("generate", str(recipe), "--out", str(tmp_path / "out"), "--forecast",
                      "--forecast-sample", "4", env=cli_env(SEED_FORECAST_KEY=key, COLUMNS="200"))
    assert res.returncode == 0, res.stderr
    assert "cost online: $" in res.stdout and "to keep 5 records" in res.stdout
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert {p.name for p in written} >= {"forecast.json", "cache.sqlite"}
    for p in written:
        assert b"FORECASTSECRET" not in p.read_bytes(), p
    assert "FORECASTSECRET" not in res.stdout + res.stderr


def test_seed_runs_generate_stage_prints_the_forecast_first_when_the_recipe_asks(
        tmp_path: Path) -> None:
    from seed.pipeline import preflight

    app = priced_teacher(refusal_share=0.15)
    texts = write_prompts(tmp_path / "p.jsonl", 30, duplicates=5)
    with app_in_thread(app) as base:
        recipe = write_recipe(tmp_path / "r.toml", teacher_recipe(
            base, tmp_path / "p.jsonl", model="priced-model"), {
            "generate.prices": {"priced-model": PRICE}, "generate.forecast": True,
            "generate.forecast_sample": 6})
        r, _ = load_recipe(recipe)
        console = Console(record=True, width=200)
        info = preflight(r, tmp_path / "data", console)()
    text = console.export_text()
    assert text.index("cost online") < text.index("requests/s")  # the forecast, then the run
    assert json.loads((tmp_path / "data" / "forecast.json").read_text())["sample"] == 6
    assert set(app.state.sent.values()) == {1} and len(app.state.sent) == 30
    assert info["answers_from_cache"] == 6
    assert info["train_records"] == sum(answer_for(t, 0.15) != REFUSAL
                                        for t in dict.fromkeys(texts))


def test_answers_the_verifier_fails_are_counted_apart_from_refusals(tmp_path: Path) -> None:
    app = priced_teacher(refusal_share=0.3)
    texts = write_prompts(tmp_path / "p.jsonl", 20, duplicates=0)
    schema = {"type": "object", "properties": {"answer": {"type": "string"}},
              "required": ["answer"]}
    with app_in_thread(app) as base:
        cfg, seed = config(tmp_path, base, tmp_path / "p.jsonl", **{
            "generate.verify": {"kind": "json_schema", "json_schema": schema}})
        fc = forecast(cfg, seed, tmp_path / "out", sample=20, console=Console())
    refused = sum(answer_for(t, 0.3) == REFUSAL for t in texts)
    assert 0 < refused < 20  # the plain-text answers are no JSON: each one fails the schema
    assert fc["answers_dropped"] == {"refusal": refused}
    assert fc["answers_not_verified"] == 20 - refused and fc["answers_kept"] == 0
    assert fc["records_expected"] == 0 and not fc["enough_prompts"]
    assert fc["prompts_needed"] is None


def test_after_the_full_run_a_forecast_has_nothing_to_send(tmp_path: Path) -> None:
    app = priced_teacher(refusal_share=0.0)  # a refused prompt is tried again (free: cached)
    write_prompts(tmp_path / "p.jsonl", 10, duplicates=0)
    with app_in_thread(app) as base:
        cfg, seed = config(tmp_path, base, tmp_path / "p.jsonl")
        generate_from_teacher(cfg, seed, tmp_path / "out", console=Console())
        before = (tmp_path / "out" / "train.jsonl").read_bytes()
        console = Console(record=True, width=200)
        fc = forecast(cfg, seed, tmp_path / "out", sample=5, console=console)
    assert (fc["prompts_already_answered"], fc["prompts_to_send"], fc["sample"]) == (10, 0, 0)
    assert sum(app.state.sent.values()) == 10  # the forecast asked nothing
    assert (tmp_path / "out" / "train.jsonl").read_bytes() == before
    assert "nothing left to send" in console.export_text()
