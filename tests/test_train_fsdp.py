"""Two CPU processes (gloo FSDP2, launched by torchrun) give one process's losses and weights."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from helpers.cli import cli_env, run_cli, torchrun
from helpers.models import tiny_model
from helpers.recipes import checkpoint_recipe, write_recipe
from helpers.training import metrics, sums, write_chats


def _train(tmp_path: Path, name: str, records: Path, recipe: Path, processes: int) -> str:
    done = run_cli("train", records, "-o", tmp_path / name, "--recipe", recipe, "--internal",
                   launcher=torchrun(processes) if processes > 1 else [sys.executable],
                   env=cli_env(inherit=False, OMP_NUM_THREADS="1"))
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout + done.stderr


@pytest.mark.timeout(300)
def test_two_process_fsdp_matches_one_process_on_the_same_global_batch(tmp_path: Path) -> None:
    records = write_chats(tmp_path / "r.jsonl", sums())
    base = tiny_model(tmp_path / "base", tokenizer="digits", size="nano")
    # One process: 8 rows per step. Two sharded processes: 4 rows each, the same 8 rows per step.
    for name, rows, mode, processes in [("one", 8, "ddp", 1), ("two", 4, "fsdp", 2)]:
        recipe = write_recipe(tmp_path / f"{name}.toml", checkpoint_recipe("fsdp", base, rows),
                              {"train.checkpoint_every": 3, "train.distributed": mode})
        _train(tmp_path, name, records, recipe, processes)
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [m["step"] for m in two] == list(range(1, 7))
    for a, b in zip(one, two, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-4)
    assert one[-1]["loss"] < one[0]["loss"]
    # The saved model (gathered from the shards) and the step-3 checkpoint are whole.
    w1 = AutoModelForCausalLM.from_pretrained(tmp_path / "one" / "model").state_dict()
    w2 = AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "model").state_dict()
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], rtol=1e-3, atol=1e-4)
    saved = load_file(next((tmp_path / "two").glob("checkpoints/*/model.safetensors")))
    assert {k: v.shape for k, v in saved.items()} == {
        k: v.shape for k, v in w1.items() if k in saved}
    # A rerun without the final model resumes the sharded run from that checkpoint, the same way.
    shutil.rmtree(tmp_path / "two" / "model")
    (tmp_path / "two" / "summary.json").unlink()
    assert "resuming from step 3" in _train(tmp_path, "two", records, tmp_path / "two.toml", 2)
    assert [m["loss"] for m in metrics(tmp_path / "two")] == pytest.approx(
        [m["loss"] for m in two], rel=1e-5)
    w3 = AutoModelForCausalLM.from_pretrained(tmp_path / "two" / "model").state_dict()
    for k in w2:
        torch.testing.assert_close(w3[k], w2[k], rtol=1e-4, atol=1e-5)
