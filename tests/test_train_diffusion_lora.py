"""Latent LoRA through the diffusion mode: a tiny Stable Diffusion-style checkpoint built from
configs fine-tunes with peft adapters on its UNet's attention (its own VAE latents and epsilon
objective), and the merged result reloads offline with diffusers and draws."""

from __future__ import annotations

import json

import pytest
import torch
from diffusers import DiffusionPipeline, StableDiffusionPipeline
from safetensors.torch import load_file

from helpers.images import tiny_latent_pipeline, write_shapes
from seed.endpoints.diffusion import DrawRequest, ImagePipeline
from seed.recipe import TrainConfig
from seed.train import train_student

UNET = "unet/diffusion_pytorch_model.safetensors"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    before = torch.get_num_threads()
    base = tmp_path_factory.mktemp("sd")
    checkpoint = tiny_latent_pipeline(base / "tiny-sd")
    records = write_shapes(base / "data" / "train.jsonl", 16, size=32)
    config = TrainConfig(mode="diffusion", max_steps=6, batch_size=4, warmup_steps=1, lr=1e-2,
                         checkpoint_every=100, log_every=2, threads=1,
                         student={"checkpoint": str(checkpoint)},
                         lora={"rank": 4, "alpha": 8},
                         diffusion={"ema_decay": 0.0})
    out = base / "train"
    summary = train_student(records, out, config, seed=3)
    yield checkpoint, out, summary
    torch.set_num_threads(before)


def test_only_the_unet_attention_adapters_train_and_merge_into_the_saved_unet(run):
    checkpoint, out, summary = run
    assert summary["lora"] and summary["steps"] == 6
    adapter = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 4
    base, merged = load_file(checkpoint / UNET), load_file(out / "model" / UNET)
    changed = {k for k in base if not torch.equal(base[k], merged[k])}
    assert changed and all(any(p in k for p in ("to_q", "to_k", "to_v", "to_out.0"))
                           for k in changed)
    for part in ("vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"):
        a, b = load_file(checkpoint / part), load_file(out / "model" / part)
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_result_reloads_offline_with_diffusers_and_draws(run):
    _, out, _ = run
    pipeline = DiffusionPipeline.from_pretrained(out / "model")
    assert isinstance(pipeline, StableDiffusionPipeline)
    image = pipeline("red circle left of blue square", num_inference_steps=2,
                     generator=torch.Generator().manual_seed(0)).images[0]
    assert image.size == (32, 32)
    ours = ImagePipeline.load(out / "model")
    assert ours.objective == "epsilon" and ours.sizes == [(32, 32)]
    assert ours.draw([DrawRequest("red circle left of blue square", seed=0, steps=2)])[0].size \
        == (32, 32)


def test_the_untrained_copy_is_the_checkpoint(run):
    checkpoint, out, _ = run
    assert all(torch.equal(a, b) for a, b in zip(load_file(checkpoint / UNET).values(),
                                                  load_file(out / "initial" / UNET).values(),
                                                  strict=True))
