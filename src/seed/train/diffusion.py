"""The diffusion mode: a text-to-image student's data layout over image records and its loss.

Rows are the images as uint8 pixels (N, 3, S, S) and their captions as word ids (N, L); each
epoch is shuffled by the seed, and `caption_dropout` of its captions, picked by the seed and the
epoch, are the empty caption, so the student also learns the unconditional velocity that
classifier-free guidance needs. The loss is rectified flow's: x_t = (1 - t) x0 + t noise, the UNet
predicts noise - x0 at timestep 1000 t, mean squared error per image; t is logit-normal (mass in
the middle, where the image's layout is decided) or uniform. For a latent checkpoint the pixels
go through its VAE first and its scheduler's prediction type sets the target (latent.py).
`ImageStudent` is the one module the loop trains (UNet + text encoder), `Ema` its weight average.
This module knows nothing about optimizers, devices or checkpoints.
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from seed.errors import UserError
from seed.quiet import quiet_progress_bars
from seed.recipe import TrainConfig
from seed.records import ImageRecord, read_image_records
from seed.train.checkpoints import save_dir_atomic
from seed.train.diffusion_models import (
    ImageStudent,
    build_parts,
    caption_words,
    is_pipeline,
    load_checkpoint_student,
    load_image_student,
    sampling_of,
    save_checkpoint_student,
    save_pipeline,
    student_shape,
)
from seed.train.layout import Layout, ModeInputs, Rows, StudentKind
from seed.train.runtime import Runtime


def to_unit(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 pixels -> floats in [-1, 1]."""
    return pixels.float() / 127.5 - 1.0


def flow_times(n: int, schedule: str, device: torch.device) -> torch.Tensor:
    """n noise levels in (0, 1): logit-normal (sigmoid of a standard normal) or uniform."""
    if schedule == "logit_normal":
        return torch.sigmoid(torch.randn(n, device=device))
    return torch.rand(n, device=device)


def flow_loss(model: torch.nn.Module, rows: Rows, schedule: str = "logit_normal"
              ) -> tuple[torch.Tensor, int]:
    """Rectified flow's loss summed over the rows' images (mean squared error per image)."""
    return denoising_loss(model, to_unit(rows["pixels"]), rows["ids"], "rectified_flow", None,
                          schedule)


def denoising_loss(model: torch.nn.Module, x0: torch.Tensor, ids: torch.Tensor, objective: str,
                   alphas: torch.Tensor | None, schedule: str) -> tuple[torch.Tensor, int]:
    """The summed per-sample MSE of `objective` on clean samples x0 (pixels or latents).

    rectified_flow: x_t = (1 - t) x0 + t noise at timestep 1000 t, target noise - x0.
    epsilon / v_prediction (DDPM-family checkpoints): a uniform integer timestep, x_t =
    sqrt(a) x0 + sqrt(1 - a) noise, target noise or sqrt(a) noise - sqrt(1 - a) x0.
    """
    noise = torch.randn_like(x0)
    if objective == "rectified_flow":
        t = flow_times(len(x0), schedule, x0.device).view(-1, 1, 1, 1)
        x_t, target, timesteps = (1 - t) * x0 + t * noise, noise - x0, t.flatten() * 1000.0
    else:
        assert alphas is not None
        step = torch.randint(0, len(alphas), (len(x0),), device=x0.device)
        a = alphas.to(x0.device)[step].view(-1, 1, 1, 1)
        x_t, timesteps = a.sqrt() * x0 + (1 - a).sqrt() * noise, step
        target = noise if objective == "epsilon" else a.sqrt() * noise - (1 - a).sqrt() * x0
    prediction = model(x_t, timesteps, ids)
    per_sample = (prediction.float() - target).pow(2).mean(dim=tuple(range(1, x0.dim())))
    return per_sample.sum(), len(x0)


def drop_captions(ids: torch.Tensor, empty: torch.Tensor, rate: float, seed: int,
                  epoch: int) -> torch.Tensor:
    """A copy of `ids` with a seeded `rate` of its rows replaced by the empty caption's ids."""
    if rate == 0:
        return ids
    g = torch.Generator().manual_seed(seed * 7_919 + epoch)
    dropped = torch.rand(len(ids), generator=g) < rate
    out = ids.clone()
    out[dropped] = empty
    return out


def epoch_rows(samples: Rows, empty: torch.Tensor, caption_dropout: float,
               seed: int) -> Callable[[int], Rows]:
    """Each epoch's rows (images or latents, and "ids"): in the seeded order of that epoch,
    `caption_dropout` of the captions emptied."""

    def rows(epoch: int) -> Rows:
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        order = torch.randperm(len(samples["ids"]), generator=g)
        out = {k: v[order] for k, v in samples.items()}
        out["ids"] = drop_captions(out["ids"], empty, caption_dropout, seed, epoch)
        return out

    return rows


class Ema:
    """An exponential moving average of a module's trainable parameters (what the student ships).

    The average starts as the weights and warms up as min(decay, (1 + n) / (10 + n)), so a short
    run is not dominated by the random start.
    """

    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        self.decay = decay
        self.updates = 0
        self.shadow = {k: p.detach().clone().float() for k, p in model.named_parameters()
                       if p.requires_grad}

    @torch.no_grad()
    def update(self, model: torch.nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, p in model.named_parameters():
            if k in self.shadow:
                self.shadow[k].lerp_(p.detach().float(), 1 - d)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay, self.updates = state["decay"], state["updates"]
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}

    def averaged(self, model: torch.nn.Module) -> torch.nn.Module:
        """A copy of `model` holding the averaged weights."""
        out = copy.deepcopy(model)
        with torch.no_grad():
            for k, p in out.named_parameters():
                if k in self.shadow:
                    p.copy_(self.shadow[k])
        return out


def caption_ids(tokenizer: PreTrainedTokenizerBase, captions: list[str]) -> torch.Tensor:
    """Captions as word ids, padded to the tokenizer's length (what the sampler encodes)."""
    ids: torch.Tensor = tokenizer(captions, padding="max_length", truncation=True,
                                  max_length=tokenizer.model_max_length,
                                  return_tensors="pt").input_ids
    return ids


def image_pixels(records: list[ImageRecord], source: str, size: int) -> torch.Tensor:
    """The records' images as uint8 (N, 3, size, size); another size is resized (box filter)."""
    out = torch.empty((len(records), 3, size, size), dtype=torch.uint8)
    for i, record in enumerate(records):
        image = record.load(source).convert("RGB")
        if image.size != (size, size):
            image = image.resize((size, size), Image.Resampling.BOX)
        out[i] = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)
    return out


def layout(inputs: ModeInputs) -> Layout:
    """The diffusion mode: image records -> pixel rows and caption ids, rectified flow's loss."""
    settings = inputs.config.diffusion
    records: list[Any] = list(inputs.records)  # ImageRecords (the image student's read)
    if not records:
        raise UserError(f"{inputs.source}: no image records to train on; generate some first")
    student: Any = inputs.model
    size = int(student.unet.config.sample_size) * int(student.latent_scale)
    pixels = image_pixels(records, inputs.source, size)
    ids = caption_ids(inputs.tokenizer, [r.prompt for r in records])
    empty = caption_ids(inputs.tokenizer, [""])[0]
    samples = {"pixels": pixels, "ids": ids} if student.vae is None else {
        "latents": encode_latents(student.vae, pixels), "ids": ids}
    rows = epoch_rows(samples, empty, settings.caption_dropout, inputs.seed)
    objective, alphas = student.objective, student.alphas

    def loss(model: torch.nn.Module, batch: Rows) -> tuple[torch.Tensor, int]:
        x0 = to_unit(batch["pixels"]) if "pixels" in batch else batch["latents"]
        return denoising_loss(model, x0, batch["ids"], objective, alphas, settings.timesteps)

    return Layout(epoch_rows=rows, loss=loss, count=lambda batch: len(batch["ids"]),
                  unit=f"one {size}x{size} image", source=inputs.source)


@torch.no_grad()
def encode_latents(vae: Any, pixels: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """Images -> the VAE's scaled latents (the mean of its posterior), once, before training."""
    out = []
    for start in range(0, len(pixels), batch):
        dist = vae.encode(to_unit(pixels[start:start + batch]).to(vae.dtype)).latent_dist
        out.append(dist.mean.float() * vae.config.scaling_factor)
    return torch.cat(out)


def image_student() -> StudentKind:
    """The diffusion mode's student: a text-to-image pipeline directory (diffusion_models)."""
    return StudentKind(
        check=lambda config, runtime: check_image_student(config),
        read=lambda path: list(read_image_records(path)), initial=initial_student,
        save=save_student, saved=is_pipeline, units=lambda batch, pad_id: len(batch["ids"]),
        flops=lambda model, config: None, ema_decay=lambda config: config.diffusion.ema_decay)


def check_image_student(config: TrainConfig) -> None:
    if config.student.checkpoint is None:
        student_shape(config.diffusion, 8)  # refuses a shape that cannot be built


def initial_student(out_dir: Path, records: list[ImageRecord], config: TrainConfig, seed: int,
                    runtime: Runtime) -> tuple[ImageStudent, PreTrainedTokenizerBase]:
    """The untrained student, saved once to out_dir/initial (the eval's baseline) and loaded
    from there by every rank: built from `[train.diffusion]` over the captions' words."""
    initial = out_dir / "initial"
    if config.student.checkpoint:
        base = Path(config.student.checkpoint)
        load_checkpoint_student(base)  # refuses a directory that is not one, before copying
        if runtime.is_main and not is_pipeline(initial):
            save_dir_atomic(initial, lambda tmp: copy_tree(base, tmp))
        runtime.barrier()
        return load_checkpoint_student(initial)
    if not is_pipeline(initial):
        captions = [r.prompt for r in records] + [r.negative_prompt or "" for r in records]
        words = sorted({w for c in captions for w in caption_words(c)})
        longest = max(len(caption_words(c)) for c in captions)
        shape = student_shape(config.diffusion, max(8, longest + 2))
        unet, text_encoder, tokenizer = build_parts(words, shape, seed)
        if runtime.is_main:
            save_student(initial, ImageStudent(unet, text_encoder), tokenizer, config)
    runtime.barrier()
    return load_image_student(initial)


def save_student(path: Path, model: ImageStudent, tokenizer: PreTrainedTokenizerBase,
                 config: TrainConfig) -> None:
    """The student as a pipeline directory, written atomically (a checkpoint's: a copy of it
    with the trained UNet and text encoder)."""
    sampling = sampling_of(path.parent.name, config.diffusion)
    checkpoint = config.student.checkpoint

    def write(tmp: Path) -> None:
        if checkpoint:
            save_checkpoint_student(tmp, Path(checkpoint), model)
            return
        with quiet_progress_bars():
            save_pipeline(tmp, model.unet, model.text_encoder, tokenizer, sampling)

    save_dir_atomic(path, write)


def copy_tree(source: Path, target: Path) -> None:
    shutil.copytree(source, target, dirs_exist_ok=True)
