# mypy: disable-error-code="attr-defined, misc"
# (diffusers registers components as attributes at run time; mypy cannot see them.)
"""The custom diffusers pipeline a Seed image student is saved with (copied to `pipeline.py`).

`DiffusionPipeline.from_pretrained(directory, trust_remote_code=True)` loads it, offline,
outside Seed: it imports only torch, PIL and diffusers. It draws with rectified flow: the UNet
predicts the velocity `noise - image`, Euler steps go from sigma 1 (noise) to 0 (image) through
the directory's `FlowMatchEulerDiscreteScheduler`, and classifier-free guidance runs the empty (or
negative) caption beside the caption in one doubled batch. Each image's noise comes from its own
generator, so `generator=[torch.Generator().manual_seed(s) for s in seeds]` draws what Seed's
sampler (seed.endpoints.diffusion) draws for those seeds. It knows nothing about training.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from PIL import Image


def to_pil(images: torch.Tensor) -> list[Image.Image]:
    """Images in [-1, 1], (N, 3, H, W) -> RGB PIL images."""
    pixels = ((images.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return [Image.fromarray(p.permute(1, 2, 0).cpu().numpy(), "RGB") for p in pixels]


def encode_captions(tokenizer: Any, text_encoder: Any, prompts: list[str],
                    device: torch.device | str) -> torch.Tensor:
    """Captions -> the text encoder's hidden states, padded to the tokenizer's length."""
    ids = tokenizer(prompts, padding="max_length", truncation=True,
                    max_length=tokenizer.model_max_length, return_tensors="pt").input_ids
    hidden: torch.Tensor = text_encoder(input_ids=ids.to(device)).last_hidden_state
    return hidden


class SeedImagePipeline(DiffusionPipeline):
    """Text to image with a pixel-space UNet, a CLIP text encoder and rectified flow."""

    def __init__(self, unet: Any, text_encoder: Any, tokenizer: Any, scheduler: Any) -> None:
        super().__init__()
        self.register_modules(unet=unet, text_encoder=text_encoder, tokenizer=tokenizer,
                              scheduler=scheduler)

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        hidden = encode_captions(self.tokenizer, self.text_encoder, prompts, self.device)
        return hidden.to(self.unet.dtype)

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], negative_prompt: str | list[str] | None = None,
                 num_inference_steps: int = 12, guidance_scale: float = 3.0,
                 height: int | None = None, width: int | None = None,
                 generator: torch.Generator | list[torch.Generator] | None = None,
                 output_type: str = "pil", return_dict: bool = True) -> Any:
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        n = len(prompts)
        negatives = ([negative_prompt or ""] * n if not isinstance(negative_prompt, list)
                     else negative_prompt)
        size = self.unet.config.sample_size
        height, width = height or size, width or size
        generators = generator if isinstance(generator, list) else [generator] * n
        noise = [torch.randn((1, 3, height, width), generator=g) for g in generators]
        sample = torch.cat(noise).to(self.device)
        text = torch.cat([self.encode(negatives), self.encode(prompts)])
        sigmas = torch.linspace(1.0, 0.0, num_inference_steps + 1)[:-1]
        self.scheduler.set_timesteps(sigmas=sigmas.tolist(), device=self.device)
        for t in self.progress_bar(self.scheduler.timesteps):
            x = torch.cat([sample, sample]).to(self.unet.dtype)
            v = self.unet(x, t.expand(2 * n), encoder_hidden_states=text).sample.float()
            uncond, cond = v.chunk(2)
            sample = self.scheduler.step(uncond + guidance_scale * (cond - uncond), t,
                                         sample).prev_sample
        images: Any = sample if output_type == "pt" else to_pil(sample)
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)
