"""One training loop: the quickstart's recipe runs the same functions in one process on a CPU as
in two torchrun processes (gloo DDP) with `train.dtype = "float32"`, and the two processes (4 rows
each) give the one process's losses (8 rows) on the same global batch.

Which code ran is traced, not read from a flag: a profiler hook records every function of
`seed.train` that is called, per process, and the sets are compared.
"""

from __future__ import annotations

import json
import sys
import tomllib
from pathlib import Path

import pytest

from helpers.cli import ROOT, cli_env, run_cli, torchrun
from helpers.recipes import write_recipe
from helpers.training import metrics, sums, write_chats

# Runs `python -m seed ARGS` with a profiler hook that notes each seed.train function called.
TRACER = """
import atexit, json, os, runpy, sys
called = set()
def note(frame, event, arg):
    if event == "call" and "/seed/train/" in frame.f_code.co_filename:
        module = frame.f_code.co_filename.rsplit("/seed/train/", 1)[1].removesuffix(".py")
        called.add(f"{module}.{frame.f_code.co_qualname}")
def dump():
    sys.setprofile(None)
    path = os.path.join(os.environ["TRACE_DIR"], f"rank{os.environ.get('RANK', '0')}.json")
    with open(path, "w") as f:
        json.dump(sorted(called), f)
atexit.register(dump)
sys.setprofile(note)
args = sys.argv[1:]
sys.argv = ["seed", *(args[2:] if args[:2] == ["-m", "seed"] else args)]
runpy.run_module("seed", run_name="__main__")
"""


def _traced_train(tmp_path: Path, name: str, recipe: Path, records: Path,
                  launcher: list[str]) -> dict[str, set[str]]:
    trace_dir = tmp_path / f"trace-{name}"
    trace_dir.mkdir()
    tracer = tmp_path / "tracer.py"
    tracer.write_text(TRACER)
    # run_cli runs `LAUNCHER -m seed ARGS`: the tracer is the launcher's script; it drops `-m seed`.
    done = run_cli("train", records, "-o", tmp_path / name, "--recipe", recipe, "--internal",
                   launcher=[*launcher, str(tracer)],
                   env=cli_env(inherit=False, OMP_NUM_THREADS="1", TRACE_DIR=str(trace_dir)))
    assert done.returncode == 0, done.stderr[-3000:]
    return {p.stem: set(json.loads(p.read_text())) for p in trace_dir.glob("rank*.json")}


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_quickstart_recipe_runs_the_same_functions_and_losses_on_one_cpu_and_under_torchrun(
        tmp_path: Path) -> None:
    quickstart = tomllib.loads((ROOT / "recipes" / "quickstart.toml").read_text())
    short = {"train.max_steps": 4, "train.checkpoint_every": 2, "train.log_every": 1,
             "train.threads": 1}
    laptop = write_recipe(tmp_path / "laptop.toml", quickstart, short)
    # Two ranks of half the quickstart's rows each: the same global batch as the one process.
    half = quickstart["train"]["batch_size"] // 2
    box = write_recipe(tmp_path / "box.toml", quickstart,
                       {**short, "train.dtype": "float32", "train.batch_size": half})
    records = write_chats(tmp_path / "r.jsonl", sums(96))

    one = _traced_train(tmp_path, "one", laptop, records, [sys.executable])
    two = _traced_train(tmp_path, "two", box, records, torchrun(2))

    assert set(one) == {"rank0"} and set(two) == {"rank0", "rank1"}
    # The tracer saw the loop's steps (an empty trace would make the comparison hollow).
    steps = {"loop.train_student", "loop.load_or_build_student", "loop.prepare_model",
             "loop.wrap_model", "loop.resume", "loop.train_step", "loop.save_checkpoint",
             "loop.finish", "runtime.Runtime.start", "sft.layout", "modes.build_layout",
             "optim.make_optimizer", "checkpoints.save_checkpoint"}
    assert steps <= one["rank0"]
    assert one["rank0"] == two["rank0"], (one["rank0"] ^ two["rank0"])
    assert two["rank1"] <= two["rank0"]  # rank 1 writes nothing, and runs nothing else
    for name, processes in (("one", 1), ("two", 2)):
        summary = json.loads((tmp_path / name / "summary.json").read_text())
        assert summary["processes"] == processes and summary["steps"] == 4
    # Both ranks built the same student from the seed and reduced the same global batch.
    losses = [[m["loss"] for m in metrics(tmp_path / name)] for name in ("one", "two")]
    assert len(losses[0]) == 4 and losses[1] == pytest.approx(losses[0], rel=1e-4)
    assert losses[0][-1] < losses[0][0]  # it trained: not equal by standing still
    assert (tmp_path / "two" / "model" / "README.md").is_file()  # the model card, written once
