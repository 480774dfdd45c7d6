"""`seed run` with an [eval.judge] section: a judge stage, its results, and the report's section.

The judge is the rule-based local server of helpers/judge_server.py (the longer answer wins); the
baseline is the recipe's procedural teacher, whose answers are the tasks' ground truth.
"""

import json

import pytest

from helpers.cli import run_cli
from helpers.recipes import write_recipe

RECIPE = {
    "name": "judged", "seed": 5,
    "generate": {"num_records": 200, "eval_prompts": 6, "teacher": {"kind": "tasks", "tasks": [
        {"name": "basic_arithmetic", "config": {"min_terms": 2, "max_terms": 2, "min_digits": 1,
                                                "max_digits": 1, "operators": ["+"]}}]}},
    "train": {"max_steps": 3, "batch_size": 4, "seq_len": 64, "warmup_steps": 1},
    "eval": {"max_new_tokens": 4, "samples": 2,
             "judge": {"answer_max_tokens": 6,
                       "endpoint": {"kind": "openai", "base_url": "", "model": "rule-judge"}}},
}


@pytest.mark.slow
def test_recipe_with_a_judge_section_gets_a_judge_stage_and_report_section(judge_server, tmp_path):
    url, log = judge_server
    write_recipe(tmp_path / "r.toml", RECIPE, {"eval.judge.endpoint.base_url": url})
    start = len(log)
    first = run_cli("run", "r.toml", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    run = tmp_path / "runs" / "judged"
    results = json.loads((run / "judge" / "judge_results.json").read_text())
    assert results["baseline"] == "tasks" and results["stats"]["n"] == 6
    assert len(log) - start == 12  # six held-out prompts, both orders
    rows = [json.loads(x) for x in (run / "judge" / "judgments.jsonl").read_text().splitlines()]
    eval_answers = {json.loads(x)["meta"]["answer"]
                    for x in (run / "data" / "eval.jsonl").read_text().splitlines()}
    assert {r["baseline_output"] for r in rows} <= eval_answers
    assert "judge: student win rate" in first.stdout
    html = (run / "report.html").read_text()
    assert "Judged by rule-judge: student vs tasks" in html and "Self-preference" not in html
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["stages"]["judge"]["status"] == "done"

    again = run_cli("run", "r.toml", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert len(log) - start == 12  # the judge stage is up to date: no request
    assert "judge: up to date, skipped" in again.stdout
