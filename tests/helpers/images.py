"""Tiny image pipelines for tests: an untrained Seed image student saved as a pipeline directory.

Built from configs in well under a second (a 16x16 pixel UNet, a one-layer text encoder, a
word-level tokenizer over the shapes captions' words); loadable with
`seed.endpoints.diffusion.ImagePipeline.load` and diffusers' `DiffusionPipeline.from_pretrained`.
The weights are noise: what it draws is for a test to pass through a real sampler or server.
"""

from __future__ import annotations

from pathlib import Path

from seed.train.diffusion_models import Sampling, StudentShape, build_parts, save_pipeline

WORDS = ["red", "green", "blue", "yellow", "circle", "square", "triangle", "left", "of"]


def tiny_image_pipeline(directory: Path, size: int = 16, seed: int = 0,
                        sizes: list[tuple[int, int]] | None = None) -> Path:
    """An untrained pixel-space pipeline directory at `directory` (made if missing); returns it.

    `sizes` lists the (width, height) it accepts (default only size x size; the UNet is fully
    convolutional, so multiples of 4 work).
    """
    shape = StudentShape(size=size, channels=(16, 32), attention=(False, True), head_dim=8,
                         text_width=32, text_layers=1)
    unet, text_encoder, tokenizer = build_parts(WORDS, shape, seed)
    sampling = Sampling(name=Path(directory).name, sizes=sizes or [(size, size)],
                        default_steps=4, default_guidance=2.0,
                        quality_steps={"low": 2, "medium": 4, "high": 8})
    return save_pipeline(Path(directory), unet, text_encoder, tokenizer, sampling)
