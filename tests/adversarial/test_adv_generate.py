"""Money fails closed: a teacher that drops or garbles `usage` is still charged, and the caps bind.

`seed generate` against the fault server, whose `/_control/usage` mode sets how every answer reports
its token counts: in process where the figures are the point, as a subprocess where the exit code
and stderr are. Each prompt is 11 bytes and each answer `echo: <prompt>`, so what Seed charges when
it counts for itself (seed.generate.budget: UTF-8 bytes plus the template's tokens) is known here.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.console import Console

from helpers.cli import assert_one_line_error, run_cli
from helpers.recipes import teacher_recipe, with_overrides, write_recipe
from helpers.servers import FaultServer, fault_server
from seed.endpoints.openai import OpenAIEndpoint
from seed.generate.budget import TEMPLATE_TOKENS, Budget
from seed.generate.engine import Limits, Request, run_sync
from seed.generate.teacher import generate_from_teacher
from seed.recipe import GenerateConfig
from seed.records import Record, read_records

PRICE = 1000.0  # dollars per million tokens, in and out: a token costs $0.001
SLOTS = 4  # requests in flight
PROMPTS = [f"question {i}" for i in range(10, 50)]  # 40 prompts of 11 bytes
# One request as Seed counts it: the prompt's bytes and the answer's, each in a template.
ESTIMATED = (11 + TEMPLATE_TOKENS) + (len("echo: question 10") + TEMPLATE_TOKENS)
WORDS = 2 + 3  # one request as the fault server counts it (words in, words out)
FAST = {"limits": {"concurrency": SLOTS, "max_attempts": 3, "timeout": 10, "backoff_base": 0.01}}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultServer]:
    with fault_server(tmp_path_factory.mktemp("teacher")) as s:
        yield s


def usage_mode(server: FaultServer, mode: str) -> None:
    httpx.post(server.base_url.removesuffix("/v1") + "/_control/usage",
               json={"mode": mode}).raise_for_status()


def recipe(server: FaultServer, tmp_path: Path, **generate: Any) -> dict[str, Any]:
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(p + "\n" for p in PROMPTS))
    return with_overrides(teacher_recipe(server.base_url, prompts), {
        "generate.prices": {"fault-model": [PRICE, PRICE]},
        **{f"generate.{k}": v for k, v in {**FAST, **generate}.items()}})


def generate(server: FaultServer, tmp_path: Path, mode: str, **caps: Any
             ) -> tuple[dict[str, Any], list[Record]]:
    """One in-process `seed generate` with the teacher reporting usage as `mode`."""
    usage_mode(server, mode)
    config = GenerateConfig.model_validate(recipe(server, tmp_path, **caps)["generate"])
    out = tmp_path / "out"
    info = generate_from_teacher(config, 7, out, console=Console(file=io.StringIO()))
    assert json.loads((out / "summary.json").read_text()) == info
    return info, list(read_records(out / "train.jsonl"))


def requests_to_cross(cap: float, per_request: float) -> int:
    """The paid request whose cost first reaches `cap`."""
    return math.ceil(cap / per_request)


@pytest.mark.parametrize("mode", ["omit", "null", "list", "negative", "zero", "junk",
                                  "total_only"])
def test_a_teacher_without_usable_usage_is_charged_seeds_count_and_stopped_at_the_cap(
        server: FaultServer, tmp_path: Path, mode: str) -> None:
    per_request = ESTIMATED * PRICE / 1e6
    cap = 9.5 * per_request
    info, records = generate(server, tmp_path, mode, max_cost=cap)
    assert info["stopped"].startswith("cost cap reached")
    crossing = requests_to_cross(cap, per_request)
    # The request that crosses the cap finishes; so do those already in the other slots.
    assert crossing <= info["requests_paid"] <= crossing + SLOTS - 1
    assert info["cost"] == pytest.approx(info["requests_paid"] * per_request) and info["cost"] > 0
    assert info["usage_estimated_requests"] == info["requests_paid"] == len(records)
    assert all(r.provenance.teacher.usage_estimated is True for r in records)


@pytest.mark.parametrize("mode", ["strings", "floats"])
def test_counts_sent_as_strings_or_floats_are_read_as_the_counts_they_are(
        server: FaultServer, tmp_path: Path, mode: str) -> None:
    per_request = WORDS * PRICE / 1e6
    info, records = generate(server, tmp_path, mode, max_cost=9.5 * per_request)
    crossing = requests_to_cross(9.5 * per_request, per_request)
    assert crossing <= info["requests_paid"] <= crossing + SLOTS - 1
    assert info["cost"] == pytest.approx(info["requests_paid"] * per_request)
    assert info["usage_estimated_requests"] == 0
    assert all(r.provenance.teacher.usage_estimated is None for r in records)


def test_the_token_cap_binds_on_seeds_own_count(server: FaultServer, tmp_path: Path) -> None:
    info, records = generate(server, tmp_path, "omit", max_tokens=int(9.5 * ESTIMATED))
    assert info["stopped"].startswith("token cap reached")
    crossing = requests_to_cross(9.5 * ESTIMATED, ESTIMATED)
    assert crossing <= info["requests_paid"] == len(records) <= crossing + SLOTS - 1
    assert info["prompt_tokens"] + info["completion_tokens"] == info["requests_paid"] * ESTIMATED


def test_seed_generate_says_once_that_the_counts_are_upper_bounds(server: FaultServer,
                                                                  tmp_path: Path) -> None:
    usage_mode(server, "junk")
    path = write_recipe(tmp_path / "r.toml", recipe(server, tmp_path))
    proc = run_cli("generate", path, "--out", tmp_path / "out", "--max-cost", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("sent no usable token counts") == 1, proc.stderr
    assert "an upper bound" in proc.stderr
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["cost"] == pytest.approx(summary["requests_paid"] * ESTIMATED * PRICE / 1e6)
    assert "cost cap reached" in proc.stdout and "upper bound" in proc.stdout


def test_a_body_that_is_not_a_chat_completion_is_retried_and_bad_text_is_kept_readable(
        server: FaultServer, tmp_path: Path) -> None:
    server.faults(["garbled"], match="question 12")
    server.faults(["surrogate"], match="question 13")
    info, records = generate(server, tmp_path, "words")
    assert (len(records), info["failed"], info["retries"]) == (len(PROMPTS), 0, 1)
    answers = {r.messages[0].content: r.messages[1].content for r in records}
    assert answers["question 12"] == "echo: question 12"
    assert answers["question 13"] == "echo: question 13 \ufffd"  # the lone half replaced


def test_a_corrupt_cache_is_named_and_left_as_it_is(server: FaultServer, tmp_path: Path) -> None:
    usage_mode(server, "words")
    out = tmp_path / "out"
    out.mkdir()
    (out / "cache.sqlite").write_bytes(b"these were paid answers " * 200)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    asked = len(server.requests())
    proc = run_cli("generate", write_recipe(tmp_path / "r.toml", recipe(server, tmp_path)),
                   "--out", out)
    assert_one_line_error(proc, "cache.sqlite", "unreadable", "move it away")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert len(server.requests()) == asked  # nothing paid for


def test_an_answer_that_fails_its_schema_is_still_charged(server: FaultServer) -> None:
    usage_mode(server, "words")
    server.faults(["badjson"], match="schema please")
    budget = Budget("fault-model", {"fault-model": (PRICE, PRICE)})
    schema = {"type": "object", "properties": {"answer": {"type": "string"}},
              "required": ["answer"]}
    stats = run_sync([Request("k", [{"role": "user", "content": "schema please"}],
                              {"response_schema": schema})],
                     OpenAIEndpoint(server.base_url, "fault-model"),
                     Limits(concurrency=1, backoff_base=0.01), budget=budget)
    assert (stats.paid, stats.retries) == (1, 1)
    # Both answers were billed: 2 prompt words each; `{"x": 1}` is 2 words, the good one 4.
    assert (budget.prompt_tokens, budget.completion_tokens) == (2 + 2, 2 + 4)
