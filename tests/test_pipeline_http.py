"""`seed run` with an HTTP teacher: generate through the engine, gate, train, judge-free report."""

import json
import subprocess
from pathlib import Path

from helpers.cli import cli_env, run_cli
from helpers.recipes import write_prompts
from helpers.servers import fault_server

RECIPE = """name = "http"
seed = 3
[generate]
[generate.teacher]
kind = "openai"
base_url = "{base_url}"
model = "fault-model"
api_key_env = "SEED_TEST_TEACHER_KEY"
[[generate.prompts]]
path = "{prompts}"
license = "CC0-1.0"
[train]
max_steps = 3
batch_size = 2
seq_len = 64
warmup_steps = 1
[train.student]
size = "nano"
[train.tokenizer]
kind = "chars"
[policy]
distribute = false
"""


def seed(*args: str, cwd: Path, key: str | None = "sk-test") -> subprocess.CompletedProcess:
    """`seed ARGS` with the teacher's key in the environment, or with none (no inherited one)."""
    env = cli_env(SEED_TEST_TEACHER_KEY=key or "")
    if not key:
        del env["SEED_TEST_TEACHER_KEY"]
    return run_cli(*args, cwd=cwd, env=env)


def test_run_with_an_http_teacher_generates_trains_and_reports(tmp_path):
    with fault_server(tmp_path, key="sk-test") as server:
        prompts = write_prompts(tmp_path / "p.jsonl", 12)
        (tmp_path / "r.toml").write_text(RECIPE.format(base_url=server.base_url, prompts=prompts))
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
    (tmp_path / "r.toml").write_text(RECIPE.format(base_url="http://127.0.0.1:9/v1",
                                                   prompts=tmp_path / "nope.jsonl"))
    proc = seed("run", "r.toml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "nope.jsonl" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "runs").exists()
