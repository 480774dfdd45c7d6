"""`seed run` end to end on a tiny recipe: every stage's outputs, then a rerun that skips them."""

import json

from helpers.cli import run_cli
from helpers.recipes import write_recipe

RECIPE = {
    "name": "tiny", "seed": 5,
    "generate": {"num_records": 300, "eval_prompts": 20, "teacher": {"kind": "tasks", "tasks": [
        {"name": "basic_arithmetic", "config": {"min_terms": 2, "max_terms": 2, "min_digits": 1,
                                                "max_digits": 1, "operators": ["+"]}}]}},
    "train": {"max_steps": 6, "batch_size": 4, "seq_len": 64, "warmup_steps": 1,
              "checkpoint_every": 3, "log_every": 1, "student": {"size": "tiny"}},
    "eval": {"max_new_tokens": 4, "samples": 4},
}


def test_run_writes_every_stage_and_a_rerun_skips_them(tmp_path):
    write_recipe(tmp_path / "r.toml", RECIPE)
    first = run_cli("run", "r.toml", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    run = tmp_path / "runs" / "tiny"
    results = json.loads((run / "eval" / "results.json").read_text())
    assert results["n"] == 20 and 0.0 <= results["accuracy"] <= 1.0
    assert results["baseline_accuracy"] is not None
    assert "held-out accuracy" in first.stdout
    html = (run / "report.html").read_text()
    assert "Loss curve" in html and "<svg" in html and "basic_arithmetic" in html
    for fetch in ('src="http', "<link", "<script", "url(http", "@import"):
        assert fetch not in html  # self-contained: nothing to fetch
    manifest = json.loads((run / "manifest.json").read_text())
    assert [s["status"] for s in manifest["stages"].values()] == ["done"] * 4
    assert manifest["versions"]["torch"].startswith("2.")
    assert manifest["stages"]["train"]["info"]["steps"] == 6
    model_mtime = (run / "train" / "model" / "model.safetensors").stat().st_mtime_ns

    second = run_cli("run", "r.toml", cwd=tmp_path)
    assert second.returncode == 0, second.stderr
    assert second.stdout.count("up to date, skipped") == 4
    assert (run / "train" / "model" / "model.safetensors").stat().st_mtime_ns == model_mtime
    rerun = json.loads((run / "manifest.json").read_text())
    assert all("last_skipped_at" in s for s in rerun["stages"].values())

    # Changing a training key reruns training and what depends on it, not generation.
    write_recipe(tmp_path / "r.toml", RECIPE, {"train.max_steps": 7})
    third = run_cli("run", "r.toml", cwd=tmp_path)
    assert third.returncode == 0, third.stderr
    assert third.stdout.count("up to date, skipped") == 1  # generate only
    assert json.loads((run / "manifest.json").read_text())["stages"]["train"]["info"]["steps"] == 7
