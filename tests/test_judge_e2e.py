"""End to end: `seed serve` with a tiny model as the judge, JSON-schema constrained, on MT-Bench.

A tiny random student and a tiny random teacher answer three two-turn MT-Bench questions (one
with a reference answer); `seed judge` asks the served judge for each pair in both orders with a
JSON schema, so every verdict must parse even though the judge's weights are random. A second run
sends nothing. The report is rendered in headless Chromium and a screenshot is saved.
"""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from helpers.cli import run_cli
from helpers.models import tiny_model
from helpers.recipes import write_recipe
from helpers.serve import running_server, seed_env

ROOT = Path(__file__).resolve().parents[1]
MT_BENCH = ROOT.parent / "shared" / "data" / "mt_bench"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not MT_BENCH.is_dir(),
                                                   reason=f"reference data missing: {MT_BENCH}")]


def seed(*args: str) -> subprocess.CompletedProcess:
    return run_cli(*args, env=seed_env())


@pytest.fixture(scope="module")
def judged(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("judge_e2e")
    student = tiny_model(tmp / "student", context=8192, seed=1)
    teacher = tiny_model(tmp / "teacher", context=8192, seed=2)
    judge = tiny_model(tmp / "judge", context=8192, seed=3)
    questions = [json.loads(x) for x in (MT_BENCH / "question.jsonl").read_text().splitlines()]
    picked = [q for q in questions if q["question_id"] in (81, 101)]
    (tmp / "questions.jsonl").write_text("".join(json.dumps(q) + "\n" for q in picked))
    keys = {"name": "judged", "generate": {"teacher": {"kind": "local", "path": teacher}},
            "eval": {"judge": {"questions": tmp / "questions.jsonl",
                               "references": MT_BENCH / "reference_answer_gpt-4.jsonl",
                               "answer_max_tokens": 12, "max_tokens": 40, "concurrency": 2}}}
    with running_server(str(judge), "--model-name", "tiny-judge") as url:
        recipe = write_recipe(tmp / "judge.toml", keys, {"eval.judge.endpoint": {
            "kind": "openai", "base_url": f"{url}/v1", "model": "tiny-judge"}})
        first = seed("judge", str(student), "--recipe", str(recipe), "--out", str(tmp / "out"))
    # the judgments are gone but the cache is warm; the judge server is down: nothing may be sent
    shutil.move(tmp / "out" / "judgments.jsonl", tmp / "first_judgments.jsonl")
    second = seed("judge", str(student), "--recipe", str(recipe), "--out", str(tmp / "out"))
    return {"tmp": tmp, "out": tmp / "out", "first": first, "second": second}


def test_every_pair_is_judged_in_both_orders_with_parseable_verdicts(judged):
    assert judged["first"].returncode == 0, judged["first"].stderr
    rows = [json.loads(x) for x in (judged["out"] / "judgments.jsonl").read_text().splitlines()]
    assert sorted(r["id"] for r in rows) == ["101", "81"]
    for r in rows:
        assert all(v in (-2, -1, 0, 1, 2) for v in r["verdicts"]), r  # the schema held
        assert "[Turn 2]" in r["instruction"] and "[Turn 2]" in r["output"]
        assert r["judge"] == "tiny-judge" and r["baseline"] == "teacher"
    results = json.loads((judged["out"] / "judge_results.json").read_text())
    assert results["stats"]["n"] == 2 and results["stats"]["unparseable"] == 0
    assert 0 <= results["stats"]["win_rate"] <= 100
    assert results["self_preference"] is False
    assert "judge requests: 4 sent, 0 cached" in judged["first"].stdout


def test_second_run_with_a_warm_cache_sends_no_judge_request(judged):
    assert judged["second"].returncode == 0, judged["second"].stderr
    assert "judge requests: 0 sent, 4 cached" in judged["second"].stdout
    results = json.loads((judged["out"] / "judge_results.json").read_text())
    assert results["requests"]["requests_paid"] == 0
    again = (judged["out"] / "judgments.jsonl").read_text().splitlines()
    first = (judged["tmp"] / "first_judgments.jsonl").read_text().splitlines()
    assert sorted(again) == sorted(first)
    proc = seed("stats", "--json", str(judged["out"] / "judgments.jsonl"))
    assert proc.returncode == 0 and json.loads(proc.stdout)[0]["n"] == 2


def test_report_renders_in_headless_chromium(judged):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"no Chromium at {CHROMIUM}: cannot check the rendered report")
    report = judged["out"] / "report.html"
    html = report.read_text()
    for fetches in ("<script", "<link", 'src="http', "url(http"):  # self-contained: no fetches
        assert fetches not in html
    shot = judged["tmp"] / "judge_report.png"
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
            "--window-size=1200,2400"]
    dom = subprocess.run([*args, "--dump-dom", report.as_uri()], capture_output=True, text=True,
                         timeout=120, env={**os.environ, "HOME": str(judged["tmp"])})
    assert "Judged by tiny-judge: student vs teacher" in dom.stdout
    assert dom.stdout.count("<svg") >= 2 and "Where the student lost worst" in dom.stdout
    subprocess.run([*args, f"--screenshot={shot}", report.as_uri()], capture_output=True,
                   timeout=120, env={**os.environ, "HOME": str(judged["tmp"])})
    assert shot.stat().st_size > 20_000
    print(f"screenshot: {shot}")
