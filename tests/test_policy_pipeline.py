"""The gate inside `seed run` and `seed train`: refusal, accepted risk, and the cards they write."""

from __future__ import annotations

import json
from pathlib import Path

from huggingface_hub import DatasetCard, ModelCard

from helpers.cli import run_cli
from helpers.recipes import write_recipe
from seed.endpoints.tasks import TasksEndpoint
from seed.recipe import TaskSpec
from seed.records import count_records, write_records

RECIPE = {
    "name": "gated", "seed": 11,
    "generate": {"num_records": 120, "eval_prompts": 6, "teacher": {"kind": "tasks", "tasks": [
        {"name": "basic_arithmetic", "config": {"min_terms": 2, "max_terms": 2, "min_digits": 1,
                                                "max_digits": 1, "operators": ["+"]}}]}},
    "train": {"max_steps": 2, "batch_size": 4, "seq_len": 64, "warmup_steps": 1,
              "checkpoint_every": 3, "log_every": 1},
    "eval": {"max_new_tokens": 4, "samples": 2},
    "policy": {"student_name": "sum-student"},
}

# A user's terms file that forbids the procedural teacher, to exercise refusal and accepted risk.
FORBID_TASKS = """[[entry]]
id = "no-generators"
family = "Procedural generators, forbidden by our own rule"
routes = ["tasks"]
internal = "block"
distributed = "block"
source_url = "docs/data-policy.md (internal)"
read_on = "2026-11-20"
clause = "Our data policy forbids generated arithmetic in shipped models."
"""


def test_seed_run_gates_training_and_writes_both_cards(tmp_path: Path) -> None:
    # A quickstart-shaped recipe (procedural teacher) passes the gate and gets clean cards.
    write_recipe(tmp_path / "r.toml", RECIPE)
    done = run_cli("run", "r.toml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "runs" / "gated"
    n = count_records(run / "data" / "train.jsonl")  # 120 less any overlap with the eval set
    assert f"terms gate: {n} records may train a distributed commercial chat student" \
        in done.stdout
    card = ModelCard.load(run / "train" / "model" / "README.md")
    assert "| `tasks:reasoning-gym==" in card.text
    assert f"| {n} | allow | Procedural generators (reasoning-gym) |" in card.text
    assert "github.com/open-thought/reasoning-gym" in card.text
    assert card.data.model_name == "sum-student"
    data_card = DatasetCard.load(run / "data" / "README.md")
    assert data_card.data.annotations_creators == ["machine-generated"]
    assert data_card.data.license == "apache-2.0"
    assert json.loads((run / "manifest.json").read_text())["policy"]["verdict"] == "allow"
    again = run_cli("run", "r.toml", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("up to date, skipped") == 4

    # Under a terms file that forbids the teacher, training is refused until the risk is accepted.
    (tmp_path / "forbid.toml").write_text(FORBID_TASKS)
    write_recipe(tmp_path / "r.toml", RECIPE, {"policy.overrides": "forbid.toml"})
    refused = run_cli("run", "r.toml", cwd=tmp_path)
    assert refused.returncode == 2
    assert f"training refused, {n} of {n} records" in refused.stderr
    assert "Traceback" not in refused.stderr
    accepted = run_cli("run", "r.toml", "--accept-terms-risk", "smoke test, never shipped",
                       cwd=tmp_path)
    assert accepted.returncode == 0, accepted.stderr
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["policy"]["accepted_risk"] == "smoke test, never shipped"
    assert manifest["policy"]["verdict"] == "block"
    card = ModelCard.load(run / "train" / "model" / "README.md")
    assert "smoke test, never shipped" in card.text
    assert "no-generators from forbid.toml" in card.text
    assert f"| {n} | block |" in DatasetCard.load(run / "data" / "README.md").text


def test_seed_train_runs_the_same_gate(tmp_path: Path) -> None:
    teacher = TasksEndpoint([TaskSpec(name="basic_arithmetic", config={"max_terms": 2,
                                                                       "max_digits": 1})])
    write_records(tmp_path / "train.jsonl", [teacher.answer(r) for r in teacher.prompts(48, 1)])
    (tmp_path / "forbid.toml").write_text(FORBID_TASKS)
    write_recipe(tmp_path / "r.toml", RECIPE, {"policy.overrides": "forbid.toml"})
    refused = run_cli("train", "train.jsonl", "--out", "out", "--recipe", "r.toml", cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.startswith("error: train.jsonl: training refused, 48 of 48 records")
    assert not (tmp_path / "out").exists()
    ok = run_cli("train", "train.jsonl", "--out", "out", "--recipe", "r.toml",
                 "--accept-terms-risk", "checking the loop", cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    assert json.loads((tmp_path / "out" / "policy.json").read_text())["accepted_risk"] \
        == "checking the loop"
    assert "checking the loop" in (tmp_path / "out" / "model" / "README.md").read_text()
