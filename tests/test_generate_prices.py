"""The dated price table, cached and batch prices, recipe overrides and the price warnings."""

from __future__ import annotations

import datetime
import tomllib
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI

from helpers.cli import assert_one_line_error, run_cli
from helpers.recipes import teacher_recipe, write_prompts, write_recipe
from helpers.servers import fault_server
from helpers.thread_server import app_in_thread
from seed.endpoints.openai import OpenAIEndpoint
from seed.errors import UserError
from seed.generate.budget import (
    STALE_DAYS,
    Budget,
    Price,
    billed_usage,
    parse_table,
    price_for,
    price_table,
    price_warnings,
)
from seed.generate.engine import Limits, Request, run_sync
from seed.recipe import load_recipe

MSGS = [{"role": "user", "content": "hi"}]


def _rows() -> dict[str, dict[str, Any]]:
    text = files("seed.generate").joinpath("prices.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)["models"]


def test_every_row_has_a_source_and_sane_prices() -> None:
    table = price_table()
    assert isinstance(table.updated, datetime.date)
    rows = _rows()
    assert len(rows) == len(table.prices) >= 20
    for model, row in rows.items():
        assert row["source"].startswith("https://"), model
        assert "checked" in row or "via" in row, model  # read on a day, or second-hand
        p = table.prices[model]
        assert min(p.input, p.output, p.cached_input, p.cache_write) >= 0, model
        assert p.batch_input <= p.input and p.batch_output <= p.output, model
        assert p.cached_input <= p.input, model
    # the families the issue names are all priced, the shut-down ones are not
    for model in ("gpt-5", "gpt-5-mini", "gpt-4.1", "o3", "o4-mini", "claude-opus-4-5",
                  "claude-sonnet-4-5", "claude-haiku-4-5", "gemini-2.5-pro", "gemini-2.5-flash",
                  "gemini-2.5-flash-lite"):
        assert model in table.prices, model
    for gone in ("claude-3-5-sonnet", "claude-opus-4-1", "claude-opus-4"):
        assert gone not in table.prices


def test_missing_fields_default_to_input_and_half_price_batch() -> None:
    p = price_for("claude-haiku-4-5-20251001")
    assert p == Price(input=1.0, output=5.0, cached_input=0.10, cache_write=1.25,
                      batch_input=0.5, batch_output=2.5)
    o3 = price_for("o3")
    assert o3 is not None and o3.cached_input == o3.input == 2.0  # not confirmed: no discount


def test_exact_match_then_longest_prefix() -> None:
    def pair(model: str) -> tuple[float, float]:
        p = price_for(model)
        assert p is not None, model
        return p.input, p.output

    assert pair("gpt-4.1-mini-2025-04-14") == (0.40, 1.60)  # not gpt-4.1's (2.00, 8.00)
    assert pair("gpt-4.1-2025-04-14") == (2.00, 8.00)
    assert pair("claude-sonnet-4-20250514") == (3.00, 15.00)
    assert pair("claude-opus-4-5-20251101") == (5.00, 25.00)
    assert pair("gemini-2.5-flash-lite") == (0.10, 0.40)  # not gemini-2.5-flash's
    assert price_for("claude-opus-4-1-20250805") is None  # retired, and no shorter row matches
    assert price_for("my-model") is None


def test_overrides_as_a_pair_or_a_table() -> None:
    assert price_for("gpt-5", {"gpt-5": (1.0, 2.0)}) == Price(1.0, 2.0, 1.0, 1.0, 0.5, 1.0)
    table = {"input": 4.0, "output": 8.0, "cached_input": 0.4, "batch_input": 3.0}
    assert price_for("mine-v2", {"mine": table}) == Price(4.0, 8.0, 0.4, 4.0, 3.0, 4.0)
    with pytest.raises(UserError, match="cached_input"):
        price_for("x", {"x": {"input": 1.0, "output": 1.0, "cached_input": -1.0}})
    with pytest.raises(UserError, match=r"\[input, output\]"):
        price_for("x", {"x": {"output": 1.0}})


def test_recipe_accepts_both_shapes_and_refuses_negative_prices(tmp_path: Path) -> None:
    recipe = teacher_recipe("http://127.0.0.1:9/v1")
    path = write_recipe(tmp_path / "r.toml", recipe, {"generate.prices": {
        "a": [1.0, 2.0], "b": {"input": 3.0, "output": 4.0, "batch_output": 1.0}}})
    gen = load_recipe(path)[0].generate
    assert price_for("a", gen.prices) == Price(1.0, 2.0, 1.0, 1.0, 0.5, 1.0)
    assert price_for("b", gen.prices) == Price(3.0, 4.0, 3.0, 3.0, 1.5, 1.0)
    for bad in ([1.0, -2.0], {"input": 1.0, "output": 1.0, "batch_input": -0.5},
                {"input": 1.0, "output": 1.0, "cahced_input": 0.1}):
        path = write_recipe(tmp_path / "bad.toml", recipe, {"generate.prices": {"m": bad}})
        with pytest.raises(UserError):
            load_recipe(path)


def test_cached_tokens_and_cache_writes_are_read_and_clamped() -> None:
    usage, est = billed_usage({"prompt_tokens": 100, "completion_tokens": 10,
                               "prompt_tokens_details": {"cached_tokens": 60}}, MSGS, ["ok"])
    assert not est and usage == {"prompt_tokens": 100, "completion_tokens": 10,
                                 "total_tokens": 110, "cached_tokens": 60}
    usage, _ = billed_usage({"prompt_tokens": 100, "completion_tokens": 10, "cached_tokens": 70,
                             "cache_write_tokens": 50}, MSGS, ["ok"])
    assert (usage["cached_tokens"], usage["cache_write_tokens"]) == (70, 30)  # <= prompt
    # no prompt count from the teacher: Seed's estimate gets no discount it cannot confirm
    usage, est = billed_usage({"completion_tokens": 10, "cached_tokens": 5}, MSGS, ["ok"])
    assert est and "cached_tokens" not in usage
    usage, _ = billed_usage({"prompt_tokens": 9, "completion_tokens": 1,
                             "prompt_tokens_details": {"cached_tokens": "junk"}}, MSGS, ["ok"])
    assert "cached_tokens" not in usage


def test_budget_charges_cache_reads_writes_and_batch_prices() -> None:
    prices = {"m": {"input": 10.0, "output": 20.0, "cached_input": 1.0, "cache_write": 12.5}}
    usage = {"prompt_tokens": 1_000_000, "completion_tokens": 500_000,
             "cached_tokens": 400_000, "cache_write_tokens": 100_000}
    online = Budget("m", prices)
    # 500k uncached at $10, 400k cached at $1, 100k written at $12.5, 500k out at $20
    assert online.cost_of(usage) == pytest.approx(5.0 + 0.4 + 1.25 + 10.0)
    online.add(usage)
    online.add(usage)
    assert online.cost == pytest.approx(2 * 16.65)
    batch = Budget("m", prices, batch=True)  # half price, the cache multipliers on top
    assert batch.cost_of(usage) == pytest.approx(2.5 + 0.2 + 0.625 + 5.0)
    assert Budget("unpriced").cost_of(usage) is None
    capped = Budget("m", prices, max_cost=20.0, batch=True)
    capped.add(usage)
    capped.add(usage)
    assert capped.exhausted() is None  # $16.65 at batch prices: under the cap
    capped.add(usage)
    assert capped.exhausted() is not None


def test_a_table_row_without_a_source_or_with_a_bad_date_is_refused() -> None:
    good = {"input": 1.0, "output": 2.0, "source": "https://example.com/pricing"}
    assert parse_table({"updated": datetime.date(2026, 1, 1), "models": {"m": good}}).prices
    for data in ({"updated": "2026-01-01", "models": {"m": good}},
                 {"updated": datetime.date(2026, 1, 1),
                  "models": {"m": {"input": 1.0, "output": 2.0}}},
                 {"updated": datetime.date(2026, 1, 1),
                  "models": {"m": {**good, "output": -1.0}}}):
        with pytest.raises(UserError):
            parse_table(data)


def test_price_warnings_unknown_model_stale_table_and_recipe_silence() -> None:
    updated = price_table().updated
    fresh = updated + datetime.timedelta(days=STALE_DAYS)
    stale = updated + datetime.timedelta(days=STALE_DAYS + 1)
    assert price_warnings("gpt-5-mini", today=fresh) == []
    (old,) = price_warnings("gpt-5-mini", today=stale)
    assert f"{STALE_DAYS + 1} days old" in old and "[generate.prices]" in old
    (unknown,) = price_warnings("fault-model", today=fresh)
    assert "'fault-model'" in unknown and "[generate.prices]" in unknown
    assert price_warnings("fault-model", {"fault-model": (1.0, 1.0)}, today=stale) == []
    assert price_warnings("gpt-5-mini", {"gpt-5-mini": (1.0, 1.0)}, today=stale) == []


def test_seed_generate_warns_once_about_an_unpriced_teacher(tmp_path: Path) -> None:
    with fault_server(tmp_path) as s:
        prompts = write_prompts(tmp_path / "p.jsonl", 3)
        recipe = write_recipe(tmp_path / "r.toml", teacher_recipe(s.base_url, prompts))
        res = run_cli("generate", str(recipe), "--out", str(tmp_path / "out"))
        assert res.returncode == 0, res.stderr
        assert res.stderr.count("no price for the teacher's model 'fault-model'") == 1
        priced = write_recipe(tmp_path / "r2.toml", teacher_recipe(s.base_url, prompts),
                              {"generate.prices": {"fault-model": [1.0, 1.0]}})
        res = run_cli("generate", str(priced), "--out", str(tmp_path / "out2"))
        assert res.returncode == 0, res.stderr
        assert "no price" not in res.stderr
        bad = write_recipe(tmp_path / "r3.toml", teacher_recipe(s.base_url, prompts),
                           {"generate.prices": {"fault-model": {"input": -1.0, "output": 1.0}}})
        assert_one_line_error(run_cli("generate", str(bad), "--out", str(tmp_path / "o3")),
                              "prices")


def test_an_openai_teachers_cached_tokens_reach_the_budget() -> None:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat() -> dict[str, Any]:
        return {"id": "c", "model": "cached-model", "choices": [
            {"index": 0, "finish_reason": "stop",
             "message": {"role": "assistant", "content": "fine"}}],
            "usage": {"prompt_tokens": 2000, "completion_tokens": 100, "total_tokens": 2100,
                      "prompt_tokens_details": {"cached_tokens": 1536, "audio_tokens": 0}}}

    budget = Budget("cached-model", {"cached-model": {"input": 1.0, "output": 4.0,
                                                      "cached_input": 0.1}})
    with app_in_thread(app) as base:
        reqs = [Request(f"q{i}", [{"role": "user", "content": f"q{i}"}], {}) for i in range(3)]
        run_sync(reqs, OpenAIEndpoint(base, "cached-model"), Limits(concurrency=2),
                 budget=budget)
    assert (budget.prompt_tokens, budget.cached_tokens) == (6000, 3 * 1536)
    # per request: 464 at $1, 1536 at $0.10, 100 at $4, per million
    assert budget.cost == pytest.approx(3 * (464 * 1.0 + 1536 * 0.1 + 100 * 4.0) / 1e6)
