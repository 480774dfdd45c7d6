"""`seed run` with an [rl] stage: SFT, then GRPO from train's student, graded against it; a rerun
skips every stage; a bad [rl] table is a one-line error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.cli import assert_one_line_error, run_cli
from helpers.recipes import write_recipe
from seed.pipeline import run_recipe

RECIPE = {
    "name": "rl", "seed": 3, "runs_dir": "runs",
    "generate": {"num_records": 80, "eval_prompts": 10, "teacher": {"kind": "tasks", "tasks": [{
        "name": "basic_arithmetic", "config": {"min_terms": 2, "max_terms": 2, "min_digits": 1,
                                               "max_digits": 1, "operators": ["+"]}}]}},
    "train": {"max_steps": 6, "seq_len": 64, "batch_size": 8, "threads": 1, "warmup_steps": 1,
              "student": {"size": "nano"}, "tokenizer": {"kind": "digits"}},
    "rl": {"mode": "grpo", "max_steps": 2, "seq_len": 64, "batch_size": 32, "threads": 1,
           "warmup_steps": 0, "log_every": 1,
           "grpo": {"group": 4, "prompts_per_step": 4, "max_new_tokens": 4}},
    "eval": {"max_new_tokens": 4},
}


@pytest.mark.slow
def test_seed_run_trains_sft_then_grpo_and_grades_grpo_against_sft(tmp_path: Path,
                                                                   monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    recipe = write_recipe(tmp_path / "rl.toml", RECIPE)
    run = run_recipe(recipe)
    manifest = json.loads((run / "manifest.json").read_text())
    assert list(manifest["stages"])[:4] == ["generate", "train", "rl", "eval"]
    assert manifest["stages"]["rl"]["info"]["mode"] == "grpo"
    assert manifest["stages"]["rl"]["info"]["steps"] == 2
    lines = [json.loads(x) for x in (run / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in lines] == [1, 2] and all("reward" in m for m in lines)
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["model"] == str(run / "rl" / "model")
    assert results["baseline"] == str(run / "train" / "model")  # GRPO against the SFT student
    assert (run / "rl" / "model" / "README.md").is_file()  # the card goes with the final student
    stamp = (run / "rl" / "model" / "model.safetensors").stat().st_mtime_ns
    run_recipe(recipe)
    again = json.loads((run / "manifest.json").read_text())
    assert all("last_skipped_at" in again["stages"][s] for s in ("generate", "train", "rl", "eval"))
    assert (run / "rl" / "model" / "model.safetensors").stat().st_mtime_ns == stamp


def test_an_rl_table_in_another_mode_is_a_one_line_error(tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "rl.toml", RECIPE, {"rl.mode": "sft"})
    proc = run_cli("run", recipe, cwd=tmp_path)
    assert_one_line_error(proc, "rl", "grpo")
    assert not (tmp_path / "runs").exists()
