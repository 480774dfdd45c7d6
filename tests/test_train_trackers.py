"""`train.report_to`: the trackers get exactly metrics.jsonl's lines, the config and the summary.

Each run is a real tiny training; what it logged is read back with the tracker's own reader
(TensorBoard's EventAccumulator, trackio's SQLiteStorage) and compared key by key, step by step.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers.cli import cli_env, run_cli, torchrun
from helpers.models import tiny_model
from helpers.recipes import SMALL, checkpoint_recipe, write_recipe
from helpers.training import metrics, sums, write_chats
from seed.errors import UserError
from seed.recipe import Recipe, TrainConfig
from seed.train import train_student
from seed.train.trackers import Report

SECRET = "sk-tracker-test-secret-value-0123456789"
CONFIG = {**SMALL, "max_steps": 6, "eval_fraction": 0.1, "eval_every": 2}


def report(monkeypatch: pytest.MonkeyPatch) -> Report:
    """What `seed run` reports beside the train config: a recipe naming a key's environment
    variable (set, to a value that must not be logged)."""
    monkeypatch.setenv("TRACKER_TEST_KEY", SECRET)
    recipe = Recipe.model_validate({"name": "tracked", "generate": {"teacher": {
        "kind": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "teacher-model",
        "api_key_env": "TRACKER_TEST_KEY"}}})
    return Report("tracked", {"recipe": recipe.model_dump(mode="json"),
                              "terms": {"verdict": "allow"}})


def train(tmp_path: Path, report_to: list[str], rep: Report | None = None) -> Path:
    records = write_chats(tmp_path / "train.jsonl", sums())
    out = tmp_path / "out"
    train_student(records, out, TrainConfig(**CONFIG, report_to=report_to), seed=3, report=rep)
    return out


def assert_same_lines(logged: dict[int, dict[str, float]], out: Path) -> None:
    """Every line of metrics.jsonl, every key, equal values (float32 for TensorBoard)."""
    lines = metrics(out)
    assert [line["step"] for line in lines] == sorted(logged) == list(range(1, 7))
    assert "eval_loss" in lines[-1]
    for line in lines:
        row = logged[line["step"]]
        assert set(row) == set(line) - {"step"}
        for key, value in line.items():
            if key != "step":
                assert row[key] == pytest.approx(value, rel=1e-6, abs=1e-12), key


def test_tensorboard_events_hold_every_metric_of_metrics_jsonl(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = train(tmp_path, ["tensorboard"], report(monkeypatch))
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    logged: dict[int, dict[str, float]] = {}
    for tag in events.Tags()["scalars"]:
        if tag.startswith("summary/"):
            continue
        for e in events.Scalars(tag):
            logged.setdefault(e.step, {})[tag] = e.value
    assert_same_lines(logged, out)
    summary = json.loads((out / "summary.json").read_text())
    [final] = events.Scalars("summary/train.steps")
    assert (final.step, final.value) == (6, summary["steps"])
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"api_key_env": "TRACKER_TEST_KEY"' in config
    assert '"lr": 0.01' in config and '"verdict": "allow"' in config
    for path in out.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_a_trackio_project_holds_every_metric_of_metrics_jsonl(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    from trackio.sqlite_storage import SQLiteStorage

    db = SQLiteStorage.get_project_db_path("seed")
    assert tmp_path in db.parents, "trackio was imported before TRACKIO_DIR was set"
    out = train(tmp_path, ["tensorboard", "trackio"], report(monkeypatch))
    rows = SQLiteStorage.get_logs("seed", "tracked")
    logged = {r["step"]: {k: v for k, v in r.items() if k not in ("step", "timestamp")
                          and not k.startswith("summary/")}
              for r in rows if any(not k.startswith(("summary/", "step", "timestamp"))
                                   for k in r)}
    assert_same_lines(logged, out)
    summary = json.loads((out / "summary.json").read_text())
    assert any(r.get("summary/train.steps") == summary["steps"] for r in rows)
    config = SQLiteStorage.get_run_config("seed", "tracked")
    assert config is not None
    assert config["recipe"]["generate"]["teacher"]["api_key_env"] == "TRACKER_TEST_KEY"
    for path in (tmp_path / "trackio").rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


@pytest.mark.slow
def test_seed_run_adds_the_recipe_the_terms_decision_and_the_eval_results(
        tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    recipe = {"name": "tracked", "seed": 5, "generate": {
        "num_records": 48, "eval_prompts": 6, "teacher": {"kind": "tasks", "tasks": [
            {"name": "basic_arithmetic", "config": {"min_terms": 2, "max_terms": 2,
                                                    "min_digits": 1, "max_digits": 1}}]}},
        "train": {**CONFIG, "eval_fraction": 0, "report_to": ["tensorboard"]},
        "eval": {"max_new_tokens": 4, "samples": 2}}
    write_recipe(tmp_path / "r.toml", recipe)
    done = run_cli("run", "r.toml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "runs" / "tracked"
    events = EventAccumulator(str(run / "train" / "tensorboard"),
                              size_guidance={"scalars": 0, "tensors": 0}).Reload()
    results = json.loads((run / "eval" / "results.json").read_text())
    [accuracy] = events.Scalars("summary/eval.accuracy")
    assert accuracy.value == pytest.approx(results["accuracy"])
    config = events.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"name": "tracked"' in config  # the recipe
    assert '"verdict": "allow"' in config and "reasoning-gym" in config  # the terms decision


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_under_torchrun_only_the_main_process_reports(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    records = write_chats(tmp_path / "train.jsonl", sums())
    base = tiny_model(tmp_path / "base", tokenizer="digits", size="nano")
    recipe = write_recipe(tmp_path / "r.toml", checkpoint_recipe("ddp", base, 4),
                          {"train.report_to": ["tensorboard"], "train.checkpoint_every": 100})
    done = run_cli("train", records, "-o", tmp_path / "out", "--recipe", recipe, "--internal",
                   launcher=torchrun(2), env=cli_env(inherit=False, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    out = tmp_path / "out"
    [events_file] = (out / "tensorboard").iterdir()  # one writer: rank 0's
    events = EventAccumulator(str(events_file), size_guidance={"scalars": 0}).Reload()
    losses = [(e.step, e.value) for e in events.Scalars("loss")]
    assert [step for step, _ in losses] == [line["step"] for line in metrics(out)]
    assert [v for _, v in losses] == pytest.approx([line["loss"] for line in metrics(out)])


def test_a_tracker_that_is_not_installed_names_the_extra(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # an import of it fails, as when absent
    with pytest.raises(UserError, match=r"names 'wandb', but the wandb package is not "
                       r"installed; pip install 'seed\[trackers\]'"):
        train(tmp_path, ["wandb"])
    assert not (tmp_path / "out").exists()  # refused before the run wrote anything


def test_report_to_takes_only_the_known_trackers_and_moves_no_fingerprint() -> None:
    with pytest.raises(ValueError, match="report_to"):
        TrainConfig(report_to=["neptune"])  # type: ignore[list-item]
    plain: dict[str, Any] = TrainConfig().model_dump()
    assert plain == TrainConfig(report_to=["tensorboard"]).model_dump()  # same stage hash
