"""The diffusion mode in the one loop: image records in, a pipeline directory out (and its
untrained copy), EMA weights shipped, metrics logged, a killed run resumed to the same weights."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time

import pytest
import torch
from diffusers import DiffusionPipeline
from safetensors.torch import load_file

from helpers.images import write_shapes
from helpers.training import metrics
from seed.endpoints.diffusion import DrawRequest, ImagePipeline
from seed.recipe import TrainConfig
from seed.train import train_student

TRAIN = {"mode": "diffusion", "max_steps": 12, "batch_size": 8, "warmup_steps": 2, "lr": 2e-3,
         "checkpoint_every": 4, "log_every": 2, "threads": 1,
         "diffusion": {"size": 16, "channels": [8, 16], "attention": [False, True],
                       "head_dim": 8, "text_width": 16, "ema_decay": 0.9, "sample_steps": 3}}


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    return write_shapes(tmp_path_factory.mktemp("images") / "train.jsonl", 48)


@pytest.fixture(scope="module")
def trained(records, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "train"
    return out, train_student(records, out, TrainConfig(**TRAIN), seed=5)


def test_training_writes_a_pipeline_its_untrained_copy_metrics_and_summary(trained):
    out, summary = trained
    assert (summary["steps"], summary["mode"], summary["unit"]) == (12, "diffusion",
                                                                    "one 16x16 image")
    assert summary["tokens"] == 12 * 8  # images seen
    lines = metrics(out)
    assert [m["step"] for m in lines] == [2, 4, 6, 8, 10, 12]
    assert all(m["loss"] > 0 for m in lines)
    for name in ("model", "initial"):
        index = json.loads((out / name / "model_index.json").read_text())
        assert index["scheduler"] == ["diffusers", "FlowMatchEulerDiscreteScheduler"]
        seed_json = json.loads((out / name / "seed.json").read_text())
        assert seed_json["sizes"] == [[16, 16]] and seed_json["default_steps"] == 3
    trained_unet = load_file(out / "model" / "unet" / "diffusion_pytorch_model.safetensors")
    initial_unet = load_file(out / "initial" / "unet" / "diffusion_pytorch_model.safetensors")
    assert trained_unet.keys() == initial_unet.keys()
    assert any(not torch.equal(trained_unet[k], initial_unet[k]) for k in trained_unet)


def test_the_trained_pipeline_draws_in_seed_and_in_diffusers(trained):
    out, _ = trained
    pipeline = ImagePipeline.load(out / "model")
    image = pipeline.draw([DrawRequest("red circle left of blue square", seed=1)])[0]
    theirs = DiffusionPipeline.from_pretrained(out / "model", trust_remote_code=True)
    same = theirs("red circle left of blue square", num_inference_steps=3, guidance_scale=3.0,
                  generator=torch.Generator().manual_seed(1)).images[0]
    assert image.size == same.size == (16, 16)
    assert abs(torch.tensor(list(image.getdata())) - torch.tensor(list(same.getdata()))).max() <= 1


def test_the_final_model_holds_the_ema_weights_not_the_last_step(trained):
    out, _ = trained
    last = sorted((out / "checkpoints").glob("step-*"))[-1]
    state = load_file(last / "model.safetensors")
    ema = {k[4:]: v for k, v in state.items() if k.startswith("ema.")}
    raw = {k: v for k, v in state.items() if not k.startswith("ema.")}
    assert ema.keys() == raw.keys()
    assert any(not torch.equal(ema[k], raw[k]) for k in raw if raw[k].dtype.is_floating_point)


TRAIN_SCRIPT = """
import json, sys
from seed.recipe import TrainConfig
from seed.train import train_student
train_student(sys.argv[1], sys.argv[2], TrainConfig(**json.loads(sys.argv[3])), seed=5)
"""


@pytest.mark.slow
def test_a_killed_run_resumes_from_its_checkpoint_and_ends_with_the_same_weights(records,
                                                                                 trained,
                                                                                 tmp_path):
    out = tmp_path / "killed"
    config = {**TRAIN, "max_steps": 12, "checkpoint_every": 4}
    proc = subprocess.Popen([sys.executable, "-c", TRAIN_SCRIPT, str(records), str(out),
                             json.dumps(config)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 120
    while not list((out / "checkpoints").glob("step-*")) and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 2 minutes"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "model").exists(), "the run finished before it could be killed"
    done = subprocess.run([sys.executable, "-c", TRAIN_SCRIPT, str(records), str(out),
                           json.dumps(config)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "resuming from step" in done.stdout
    assert [m["step"] for m in metrics(out)] == [2, 4, 6, 8, 10, 12]
    whole, _ = trained
    for part in ("unet/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        a, b = load_file(out / "model" / part), load_file(whole / "model" / part)
        for k in a:
            torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
