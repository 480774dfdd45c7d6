"""Bad input: one line naming the input, exit code 2, no traceback, the run directory untouched."""

import subprocess
from pathlib import Path

import pytest

from helpers.cli import run_cli


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in d.rglob("*") if p.is_file()}


def assert_one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    assert "Traceback" not in proc.stderr + proc.stdout
    for n in needles:
        assert n in lines[0]


RECIPE = """name = "bad"
runs_dir = "runs"
[generate]
num_records = 10
eval_prompts = 2
[generate.teacher]
kind = "tasks"
[[generate.teacher.tasks]]
name = "{family}"
{extra}"""


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "bad"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text('{"stages": {}, "note": "from an earlier run"}\n')
    return tmp_path


def test_unknown_recipe_key(workdir):
    (workdir / "r.toml").write_text(RECIPE.format(family="basic_arithmetic",
                                                  extra="[train]\nbatch_sise = 4\n"))
    before = snapshot(workdir / "runs")
    proc = run_cli("run", "r.toml", cwd=workdir)
    assert_one_line_error(proc, "r.toml", "train.batch_sise: unknown key")
    assert snapshot(workdir / "runs") == before


def test_unknown_task_family(workdir):
    (workdir / "r.toml").write_text(RECIPE.format(family="arithmagic", extra=""))
    before = snapshot(workdir / "runs")
    proc = run_cli("run", "r.toml", cwd=workdir)
    assert_one_line_error(proc, "'arithmagic'", "reasoning-gym")
    assert snapshot(workdir / "runs") == before


def test_records_file_with_a_broken_line(workdir):
    good = ('{"id": "a", "messages": [{"role": "user", "content": "1+1"}, '
            '{"role": "assistant", "content": "2"}]}\n')
    (workdir / "data.jsonl").write_text(good + "{not json}\n" + good)
    proc = run_cli("train", "data.jsonl", "--out", "runs/bad/train", cwd=workdir)
    assert_one_line_error(proc, "data.jsonl:2")
    assert not (workdir / "runs" / "bad" / "train").exists()


@pytest.mark.parametrize("command", [["chat", "no/such/model"],
                                     ["eval", "no/such/model", "e.jsonl", "-o", "runs/bad/eval"]])
def test_model_directory_that_does_not_exist(workdir, command):
    (workdir / "e.jsonl").write_text("")
    before = snapshot(workdir / "runs")
    proc = run_cli(*command, cwd=workdir)
    assert_one_line_error(proc, "no/such/model", "no such model directory")
    assert snapshot(workdir / "runs") == before


def test_missing_recipe_file(workdir):
    assert_one_line_error(run_cli("run", "nope.toml", cwd=workdir), "nope.toml")
