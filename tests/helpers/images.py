"""Tiny image pipelines for tests (an untrained Seed image student, a Stable Diffusion-style latent
one) and shapes teacher image records to train them on.

Built from configs in well under a second (a 16x16 pixel UNet, a one-layer text encoder, a
word-level tokenizer over the shapes captions' words); loadable with
`seed.endpoints.diffusion.ImagePipeline.load` and diffusers' `DiffusionPipeline.from_pretrained`.
The weights are noise: what it draws is for a test to pass through a real sampler or server.
"""

from __future__ import annotations

import io
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextModel

from seed.endpoints.shapes import Shapes
from seed.generate.image_files import ImageRecordWriter
from seed.recipe import ShapesConfig
from seed.records import ImageRecord
from seed.train.diffusion_models import (
    Sampling,
    StudentShape,
    build_parts,
    save_pipeline,
    text_encoder_config,
    word_tokenizer,
)

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


def tiny_latent_pipeline(directory: Path, size: int = 32, seed: int = 0) -> Path:
    """An untrained Stable Diffusion-style directory (AutoencoderKL, UNet, CLIP text encoder,
    word-level tokenizer, DDIM epsilon scheduler) built from configs, as `StableDiffusionPipeline`
    saves it: what a latent checkpoint looks like to the diffusion mode, at `size` pixels."""
    torch.manual_seed(seed)
    shape = StudentShape(text_width=32, text_layers=1)
    tokenizer = word_tokenizer(WORDS, shape.max_words)
    text_encoder = CLIPTextModel(text_encoder_config(shape, len(tokenizer)))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
                        block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=8,
                        sample_size=size)
    unet = UNet2DConditionModel(sample_size=size // 2, in_channels=4, out_channels=4,
                                block_out_channels=(16, 32), layers_per_block=1,
                                down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
                                cross_attention_dim=32, attention_head_dim=8, norm_num_groups=8)
    scheduler = DDIMScheduler(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                              prediction_type="epsilon", clip_sample=False, steps_offset=1)
    pipeline = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                       unet=unet, scheduler=scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(directory)
    return Path(directory)


def write_shapes(path: Path, count: int, size: int = 16, seed: int = 3) -> Path:
    """`count` shapes teacher images (training compositions) as image records at `path`."""
    shapes = Shapes(ShapesConfig(size=size))
    with ImageRecordWriter(path) as writer:
        for spec in shapes.specs("train", count, seed=seed):
            buf = io.BytesIO()
            shapes.draw(spec).save(buf, format="PNG")
            writer.write([ImageRecord.new(shapes.caption(spec), writer.store(buf.getvalue()),
                                          meta={"spec": spec})])
    return path
