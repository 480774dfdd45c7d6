"""`seed run` with an HTTP teacher: generate through the engine, gate, train, judge-free report."""

import json
import subprocess
from pathlib import Path

import pytest

from helpers.cli import cli_env, run_cli
from helpers.recipes import teacher_recipe, write_prompts, write_recipe
from helpers.servers import fault_server

# Set on top of helpers.recipes.teacher_recipe (the teacher at a URL, a prompts file).
RECIPE = {"name": "http", "seed": 3, "generate.teacher.api_key_env": "SEED_TEST_TEACHER_KEY",
          "train": {"max_steps": 3, "batch_size": 2, "seq_len": 64, "warmup_steps": 1,
                    "student": {"size": "nano"}, "tokenizer": {"kind": "chars"}},
          "policy": {"distribute": False}}


def seed(*args: str, cwd: Path, key: str | None = "sk-test") -> subprocess.CompletedProcess:
    """`seed ARGS` with the teacher's key in the environment, or with none (no inherited one)."""
    env = cli_env(SEED_TEST_TEACHER_KEY=key or "")
    if not key:
        del env["SEED_TEST_TEACHER_KEY"]
    return run_cli(*args, cwd=cwd, env=env)


@pytest.mark.slow
def test_run_with_an_http_teacher_generates_trains_and_reports(tmp_path):
    with fault_server(tmp_path, key="sk-test") as server:
        prompts = write_prompts(tmp_path / "p.jsonl", 12)
        write_recipe(tmp_path / "r.toml", teacher_recipe(server.base_url, prompts), RECIPE)
        first = seed("run", "r.toml", cwd=tmp_path)
        assert first.returncode == 0, first.stderr
        asked = len(server.requests())
        # Everything is done: the rerun skips every stage and needs no key.
        second = seed("run", "r.toml", cwd=tmp_path, key=None)
        assert second.returncode == 0, second.stderr
        assert len(server.requests()) == asked  # nothing asked again
    run = tmp_path / "runs" / "http"
    records = [json.loads(line) for line in (run / "data/train.jsonl").read_text().splitlines()]
    assert len(records) == 12
    teacher = records[0]["provenance"]["teacher"]
    assert teacher["model_requested"] == "fault-model" and teacher["host"] == "127.0.0.1"
    manifest = json.loads((run / "manifest.json").read_text())
    assert list(manifest["stages"]) == ["generate", "train", "report"]  # no verifiable eval
    assert manifest["stages"]["train"]["info"]["steps"] == 3
    assert "fault-model" in (run / "report.html").read_text()
    assert second.stdout.count("up to date, skipped") == 3


def test_run_with_an_http_teacher_and_a_missing_prompts_file_writes_nothing(tmp_path):
    write_recipe(tmp_path / "r.toml",
                 teacher_recipe("http://127.0.0.1:9/v1", tmp_path / "nope.jsonl"), RECIPE)
    proc = seed("run", "r.toml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "nope.jsonl" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()
