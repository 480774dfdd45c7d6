"""The image student's sampler: a pipeline directory loaded in process, drawn step by step.

`ImagePipeline.load(directory)` reads a directory Seed trained (seed.train.diffusion_models) or a
standard diffusers Stable Diffusion directory (latent: its VAE decodes; its scheduler's
`prediction_type` says what the UNet predicts). `start(requests)` encodes the captions and draws
each request's seeded noise into one `Row` per image; `step(rows)` runs one denoising step for all
the given rows (one size) in one batched UNet forward, each row at its own timestep and step count,
classifier-free guidance as a doubled batch; `image(row)` and `preview(row)` turn a row into a
picture. A server batches requests that join at step boundaries with these; `draw` is the plain
loop. The same seed and request give the same image alone or in a batch (to float tolerance).

Rectified flow (Seed's objective): x_sigma = (1 - sigma) x0 + sigma noise, the UNet predicts
noise - x0, Euler steps on sigmas linspace(1, 0, steps + 1), what the saved `pipeline.py` runs
through diffusers. Epsilon and v-prediction checkpoints step with DDIM (eta 0) over their own
alphas. This module knows nothing about HTTP or training.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from PIL import Image
from transformers import AutoTokenizer, CLIPTextModel, PreTrainedTokenizerBase

from seed.endpoints.diffusion_pipeline import encode_captions, to_pil
from seed.errors import UserError
from seed.quiet import quiet_progress_bars
from seed.train.diffusion_models import Sampling, cumulative_alphas, read_sampling


@dataclass
class DrawRequest:
    """One image to draw. None means the pipeline's default (a random seed for `seed`)."""

    prompt: str
    negative_prompt: str = ""
    seed: int | None = None
    steps: int | None = None
    guidance: float | None = None
    width: int | None = None
    height: int | None = None


@dataclass
class Row:
    """One image being drawn: its sample, its caption's encodings and where it is in its steps."""

    request: DrawRequest
    seed: int
    guidance: float
    width: int
    height: int
    schedule: torch.Tensor  # the noise levels to step through, then the end (0 / timestep -1)
    sample: torch.Tensor  # (1, C, h, w), float32
    cond: torch.Tensor  # (1, L, D) caption encoding
    uncond: torch.Tensor  # (1, L, D) negative or empty caption encoding
    index: int = 0
    estimate: torch.Tensor | None = field(default=None, repr=False)  # the current clean estimate

    @property
    def steps(self) -> int:
        return len(self.schedule) - 1

    @property
    def done(self) -> bool:
        return self.index >= self.steps


class ImagePipeline:
    """A text-to-image pipeline directory on one device, with a stepwise batched sampler."""

    # diffusers' models are untyped for mypy (their attributes come from configs at run time).
    def __init__(self, name: str, unet: Any, text_encoder: Any,
                 tokenizer: PreTrainedTokenizerBase, sampling: Sampling,
                 vae: Any = None, alphas: torch.Tensor | None = None,
                 device: str | torch.device = "cpu") -> None:
        self.name = name
        self.unet: Any = unet
        self.text_encoder: Any = text_encoder
        self.tokenizer, self.vae = tokenizer, vae
        self.sizes: list[tuple[int, int]] = list(sampling.sizes)
        self.default_steps = sampling.default_steps
        self.default_guidance = sampling.default_guidance
        self.quality_steps = dict(sampling.quality_steps)
        self.objective = sampling.objective
        self.alphas = alphas  # cumulative alphas of an epsilon / v-prediction checkpoint
        self.device = torch.device(device)

    @classmethod
    def load(cls, directory: str | Path, device: str | torch.device = "cpu",
             dtype: torch.dtype | None = None) -> ImagePipeline:
        """Load a pipeline directory; a directory that is not one is a UserError naming it."""
        directory = Path(directory)
        if not (directory / "model_index.json").is_file() or not (directory / "unet").is_dir():
            raise UserError(f"{directory}: not an image pipeline directory (no model_index.json "
                            "and unet/); give a directory seed train wrote or a diffusers one")
        dtype = dtype or (torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32)
        with quiet_progress_bars():  # transformers draws a bar per weights file
            unet: Any = UNet2DConditionModel.from_pretrained(directory / "unet",
                                                             torch_dtype=dtype)
            text_encoder: Any = CLIPTextModel.from_pretrained(directory / "text_encoder",
                                                              dtype=dtype)
            vae: Any = (AutoencoderKL.from_pretrained(directory / "vae", torch_dtype=dtype)
                        if (directory / "vae").is_dir() else None)
        tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer")
        sampling, alphas = read_sampling(directory), None
        scheduler = json.loads((directory / "scheduler" / "scheduler_config.json").read_text())
        if sampling is None:
            sampling = checkpoint_sampling(directory.name, unet, vae, scheduler)
        if sampling.objective != "rectified_flow":
            alphas = cumulative_alphas(scheduler)
        pipeline = cls(directory.name, unet, text_encoder, tokenizer, sampling, vae, alphas,
                       device)
        parts: list[Any] = [unet, text_encoder, vae]
        for part in parts:
            if part is not None:
                part.to(pipeline.device).eval().requires_grad_(False)
        return pipeline

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    def start(self, requests: list[DrawRequest]) -> list[Row]:
        """One row per request: its caption encodings and seeded noise, before the first step."""
        if not requests:
            return []
        cond = self.encode([r.prompt for r in requests])
        uncond = self.encode([r.negative_prompt for r in requests])
        return [self.start_row(r, cond[i:i + 1], uncond[i:i + 1]) for i, r in enumerate(requests)]

    def start_row(self, request: DrawRequest, cond: torch.Tensor, uncond: torch.Tensor) -> Row:
        width = request.width or self.sizes[0][0]
        height = request.height or self.sizes[0][1]
        if (width, height) not in self.sizes:
            supported = ", ".join(f"{w}x{h}" for w, h in self.sizes)
            raise UserError(f"size {width}x{height}: {self.name} draws {supported}; ask for one "
                            "of those")
        steps = request.steps or self.default_steps
        if steps < 1:
            raise UserError(f"steps = {steps}: give at least 1 denoising step")
        seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
        scale = self.latent_scale
        noise = torch.randn((1, self.unet.config.in_channels, height // scale, width // scale),
                            generator=torch.Generator().manual_seed(seed))
        return Row(request, seed, self.default_guidance if request.guidance is None
                   else request.guidance, width, height, self.schedule(steps),
                   noise.to(self.device), cond, uncond)

    def schedule(self, steps: int) -> torch.Tensor:
        """Rectified flow: sigmas from 1 to 0. DDIM: timesteps from the last down to -1 (clean)."""
        if self.objective == "rectified_flow":
            return torch.linspace(1.0, 0.0, steps + 1)
        assert self.alphas is not None
        last = len(self.alphas) - 1
        times = torch.linspace(last, 0, steps).round().long().tolist()
        return torch.tensor([*times, -1])

    @property
    def latent_scale(self) -> int:
        if self.vae is None:
            return 1
        return int(2 ** (len(self.vae.config.block_out_channels) - 1))

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """Captions -> the text encoder's hidden states (padded to the tokenizer's length)."""
        return encode_captions(self.tokenizer, self.text_encoder, prompts,
                               self.device).to(self.dtype)

    @torch.no_grad()
    def step(self, rows: list[Row]) -> None:
        """One denoising step for every unfinished row, in one batched (doubled) forward."""
        rows = [r for r in rows if not r.done]
        if not rows:
            return
        if len({(r.width, r.height) for r in rows}) > 1:
            raise ValueError("rows of one step must share one size")
        sample = torch.cat([r.sample for r in rows])
        levels = torch.stack([r.schedule[r.index] for r in rows])
        timesteps = (levels * 1000.0 if self.objective == "rectified_flow" else levels).to(
            self.device)
        x = torch.cat([sample, sample]).to(self.dtype)
        text = torch.cat([torch.cat([r.uncond for r in rows]), torch.cat([r.cond for r in rows])])
        out = self.unet(x, torch.cat([timesteps, timesteps]), encoder_hidden_states=text).sample
        uncond, cond = out.float().chunk(2)
        guidance = torch.tensor([r.guidance for r in rows], device=self.device).view(-1, 1, 1, 1)
        guided = uncond + guidance * (cond - uncond)
        for i, row in enumerate(rows):
            self.advance(row, guided[i:i + 1])

    def advance(self, row: Row, prediction: torch.Tensor) -> None:
        """Move one row a step on, given the guided prediction at its current level."""
        now, then = row.schedule[row.index], row.schedule[row.index + 1]
        x = row.sample
        if self.objective == "rectified_flow":
            row.estimate = x - float(now) * prediction
            row.sample = x + (float(then) - float(now)) * prediction
        else:
            x0, eps = self.ddim_parts(x, prediction, int(now))
            a_then = self.alpha(int(then))
            row.estimate = x0
            row.sample = a_then.sqrt() * x0 + (1 - a_then).sqrt() * eps
        row.index += 1

    def alpha(self, t: int) -> torch.Tensor:
        assert self.alphas is not None
        return self.alphas[t] if t >= 0 else torch.tensor(1.0)

    def ddim_parts(self, x: torch.Tensor, prediction: torch.Tensor,
                   t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(clean estimate, noise estimate) from an epsilon or v prediction at timestep t."""
        a = self.alpha(t)
        if self.objective == "v_prediction":
            x0 = a.sqrt() * x - (1 - a).sqrt() * prediction
            eps = (1 - a).sqrt() * x + a.sqrt() * prediction
        else:
            eps = prediction
            x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        return x0, eps

    def image(self, row: Row) -> Image.Image:
        """The finished image of a row."""
        if not row.done:
            raise ValueError("the row has steps left; step it until row.done")
        return self.decode(row.sample)

    def preview(self, row: Row) -> Image.Image:
        """The row's current estimate of the clean image (its noise before the first step)."""
        return self.decode(row.sample if row.estimate is None else row.estimate)

    @torch.no_grad()
    def decode(self, sample: torch.Tensor) -> Image.Image:
        if self.vae is not None:
            latents = sample.to(self.vae.dtype) / self.vae.config.scaling_factor
            sample = self.vae.decode(latents).sample
        return to_pil(sample)[0]

    def draw(self, requests: list[DrawRequest]) -> list[Image.Image]:
        """Draw every request: start, step all rows of one size together until done, images."""
        rows = self.start(requests)
        for size in {(r.width, r.height) for r in rows}:
            group = [r for r in rows if (r.width, r.height) == size]
            while not all(r.done for r in group):
                self.step(group)
        return [self.image(r) for r in rows]


def checkpoint_sampling(name: str, unet: Any, vae: Any,
                        scheduler: dict[str, Any]) -> Sampling:
    """Sampling defaults for a diffusers directory Seed did not write (no seed.json)."""
    scale = 1 if vae is None else 2 ** (len(vae.config.block_out_channels) - 1)
    size = int(unet.config.sample_size) * scale
    if "FlowMatch" in scheduler.get("_class_name", ""):
        objective = "rectified_flow"
    else:
        objective = scheduler.get("prediction_type", "epsilon")
    return Sampling(name=name, sizes=[(size, size)], default_steps=25, default_guidance=7.5,
                    quality_steps={"low": 10, "medium": 25, "high": 50}, objective=objective)

