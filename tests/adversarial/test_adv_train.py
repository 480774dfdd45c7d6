"""Training state a crash, a disk or an attacker damaged: what `seed train` does with it.

One short run (12 steps, checkpoints at steps 4 and 8) is the uninterrupted reference; each case
copies it, removes the final model as a kill after step 8 would, damages the newest checkpoint,
and reruns the real `seed train`, which must resume from step 4 and end on the reference's
weights, keeping the damaged checkpoint aside.
"""

from __future__ import annotations

import json
import logging
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from helpers.cli import assert_one_line_error, run_cli
from helpers.recipes import SMALL, write_recipe
from helpers.training import metrics, sums, write_chats
from seed.errors import UserError
from seed.files import append_jsonl, hash_json, hash_path, load_jsonl, seal_jsonl
from seed.recipe import TrainConfig, load_recipe
from seed.records import Record
from seed.train import train_student
from seed.train.checkpoints import BadCheckpoint, load_checkpoint
from seed.train.limits import check_fits
from seed.train.models import student_shape
from seed.train.runtime import Runtime

RECIPE = {"name": "adv-train", "seed": 3, "generate": {"teacher": {"kind": "tasks"}},
          "train": {**SMALL, "student": {"size": "nano"}, "checkpoint_every": 4}}
NEWEST = "step-00000008"


class Plant:
    """A pickle that, when unpickled, creates the file `path` (what an attacker's code could do)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[object, tuple[str, str]]:
        return open, (str(self.path), "w")


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """(records, recipe, run directory) of the whole 12-step run."""
    tmp = tmp_path_factory.mktemp("adv_train")
    records = write_chats(tmp / "records.jsonl", sums(60))
    recipe = write_recipe(tmp / "recipe.toml", RECIPE)
    train_student(records, tmp / "whole", load_recipe(recipe)[0].train, seed=3)
    assert sorted(p.name for p in (tmp / "whole" / "checkpoints").iterdir()) == [
        "step-00000004", NEWEST]
    return records, recipe, tmp / "whole"


def killed_after_step_8(reference: Path, to: Path) -> Path:
    """A copy of the run as a kill after the step-8 checkpoint leaves it: no final model."""
    shutil.copytree(reference, to)
    shutil.rmtree(to / "model")
    (to / "summary.json").unlink()
    return to


def truncate_weights(checkpoint: Path) -> None:
    with (checkpoint / "model.safetensors").open("r+b") as f:
        f.truncate(1000)


def plant_in_optimizer(checkpoint: Path) -> None:
    """Replace optimizer.pt with a planting pickle and make state.json vouch for it, as an attacker
    who can write the directory would."""
    torch.save(Plant(checkpoint.parent.parent / "planted"), checkpoint / "optimizer.pt")
    state = json.loads((checkpoint / "state.json").read_text())
    state["files"]["optimizer.pt"] = {"bytes": (checkpoint / "optimizer.pt").stat().st_size,
                                      "sha256": hash_path(checkpoint / "optimizer.pt")}
    body = {k: v for k, v in state.items() if k != "digest"}
    (checkpoint / "state.json").write_text(json.dumps({**body, "digest": hash_json(body)}))


@pytest.mark.parametrize(("damage", "named"), [(truncate_weights, "model.safetensors"),
                                               (plant_in_optimizer, "optimizer.pt")])
def test_a_damaged_newest_checkpoint_is_set_aside_and_the_run_resumes_from_the_one_before(
        reference, tmp_path, damage, named):
    records, recipe, whole = reference
    out = killed_after_step_8(whole, tmp_path / "run")
    damage(out / "checkpoints" / NEWEST)
    done = run_cli("train", records, "--out", out, "--recipe", recipe)
    assert done.returncode == 0, done.stderr
    warnings = [line for line in done.stderr.splitlines() if line.startswith("WARNING")]
    assert len(warnings) == 1, done.stderr
    assert NEWEST in warnings[0] and named in warnings[0] and "does not load" in warnings[0]
    assert "resuming from step 4 (step-00000004)" in done.stdout
    assert not (out / "planted").exists()  # the pickle was refused, never run
    kept = out / "checkpoints" / f"{NEWEST}.corrupt"
    assert (kept / named).is_file()  # the damaged checkpoint is kept, set aside
    assert [m["step"] for m in metrics(out)] == list(range(1, 13))
    resumed, uninterrupted = (load_file(d / "model" / "model.safetensors") for d in (out, whole))
    assert resumed.keys() == uninterrupted.keys()
    assert all(torch.equal(resumed[k], uninterrupted[k]) for k in resumed)


def test_when_no_checkpoint_loads_the_run_starts_over_and_keeps_them_aside(reference, tmp_path,
                                                                           caplog):
    records, recipe, whole = reference
    out = killed_after_step_8(whole, tmp_path / "run")
    for checkpoint in (out / "checkpoints").iterdir():
        (checkpoint / "state.json").unlink()
    with caplog.at_level(logging.WARNING, logger="seed.train.loop"):
        info = train_student(records, out, load_recipe(recipe)[0].train, seed=3)
    assert [r.getMessage().split(" does not load")[0] for r in caplog.records][:2] == [
        f"checkpoint {out / 'checkpoints' / name}" for name in (NEWEST, "step-00000004")]
    assert "training starts from step 0" in caplog.records[-1].getMessage()
    assert info["steps"] == 12
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step-00000004", "step-00000004.corrupt", NEWEST, f"{NEWEST}.corrupt"]
    again, uninterrupted = (load_file(d / "model" / "model.safetensors") for d in (out, whole))
    assert all(torch.equal(again[k], uninterrupted[k]) for k in again)


def test_the_planted_pickle_would_run_if_it_were_unpickled(tmp_path):
    """The attack in the test above is real: plain unpickling creates the file."""
    opened = pickle.loads(pickle.dumps(Plant(tmp_path / "planted")))
    opened.close()
    assert (tmp_path / "planted").exists()


def _garble_optimizer(c: Path) -> None:
    data = bytearray((c / "optimizer.pt").read_bytes())
    data[len(data) // 2: len(data) // 2 + 64] = bytes(64)  # torch.load alone does not notice
    (c / "optimizer.pt").write_bytes(bytes(data))


def _garble_state(c: Path) -> None:
    (c / "state.json").write_text((c / "state.json").read_text().replace('"step": 8', '"step": 9'))


@pytest.mark.parametrize(("damage", "why"), [
    (_garble_optimizer, "optimizer.pt: its content changed since it was written"),
    (_garble_state, "state.json: not a checkpoint's state"),
    (lambda c: (c / "optimizer.pt").unlink(), "optimizer.pt is missing"),
    (lambda c: (c / "state.json").unlink(), "state.json is missing"),
    (lambda c: (c / "model.safetensors").write_bytes(b""), "model.safetensors: 0 bytes"),
])
def test_a_checkpoint_that_does_not_load_is_a_bad_checkpoint_naming_the_file(
        reference, tmp_path, damage, why):
    checkpoint = tmp_path / NEWEST
    shutil.copytree(reference[2] / "checkpoints" / NEWEST, checkpoint)
    student = AutoModelForCausalLM.from_pretrained(reference[2] / "initial")
    expected = {k: v.shape for k, v in student.state_dict().items()}
    assert load_checkpoint(checkpoint, torch.device("cpu"), expected).step == 8
    damage(checkpoint)
    with pytest.raises(BadCheckpoint, match=why):
        load_checkpoint(checkpoint, torch.device("cpu"), expected)


def test_a_seq_len_no_memory_can_hold_is_refused_naming_the_limit(reference, tmp_path):
    records, _, _ = reference
    recipe = write_recipe(tmp_path / "huge.toml", RECIPE, {"train.seq_len": 100_000_000})
    done = run_cli("train", records, "--out", tmp_path / "out", "--recipe", recipe)
    assert_one_line_error(done, "train.seq_len = 100000000", "can never fit",
                          "holds rows of at most")
    assert not (tmp_path / "out").exists()


def test_a_seq_len_beyond_a_checkpoint_students_context_is_refused(tiny_model_dir):
    cpu = Runtime(torch.device("cpu"), rank=0, world=1, dtype="auto", threads=1, sharded=False)
    config = TrainConfig.model_validate({"seq_len": 129, "batch_size": 1,
                                         "student": {"checkpoint": str(tiny_model_dir)}})
    with pytest.raises(UserError, match=r"train\.seq_len = 129 is beyond the context .* "
                                        r"\(max_position_embeddings = 128\)"):
        check_fits(config, student_shape(config.student), cpu)
    fits = config.model_copy(update={"seq_len": 128})
    check_fits(fits, student_shape(fits.student), cpu)  # the context itself is allowed


def test_a_valid_last_record_without_its_newline_is_kept_and_the_next_append_starts_a_line(
        tmp_path):
    path = tmp_path / "records.jsonl"
    first, last, added = (Record.new([{"role": "user", "content": q},
                                      {"role": "assistant", "content": a}])
                          for q, a in [("1 + 1 =", "2"), ("2 + 2 =", "4"), ("3 + 3 =", "6")])
    path.write_text(first.to_line() + last.to_line().rstrip("\n"))
    assert [Record.model_validate(v) for v in load_jsonl(path)] == [first, last]
    append_jsonl(path, [added.model_dump(mode="json", exclude_none=True)])
    lines = path.read_text().splitlines()
    assert [Record.model_validate_json(line) for line in lines] == [first, last, added]
    # A torn last line (a write cut by a kill) is cut off instead, and the next line follows it.
    with path.open("a") as f:
        f.write(added.to_line()[:20])
    assert seal_jsonl(path) == 20
    assert path.read_text().endswith(added.to_line())
