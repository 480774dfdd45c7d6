"""Bad input: one line naming the input, exit code 2, no traceback, the run directory untouched."""

from pathlib import Path

import pytest

from helpers.cli import assert_one_line_error, run_cli
from helpers.recipes import write_recipe


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in d.rglob("*") if p.is_file()}


RECIPE = {"name": "bad", "runs_dir": "runs",
          "generate": {"num_records": 10, "eval_prompts": 2,
                       "teacher": {"kind": "tasks", "tasks": [{"name": "basic_arithmetic"}]}}}


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    run = tmp_path / "runs" / "bad"
    run.mkdir(parents=True)
    (run / "manifest.json").write_text('{"stages": {}, "note": "from an earlier run"}\n')
    return tmp_path


def test_unknown_recipe_key(workdir):
    write_recipe(workdir / "r.toml", RECIPE, {"train.batch_sise": 4})
    before = snapshot(workdir / "runs")
    proc = run_cli("run", "r.toml", cwd=workdir)
    assert_one_line_error(proc, "r.toml", "train.batch_sise: unknown key")
    assert snapshot(workdir / "runs") == before


def test_unknown_task_family(workdir):
    write_recipe(workdir / "r.toml", RECIPE, {"generate.teacher.tasks": [{"name": "arithmagic"}]})
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
