"""The image student's parts, built from configs: a pixel-space denoiser, a tiny text encoder and a
word-level tokenizer, and the pipeline directory they are saved as.

`build_parts(words, shape, seed)` makes a diffusers `UNet2DConditionModel` over RGB pixels (cross-
attention only at the lowest resolutions, where it is cheap on a CPU), a `CLIPTextModel` of a
layer or two and a word-level tokenizer over the captions' words. `save_pipeline` writes them as
a diffusers pipeline directory (model_index.json, unet/, text_encoder/, tokenizer/, scheduler/
with `FlowMatchEulerDiscreteScheduler`, the custom `pipeline.py` that `DiffusionPipeline.
from_pretrained(dir, trust_remote_code=True)` runs) plus `seed.json` with what Seed's sampler needs.
This module knows nothing about training or sampling; seed.endpoints.diffusion samples.
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import diffusers
import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, UNet2DConditionModel
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.normalizers import Lowercase
from tokenizers.pre_tokenizers import WhitespaceSplit
from tokenizers.processors import TemplateProcessing
from transformers import (
    AutoTokenizer,
    CLIPTextConfig,
    CLIPTextModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)

from seed.errors import UserError
from seed.quiet import quiet_progress_bars
from seed.recipe import DiffusionSettings

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SEED_FILE = "seed.json"
PIPELINE_CLASS = "SeedImagePipeline"


@dataclass(frozen=True)
class StudentShape:
    """The from-scratch image student's size: canvas, UNet widths and text encoder."""

    size: int = 16  # canvas (square, pixels)
    channels: tuple[int, ...] = (32, 64, 64)  # per UNet resolution, highest first
    attention: tuple[bool, ...] = (False, False, True)  # cross-attention at each resolution
    layers_per_block: int = 1
    head_dim: int = 16
    text_width: int = 64
    text_layers: int = 1
    max_words: int = 12  # caption tokens (bos + words + eos, padded)


@dataclass
class Sampling:
    """What `seed.json` tells the sampler: sizes, default steps and guidance, quality -> steps."""

    name: str = "seed-image-student"
    sizes: list[tuple[int, int]] = field(default_factory=lambda: [(16, 16)])
    default_steps: int = 12
    default_guidance: float = 3.0
    quality_steps: dict[str, int] = field(
        default_factory=lambda: {"low": 6, "medium": 12, "high": 24})
    objective: str = "rectified_flow"  # or the checkpoint's prediction type (epsilon, ...)


class ImageStudent(torch.nn.Module):
    """The parts of a text-to-image student the loop holds: the UNet and the text encoder, and
    for a latent checkpoint its frozen VAE, its objective (rectified_flow, epsilon or
    v_prediction) and its noise schedule (cumulative alphas)."""

    def __init__(self, unet: Any, text_encoder: Any, vae: Any = None,
                 objective: str = "rectified_flow", alphas: torch.Tensor | None = None) -> None:
        super().__init__()
        self.unet, self.text_encoder, self.vae = unet, text_encoder, vae
        self.objective = objective
        self.register_buffer("alphas", alphas, persistent=False)
        if vae is not None:
            vae.requires_grad_(False)

    @property
    def latent_scale(self) -> int:
        """Pixels per sample element along a side (1 without a VAE)."""
        if self.vae is None:
            return 1
        return int(2 ** (len(self.vae.config.block_out_channels) - 1))

    def forward(self, sample: torch.Tensor, timesteps: torch.Tensor,
                ids: torch.Tensor) -> torch.Tensor:
        text = self.text_encoder(input_ids=ids).last_hidden_state
        out: torch.Tensor = self.unet(sample, timesteps, encoder_hidden_states=text).sample
        return out

def caption_words(caption: str) -> list[str]:
    """A caption's words as the tokenizer splits them: lowercase, on non-letters."""
    return re.findall(r"[a-z0-9]+", caption.lower())


def word_tokenizer(words: list[str], max_words: int) -> PreTrainedTokenizerFast:
    """A word-level tokenizer over `words`: <bos> words <eos>, padded with <pad> to max_words."""
    vocab = {w: i for i, w in enumerate([PAD, BOS, EOS, UNK, *sorted(set(words))])}
    core = Tokenizer(WordLevel(vocab, unk_token=UNK))
    core.pre_tokenizer = WhitespaceSplit()
    core.normalizer = Lowercase()
    core.post_processor = TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])])
    return PreTrainedTokenizerFast(tokenizer_object=core, bos_token=BOS, eos_token=EOS,
                                   pad_token=PAD, unk_token=UNK, model_max_length=max_words)


def text_encoder_config(shape: StudentShape, vocab_size: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=shape.text_width, intermediate_size=2 * shape.text_width,
        num_hidden_layers=shape.text_layers, num_attention_heads=max(1, shape.text_width // 32),
        max_position_embeddings=shape.max_words, projection_dim=shape.text_width,
        pad_token_id=0, bos_token_id=1, eos_token_id=2)


def unet_config(shape: StudentShape) -> dict[str, Any]:
    down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in shape.attention)
    up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(shape.attention))
    return {
        "sample_size": shape.size, "in_channels": 3, "out_channels": 3,
        "block_out_channels": shape.channels, "down_block_types": down, "up_block_types": up,
        "layers_per_block": shape.layers_per_block, "cross_attention_dim": shape.text_width,
        "attention_head_dim": shape.head_dim, "norm_num_groups": 8,
        "mid_block_type": "UNetMidBlock2DCrossAttn" if shape.attention[-1] else None,
    }


def build_parts(words: list[str], shape: StudentShape,
                seed: int) -> tuple[UNet2DConditionModel, CLIPTextModel, PreTrainedTokenizerFast]:
    """A random-weight denoiser, text encoder and tokenizer for captions over `words`."""
    torch.manual_seed(seed)
    tokenizer = word_tokenizer(words, shape.max_words)
    text_encoder = CLIPTextModel(text_encoder_config(shape, len(tokenizer)))
    unet = UNet2DConditionModel(**unet_config(shape))
    return unet, text_encoder, tokenizer


def flow_scheduler() -> Any:
    """The rectified-flow scheduler a saved pipeline names (shift 1: sigmas straight 1 to 0)."""
    scheduler: Any = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=1.0)
    return scheduler


def save_pipeline(directory: Path, unet: torch.nn.Module, text_encoder: torch.nn.Module,
                  tokenizer: PreTrainedTokenizerBase, sampling: Sampling) -> Path:
    """Write a pixel-space pipeline directory that diffusers and Seed both load."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    unet.save_pretrained(directory / "unet")  # type: ignore[operator]
    text_encoder.save_pretrained(directory / "text_encoder")  # type: ignore[operator]
    tokenizer.save_pretrained(directory / "tokenizer")
    flow_scheduler().save_pretrained(directory / "scheduler")
    code = resources.files("seed.endpoints").joinpath("diffusion_pipeline.py").read_text()
    (directory / "pipeline.py").write_text(code)
    index = {"_class_name": ["pipeline", PIPELINE_CLASS],
             "_diffusers_version": diffusers.__version__,
             "unet": ["diffusers", "UNet2DConditionModel"],
             "text_encoder": ["transformers", "CLIPTextModel"],
             "tokenizer": ["transformers", "PreTrainedTokenizerFast"],
             "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}
    (directory / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
    write_sampling(directory, sampling)
    return directory


def write_sampling(directory: Path, sampling: Sampling) -> None:
    data = asdict(sampling)
    data["sizes"] = [list(s) for s in sampling.sizes]
    (Path(directory) / SEED_FILE).write_text(json.dumps(data, indent=2) + "\n")


def read_sampling(directory: Path) -> Sampling | None:
    """The directory's seed.json, or None when Seed did not write one."""
    path = Path(directory) / SEED_FILE
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    data["sizes"] = [tuple(s) for s in data["sizes"]]
    return Sampling(**data)


def student_shape(settings: DiffusionSettings, max_words: int) -> StudentShape:
    """The from-scratch student `[train.diffusion]` describes, for captions of `max_words`."""
    if len(settings.attention) != len(settings.channels):
        raise UserError(f"train.diffusion.attention has {len(settings.attention)} entries and "
                        f"channels {len(settings.channels)}; give one per resolution")
    if settings.size % 2 ** (len(settings.channels) - 1):
        raise UserError(f"train.diffusion.size = {settings.size} does not halve "
                        f"{len(settings.channels) - 1} times; use a multiple of "
                        f"{2 ** (len(settings.channels) - 1)}")
    return StudentShape(size=settings.size, channels=tuple(settings.channels),
                        attention=tuple(settings.attention),
                        layers_per_block=settings.layers_per_block, head_dim=settings.head_dim,
                        text_width=settings.text_width, text_layers=settings.text_layers,
                        max_words=max_words)


def sampling_of(name: str, settings: DiffusionSettings) -> Sampling:
    """What a saved from-scratch student tells its sampler."""
    steps = settings.sample_steps
    return Sampling(name=name, sizes=[(settings.size, settings.size)], default_steps=steps,
                    default_guidance=settings.guidance,
                    quality_steps={"low": max(1, steps // 2), "medium": steps, "high": 2 * steps})


def load_image_student(directory: Path) -> tuple[ImageStudent, PreTrainedTokenizerBase]:
    """The trainable parts of a pixel pipeline directory Seed wrote, and its tokenizer."""
    directory = Path(directory)
    with quiet_progress_bars():
        unet = UNet2DConditionModel.from_pretrained(directory / "unet")
        text_encoder = CLIPTextModel.from_pretrained(directory / "text_encoder")
    tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer")
    return ImageStudent(unet, text_encoder), tokenizer


def is_pipeline(directory: Path) -> bool:
    return (Path(directory) / "model_index.json").is_file()


def cumulative_alphas(scheduler: dict[str, Any]) -> torch.Tensor:
    """alphas_cumprod of a DDPM-family scheduler config (linear or scaled_linear betas)."""
    n = int(scheduler.get("num_train_timesteps", 1000))
    start, end = float(scheduler.get("beta_start", 0.0001)), float(scheduler.get("beta_end", 0.02))
    if scheduler.get("beta_schedule", "linear") == "scaled_linear":
        betas = torch.linspace(start**0.5, end**0.5, n, dtype=torch.float64) ** 2
    else:
        betas = torch.linspace(start, end, n, dtype=torch.float64)
    return torch.cumprod(1 - betas, 0).float()


def load_checkpoint_student(directory: Path, setting: str = "train.student.checkpoint"
                            ) -> tuple[ImageStudent, PreTrainedTokenizerBase]:
    """A diffusers Stable Diffusion-style directory (vae/, unet/, text_encoder/, tokenizer/,
    scheduler/) as a latent student: its VAE frozen, its text encoder frozen, its objective the
    scheduler's (`prediction_type`, or rectified flow for a flow-matching scheduler)."""
    directory = Path(directory)
    missing = [p for p in ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
               if not (directory / p).is_dir()]
    if missing:
        raise UserError(f"{setting} = {str(directory)!r}: not a latent diffusers pipeline "
                        f"(no {', '.join(missing)}/); give a Stable Diffusion-style directory")
    with quiet_progress_bars():
        unet = UNet2DConditionModel.from_pretrained(directory / "unet")
        text_encoder = CLIPTextModel.from_pretrained(directory / "text_encoder")
        vae = AutoencoderKL.from_pretrained(directory / "vae")
    tokenizer = AutoTokenizer.from_pretrained(directory / "tokenizer")
    text_encoder.requires_grad_(False)
    scheduler = json.loads((directory / "scheduler" / "scheduler_config.json").read_text())
    if "FlowMatch" in scheduler.get("_class_name", ""):
        return ImageStudent(unet, text_encoder, vae), tokenizer
    objective = scheduler.get("prediction_type", "epsilon")
    if objective not in ("epsilon", "v_prediction"):
        raise UserError(f"{setting}: prediction_type {objective!r} is not trained here; "
                        "epsilon and v_prediction are")
    return ImageStudent(unet, text_encoder, vae, objective, cumulative_alphas(scheduler)), tokenizer


def save_checkpoint_student(path: Path, base: Path, model: ImageStudent) -> None:
    """A copy of the checkpoint directory `base` with the student's UNet and text encoder."""
    shutil.copytree(base, path, dirs_exist_ok=True)
    with quiet_progress_bars():
        for name, part in (("unet", model.unet), ("text_encoder", model.text_encoder)):
            shutil.rmtree(path / name)
            part.save_pretrained(path / name)
