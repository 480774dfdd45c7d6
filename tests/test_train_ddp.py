"""Two CPU processes (gloo DDP, launched by torchrun) give one process's loss on the same batch."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.cli import ROOT, cli_env, run_cli, torchrun
from helpers.models import tiny_model
from helpers.recipes import SMALL, checkpoint_recipe, write_recipe
from helpers.training import metrics, sums, write_chats

SCRIPT = """
import json, sys
from pathlib import Path
from seed.recipe import TrainConfig
from seed.train import train_student
config = TrainConfig.model_validate(json.loads(sys.argv[3]))
train_student(Path(sys.argv[1]), Path(sys.argv[2]), config, seed=0)
"""


def _run(tmp_path: Path, launcher: list[str], records: Path, out: Path, config: dict) -> None:
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    done = subprocess.run([*launcher, str(script), str(records), str(out), json.dumps(config)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env=cli_env(inherit=False, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_process_ddp_matches_one_process_on_the_same_global_batch(tmp_path: Path) -> None:
    records = write_chats(tmp_path / "r.jsonl", sums())
    base = tiny_model(tmp_path / "base", tokenizer="digits", size="nano")
    # One process: 8 rows per step. Two processes: 4 rows each, the same 8 rows per step.
    one = {**SMALL, "student": {"checkpoint": str(base)}, "max_steps": 6, "batch_size": 8}
    _run(tmp_path, [sys.executable], records, tmp_path / "one", one)
    # The two processes run the real command: `torchrun -m seed train`.
    recipe = write_recipe(tmp_path / "r.toml", checkpoint_recipe("ddp", base, batch_size=4))
    done = run_cli("train", records, "-o", tmp_path / "two", "--recipe", recipe, "--internal",
                   launcher=torchrun(2),
                   env=cli_env(inherit=False, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [m["step"] for m in one] == [m["step"] for m in two] == list(range(1, 7))
    for a, b in zip(one, two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    assert one[-1]["loss"] < one[0]["loss"]  # it trained: not equal by standing still
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["processes"] == 2
    assert (tmp_path / "two" / "model" / "README.md").is_file()  # the model card, written once
