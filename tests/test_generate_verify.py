"""Verified generation: an HTTP teacher that answers reasoning-gym prompts right only part of the
time; only verified answers are kept (all, the first, or DPO pairs), the yield is reported, pairs
train with mode = "dpo", and a rerun (after a kill -9 too) re-verifies from the cache for free.
The teacher's thinking trace argues for the opposite answer each time: only the content is graded.

Which samples the teacher gets right is a hash the test computes itself (helpers.task_teacher),
and every kept answer is also scored with reasoning-gym's own scorer here, independently of Seed.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import reasoning_gym
from rich.console import Console

from helpers.cli import start_cli
from helpers.recipes import SMALL, write_recipe
from helpers.task_teacher import TaskTeacher, corrupted, task_teacher
from helpers.training import metrics
from seed.errors import UserError
from seed.files import read_jsonl
from seed.generate.sources import task_prompts
from seed.generate.teacher import Generation, generate_from_teacher
from seed.generate.verify import extract_answer, grade
from seed.pipeline import run_recipe
from seed.policy.cards import write_dataset_card
from seed.policy.gate import Use, check_file
from seed.recipe import GenerateConfig, TrainConfig, VerifyConfig
from seed.records import Provenance, Record, read_records
from seed.train import train_student

ARITHMETIC = {"name": "basic_arithmetic",
              "config": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2,
                         "operators": ["+", "-"]}}
N, SAMPLES, WRONG, SEED = 30, 4, 0.5, 7


def _config(base_url: str, keep: str = "all_correct", **extra: Any) -> dict[str, Any]:
    return {"teacher": {"kind": "openai", "base_url": base_url, "model": "task-model"},
            "tasks": [ARITHMETIC], "num_records": N, "eval_prompts": 10, "samples": SAMPLES,
            "limits": {"concurrency": 4}, "verify": {"kind": "task", "keep": keep}, **extra}


def _generate(config: dict[str, Any], out: Path) -> dict[str, Any]:
    return generate_from_teacher(GenerateConfig.model_validate(config), SEED, out,
                                 Console(quiet=True))


@pytest.fixture(scope="module")
def prompts() -> dict[str, Record]:
    """The training prompts `_config` draws, by question, as records with their task entry."""
    _, drawn = task_prompts(GenerateConfig.model_validate(_config("http://unused/v1")), SEED)
    return {p.messages[-1]["content"]: Record.new(p.messages, Provenance(source=p.source), p.meta)
            for p in drawn}


@pytest.fixture(scope="module")
def teacher(prompts: dict[str, Record]) -> Iterator[TaskTeacher]:
    """The teacher, knowing the right answer of every training prompt of `_config`."""
    with task_teacher({q: r.meta["answer"] for q, r in prompts.items()}, wrong=WRONG) as server:
        yield server


@pytest.fixture(scope="module")
def all_correct(teacher: TaskTeacher, tmp_path_factory: pytest.TempPathFactory
                ) -> tuple[Path, dict[str, Any], int]:
    """One `keep = "all_correct"` run: its directory, summary and how many requests it sent."""
    out = tmp_path_factory.mktemp("all_correct")
    before = len(teacher.asked)
    info = _generate(_config(teacher.base_url), out)
    return out, info, len(teacher.asked) - before


def _right(teacher: TaskTeacher) -> set[tuple[str, int]]:
    return {(q, i) for q in teacher.answers for i in range(SAMPLES)
            if not corrupted(q, i, WRONG)}


def _rg_score(record: Record, reply: str) -> float:
    """reasoning-gym's own scorer on the reply's <answer> tag, without Seed's verifier."""
    src = record.provenance.source
    assert src is not None and src.kind == "tasks" and src.name == "basic_arithmetic"
    scorer = reasoning_gym.create_dataset(src.name, size=1, seed=src.seed, **src.config)
    match = re.fullmatch(r"<answer>(.*)</answer>", reply)
    return float(scorer.score_answer(match[1] if match else None, record.meta["entry"]))


def test_all_correct_keeps_exactly_the_answers_the_scorer_passes(
        teacher: TaskTeacher, prompts: dict[str, Record],
        all_correct: tuple[Path, dict[str, Any], int]) -> None:
    out, info, requests = all_correct
    records = list(read_records(out / "train.jsonl"))
    kept = {(r.messages[0].content, r.meta["sample"]) for r in records}
    right = _right(teacher)
    assert 0 < len(right) < N * SAMPLES
    assert kept == right
    assert requests == N  # one request per prompt, n = 4
    for r in records:
        assert _rg_score(r, r.messages[-1].content) == 1.0
        assert r.meta["verify"]["score"] == 1.0 and r.meta["task"] == "basic_arithmetic"
    for q, prompt in prompts.items():  # every dropped answer is one reasoning-gym's scorer fails
        for i in range(SAMPLES):
            if (q, i) not in right:
                assert _rg_score(prompt, teacher.answer(q, i)) < 1.0
    none_right = {q for q in teacher.answers if all((q, i) not in right for i in range(SAMPLES))}
    failed = {row["messages"][0]["content"]: row for _, row in read_jsonl(out / "failed.jsonl")}
    assert set(failed) == none_right
    assert all(f["verify"]["correct"] == 0 and "0 of 4" in f["reason"] for f in failed.values())
    v = info["verify"]
    assert (v["prompts"], v["samples"], v["correct"], v["records"]) == (
        N, N * SAMPLES, len(right), len(right))
    assert v["prompts_kept"] == N - len(none_right)
    assert v["families"]["basic_arithmetic"]["yield"] == pytest.approx(len(right) / (N * SAMPLES))
    assert json.loads((out / "summary.json").read_text())["verify"] == v
    held_out = {r.messages[0].content for r in read_records(out / "eval.jsonl")}
    assert len(held_out) == 10 and not held_out & set(teacher.answers)


def test_the_dataset_card_states_the_yield_per_family(
        all_correct: tuple[Path, dict[str, Any], int]) -> None:
    out, info, _ = all_correct
    card = write_dataset_card(out, check_file(out / "train.jsonl", Use()), name="verified")
    text = card.read_text()
    v = info["verify"]
    assert "## Verification" in text
    assert (f"basic_arithmetic: {v['correct']} of {N * SAMPLES} answers verified "
            f"({v['yield']:.1%}); {v['records']} records kept from {v['prompts_kept']} of "
            f"{N} prompts") in text


def test_first_correct_rechecks_the_cached_answers_without_a_request(
        teacher: TaskTeacher, all_correct: tuple[Path, dict[str, Any], int],
        tmp_path: Path) -> None:
    out = tmp_path / "first"
    out.mkdir()
    shutil.copy(all_correct[0] / "cache.sqlite", out / "cache.sqlite")
    before = len(teacher.asked)
    info = _generate(_config(teacher.base_url, "first_correct"), out)
    assert len(teacher.asked) == before  # every answer came from the cache
    assert info["answers_from_cache"] == N and info["requests_paid"] == 0
    right = _right(teacher)
    first = {q: min(i for i in range(SAMPLES) if (q, i) in right)
             for q in teacher.answers if any((q, i) in right for i in range(SAMPLES))}
    records = list(read_records(out / "train.jsonl"))
    assert {r.messages[0].content: r.meta["sample"] for r in records} == first
    assert len(records) == len(first)


def test_pairs_are_dpo_records_that_train(teacher: TaskTeacher,
                                          all_correct: tuple[Path, dict[str, Any], int],
                                          tmp_path: Path) -> None:
    out = tmp_path / "pairs"
    out.mkdir()
    shutil.copy(all_correct[0] / "cache.sqlite", out / "cache.sqlite")
    before = len(teacher.asked)
    info = _generate(_config(teacher.base_url, "pairs"), out)
    assert len(teacher.asked) == before
    right = _right(teacher)
    mixed = {q for q in teacher.answers
             if 0 < sum((q, i) in right for i in range(SAMPLES)) < SAMPLES}
    records = list(read_records(out / "train.jsonl"))
    assert {r.messages[0].content for r in records} == mixed and len(records) == len(mixed)
    for r in records:
        assert _rg_score(r, r.meta["chosen"]) == 1.0
        assert _rg_score(r, r.meta["rejected"]) < 1.0  # partial credit is not correct
        assert r.messages[-1].content == r.meta["chosen"]
    assert info["verify"]["records"] == len(mixed) and info["verify"]["keep"] == "pairs"
    config = TrainConfig.model_validate({**SMALL, "mode": "dpo", "max_steps": 3,
                                         "student": {"size": "nano"},
                                         "tokenizer": {"kind": "chars"}})
    summary = train_student(out / "train.jsonl", tmp_path / "dpo", config, seed=0)
    assert summary["steps"] == 3
    losses = [m["loss"] for m in metrics(tmp_path / "dpo")]
    assert losses[0] == pytest.approx(0.6931, abs=0.02)  # log 2: the policy starts as reference


def test_seed_run_evaluates_the_student_on_the_held_out_task_prompts(
        teacher: TaskTeacher, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.toml", {
        "name": "verified", "seed": SEED, "runs_dir": str(tmp_path / "runs"),
        "generate": _config(teacher.base_url, "first_correct"),
        "train": {**SMALL, "max_steps": 3, "seq_len": 128, "student": {"size": "nano"},
                  "tokenizer": {"kind": "chars"}},
        "eval": {"max_new_tokens": 8}, "policy": {"distribute": False}})
    run = run_recipe(recipe, Console(quiet=True))
    manifest = json.loads((run / "manifest.json").read_text())
    assert list(manifest["stages"]) == ["generate", "train", "eval", "report"]
    gen = manifest["stages"]["generate"]["info"]
    assert gen["eval_records"] == 10 and gen["verify"]["keep"] == "first_correct"
    assert json.loads((run / "eval" / "results.json").read_text())["n"] == 10
    assert f"teacher answers verified ({gen['verify']['correct']} of {N * SAMPLES})" in \
        (run / "report.html").read_text()


def test_math_answers_are_checked_by_value(teacher: TaskTeacher, tmp_path: Path) -> None:
    """Reference answers in the prompts file; the teacher writes them in another form."""
    refs = {"Half of one?": ("1/2", "0.5"), "Three quarters?": ("3/4", "0.75"),
            "Minus three halves?": ("-\\frac{3}{2}", "-1.5"), "Ten over four?": ("5/2", "2.5")}
    prompts = tmp_path / "math.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": q, "answer": ref}) + "\n"
                               for q, (ref, _) in refs.items()))
    old = teacher.answers, teacher.reply
    teacher.answers, teacher.reply = {q: said for q, (_, said) in refs.items()}, \
        "So the answer is \\boxed{{{}}}."
    try:
        info = _generate({"teacher": {"kind": "openai", "base_url": teacher.base_url,
                                      "model": "task-model"},
                          "prompts": [{"path": str(prompts)}], "samples": SAMPLES,
                          "verify": {"kind": "math", "keep": "all_correct"}}, tmp_path / "out")
    finally:
        teacher.answers, teacher.reply = old
    kept = {(r.messages[0].content, r.meta["sample"])
            for r in read_records(tmp_path / "out" / "train.jsonl")}
    right = {(q, i) for q in refs for i in range(SAMPLES) if not corrupted(q, i, WRONG)}
    assert kept == right and 0 < len(right) < len(refs) * SAMPLES
    assert info["verify"]["families"]["math.jsonl"]["correct"] == len(right)


def test_kill_9_mid_run_then_rerun_pays_for_nothing_twice(teacher: TaskTeacher,
                                                         tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.toml", {
        "name": "verify-kill", "seed": SEED,
        "generate": _config(teacher.base_url, limits={"concurrency": 2})})
    out = tmp_path / "out"
    teacher.latency = 0.1
    try:
        start = len(teacher.asked)
        proc = start_cli("generate", recipe, "--out", out, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE)
        deadline = time.monotonic() + 60
        while len(teacher.asked) < start + 8 and time.monotonic() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        first = teacher.asked[start:]
        assert 8 <= len(first) < N, "not killed mid-run"
        kept_before = {r.messages[0].content for r in read_records(out / "train.jsonl")} \
            if (out / "train.jsonl").exists() else set()
        teacher.latency = 0.0
        rerun = start_cli("generate", recipe, "--out", out, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
        stdout, stderr = rerun.communicate(timeout=120)
        assert rerun.returncode == 0, stderr
    finally:
        teacher.latency = 0.0
    second = teacher.asked[start + len(first):]
    assert not set(second) & kept_before
    # Only the answers still in flight at the kill (2 at a time) are asked for again.
    assert len(set(first) & set(second)) <= 2
    assert set(first) | set(second) == set(teacher.answers)
    kept = {(r.messages[0].content, r.meta["sample"]) for r in read_records(out / "train.jsonl")}
    assert kept == _right(teacher)
    summary = json.loads((out / "summary.json").read_text())["verify"]
    assert summary["correct"] == len(kept) and summary["prompts"] == N  # both runs counted
    assert (f"yield basic_arithmetic: {len(kept)} of {N * SAMPLES} answers verified"
            in " ".join(stdout.split()))


def test_extracting_and_grading_read_the_answer_not_the_thought() -> None:
    assert extract_answer("<think>maybe <answer>3</answer></think> <answer>4</answer>") == "4"
    assert extract_answer("so \\boxed{\\frac{1}{2}} done") == "\\frac{1}{2}"
    assert extract_answer("Work.\nAnswer: 12\n") == "12"
    assert extract_answer("  12 ") == "12"
    assert extract_answer("12", "boxed") is None
    math = VerifyConfig(kind="math")
    prompt = Record.new([{"role": "user", "content": "?"}], meta={"answer": "\\frac{1}{2}"})
    assert grade(math, prompt, "It is \\boxed{0.5}.") == 1.0
    assert grade(math, prompt, "<think>\\boxed{0.5}</think>It is \\boxed{0.6}.") == 0.0
    poly = Record.new([{"role": "user", "content": "?"}], meta={"answer": "x^2 + 1"})
    assert grade(math, poly, "Answer: $1 + x^2$") == 1.0
    assert grade(math, poly, "Answer: $1 + x^3$") == 0.0
    schema = VerifyConfig(kind="json_schema", json_schema={
        "type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]})
    assert grade(schema, prompt, '```json\n{"n": 3}\n```') == 1.0
    assert grade(schema, prompt, '{"n": "three"}') == 0.0
    assert grade(schema, prompt, "n = 3") == 0.0


@pytest.mark.parametrize(("extra", "needle"), [
    ({"tasks": []}, 'kind = "task" grades answers to reasoning-gym prompts'),
    ({"samples": 1, "verify": {"kind": "task", "keep": "pairs"}}, "generate.samples to 2"),
    ({"prompts": [{"path": "p.jsonl"}]}, "prompts files have no task to grade against"),
    ({"verify": {"kind": "json_schema", "json_schema": {"type": 3}}}, "not a JSON schema"),
    ({"verify": {"kind": "json_schema"}}, "needs a schema"),
])
def test_a_verifier_that_cannot_work_is_refused_before_any_request(
        extra: dict[str, Any], needle: str) -> None:
    config = GenerateConfig.model_validate(_config("http://127.0.0.1:9/v1") | extra)
    with pytest.raises(UserError, match=re.escape(needle)):
        Generation(config, SEED, Path("unused"), Console(quiet=True))


def test_a_math_prompt_without_its_reference_is_named(tmp_path: Path) -> None:
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "1+1?", "answer": "2"}\n{"prompt": "2+2?"}\n')
    config = GenerateConfig.model_validate({
        "teacher": {"kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"},
        "prompts": [{"path": str(prompts)}], "verify": {"kind": "math"}})
    with pytest.raises(UserError, match=r"p\.jsonl:2: no reference answer 'answer'"):
        Generation(config, SEED, tmp_path / "out", Console(quiet=True))
    assert not (tmp_path / "out").exists()
