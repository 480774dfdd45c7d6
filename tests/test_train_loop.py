"""The training loop end to end: outputs, determinism, resume after a kill, no retraining."""

from __future__ import annotations

import itertools
import json
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers.cli import run_cli, start_cli
from helpers.recipes import write_recipe
from helpers.training import metrics
from seed.recipe import TrainConfig, load_recipe
from seed.train import train_student
from seed.train.data import Example
from seed.train.layout import Layout, packed_rows, shuffled, token_count
from seed.train.sft import full_loss

RECIPE = {
    "name": "t", "seed": 7,
    "generate": {"num_records": 300, "eval_prompts": 20,
                 "teacher": {"kind": "tasks", "tasks": [{"name": "basic_arithmetic"}]}},
    "train": {"max_steps": 120, "seq_len": 64, "batch_size": 4, "warmup_steps": 5,
              "checkpoint_every": 20, "log_every": 10, "threads": 1,
              "student": {"size": "nano"}},
}
SMALL = {"student": {"size": "nano"}, "seq_len": 64, "batch_size": 4, "max_steps": 12,
         "warmup_steps": 2, "log_every": 2, "checkpoint_every": 5, "threads": 1}


def _config(**overrides: object) -> TrainConfig:
    return TrainConfig.model_validate({**SMALL, **overrides})


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(model_dir / "model.safetensors")


def test_training_writes_a_loadable_student_baseline_metrics_and_summary(arithmetic_data, tmp_path):
    info = train_student(arithmetic_data / "train.jsonl", tmp_path, _config(), seed=1)
    assert info["steps"] == 12
    assert info["params"] > 10_000
    assert info["tokens"] > 0 and info["tokens_per_s"] > 0 and info["seconds"] > 0
    assert [m["step"] for m in metrics(tmp_path)] == [2, 4, 6, 8, 10, 12]
    first, last = metrics(tmp_path)[0], metrics(tmp_path)[-1]
    assert set(last) == {"step", "loss", "lr", "tokens", "tokens_per_s", "elapsed_s"}
    assert last["loss"] < first["loss"]
    assert last["tokens"] == info["tokens"]
    assert info["final_loss"] == pytest.approx(last["loss"], abs=1e-5)

    initial, final = _weights(tmp_path / "initial"), _weights(tmp_path / "model")
    assert initial.keys() == final.keys()
    assert any(not torch.equal(initial[k], final[k]) for k in initial)

    tok = AutoTokenizer.from_pretrained(tmp_path / "model", local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model", local_files_only=True)
    ids = tok.apply_chat_template([{"role": "user", "content": "Calculate 3 + 4."}],
                                  add_generation_prompt=True, return_tensors="pt",
                                  return_dict=True)["input_ids"]
    assert tok.convert_ids_to_tokens(ids[0].tolist())[-1] == "<|assistant|>"
    assert model.generation_config.eos_token_id == tok.eos_token_id
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] <= ids.shape[1] + 5


def test_the_data_stream_restarts_at_any_step_across_epochs_of_different_lengths():
    g = torch.Generator().manual_seed(0)
    examples = [Example(list(range(1, n + 1)), [1] * n)
                for n in torch.randint(5, 21, (40,), generator=g).tolist()]
    layout = Layout(lambda epoch: packed_rows(shuffled(examples, 5, epoch), 32, pad_id=0),
                    full_loss, token_count, "32 tokens")
    sizes = {len(layout.epoch_rows(e)["input_ids"]) for e in range(6)}
    assert len(sizes) > 1  # shuffles pack differently
    whole = list(itertools.islice(layout.steps(0, 3), 40))
    for step in (1, 7, 13, 29):
        again = list(itertools.islice(layout.steps(step * 3, 3), 40 - step))
        assert all(torch.equal(a["input_ids"], b["input_ids"]) and torch.equal(a["mask"], b["mask"])
                   for a, b in zip(again, whole[step:], strict=True))


def test_training_is_deterministic_on_cpu(arithmetic_data, tmp_path):
    a = train_student(arithmetic_data / "train.jsonl", tmp_path / "a", _config(), seed=3)
    b = train_student(arithmetic_data / "train.jsonl", tmp_path / "b", _config(), seed=3)
    c = train_student(arithmetic_data / "train.jsonl", tmp_path / "c", _config(), seed=4)
    losses = [[m["loss"] for m in metrics(tmp_path / run)] for run in "ab"]
    assert losses[0] == losses[1]
    assert a["final_loss"] == b["final_loss"] != c["final_loss"]
    wa, wb = _weights(tmp_path / "a" / "model"), _weights(tmp_path / "b" / "model")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_a_finished_run_is_not_retrained_and_a_changed_config_starts_over(arithmetic_data,
                                                                          tmp_path):
    records = arithmetic_data / "train.jsonl"
    first = train_student(records, tmp_path, _config(), seed=1)
    stamp = (tmp_path / "model" / "model.safetensors").stat().st_mtime_ns
    again = train_student(records, tmp_path, _config(), seed=1)
    assert again == first
    assert (tmp_path / "model" / "model.safetensors").stat().st_mtime_ns == stamp
    changed = train_student(records, tmp_path, _config(max_steps=6), seed=1)
    assert changed["steps"] == 6
    assert [m["step"] for m in metrics(tmp_path)] == [2, 4, 6]


def _seed_train(records: Path, out: Path, recipe: Path) -> subprocess.Popen:
    return start_cli("train", records, "--out", out, "--recipe", recipe,
                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.slow
def test_killed_training_resumes_from_its_checkpoint_and_ends_like_an_uninterrupted_run(
        arithmetic_data, tmp_path):
    recipe = write_recipe(tmp_path / "r.toml", RECIPE)
    records, out = arithmetic_data / "train.jsonl", tmp_path / "killed"

    proc = _seed_train(records, out, recipe)
    deadline = time.monotonic() + 120
    while not list((out / "checkpoints").glob("step-*")) and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 2 minutes"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model").exists(), "the run finished before it could be killed"

    resumed = _seed_train(records, out, recipe)
    stdout, stderr = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, stderr
    assert "resuming from step" in stdout
    assert json.loads((out / "summary.json").read_text())["steps"] == 120
    steps = [m["step"] for m in metrics(out)]
    assert steps == list(range(10, 121, 10))  # no step logged twice, none missing

    whole = tmp_path / "whole"
    cfg = load_recipe(recipe)[0].train
    info = train_student(records, whole, cfg, seed=7)
    assert info["steps"] == 120
    assert [m["loss"] for m in metrics(whole)][-1] == metrics(out)[-1]["loss"]
    wk, ww = _weights(out / "model"), _weights(whole / "model")
    assert all(torch.equal(wk[k], ww[k]) for k in wk)


def test_cli_rejects_a_records_file_with_a_broken_line_without_writing(arithmetic_data, tmp_path):
    bad = tmp_path / "bad.jsonl"
    lines = (arithmetic_data / "train.jsonl").read_text().splitlines(keepends=True)
    bad.write_text("".join(lines[:3]) + "{not json}\n" + "".join(lines[3:6]))
    out = tmp_path / "out"
    proc = run_cli("train", bad, "--out", out)
    assert proc.returncode == 2
    assert f"{bad}:4" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists()
