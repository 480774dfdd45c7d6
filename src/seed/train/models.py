"""The student: a Llama-architecture `transformers` model of a named size, or a local checkpoint.

Sizes are small on purpose: on a 2-core CPU, how many examples a student sees in the time budget
matters more than its width, so the quickstart uses the smallest size that still learns its task.
This module builds and loads models; it knows nothing about data or the training loop.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedModel,
)

from seed.errors import UserError, first_line
from seed.quiet import quiet_progress_bars
from seed.recipe import StudentConfig

# hidden size, layers, attention heads, MLP width; names grow by roughly 4x in parameters.
SIZES: dict[str, dict[str, int]] = {
    "nano": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "intermediate_size": 192},
    "tiny": {"hidden_size": 96, "num_hidden_layers": 3, "num_attention_heads": 4,
             "intermediate_size": 288},
    "small": {"hidden_size": 192, "num_hidden_layers": 4, "num_attention_heads": 6,
              "intermediate_size": 576},
    "base": {"hidden_size": 384, "num_hidden_layers": 6, "num_attention_heads": 6,
             "intermediate_size": 1152},
    "medium": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12,
               "intermediate_size": 2304},
}


def student_config(size: str, vocab_size: int, max_positions: int, pad_token_id: int,
                   eos_token_id: int) -> LlamaConfig:
    """The LlamaConfig of a named size for a tokenizer of `vocab_size` tokens."""
    if size not in SIZES:
        raise UserError(f"train.student.size = {size!r}: use one of {', '.join(SIZES)}")
    shape = SIZES[size]
    return LlamaConfig(
        vocab_size=vocab_size,
        max_position_embeddings=max_positions,
        pad_token_id=pad_token_id,
        eos_token_id=eos_token_id,
        bos_token_id=None,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        hidden_size=shape["hidden_size"],
        num_hidden_layers=shape["num_hidden_layers"],
        num_attention_heads=shape["num_attention_heads"],
        intermediate_size=shape["intermediate_size"],
    )


@dataclass(frozen=True)
class StudentShape:
    """What bounds a student's memory and input, read before any weights are loaded."""

    hidden_size: int
    layers: int
    vocab_size: int | None  # None: a student built from scratch (its tokenizer is not trained yet)
    context: int | None  # max_position_embeddings of a checkpoint; None: built to fit seq_len


def student_shape(student: StudentConfig) -> StudentShape:
    """The shape of the student `train.student` names: a size, or a checkpoint's config.json."""
    if not student.checkpoint:
        if student.size not in SIZES:
            raise UserError(f"train.student.size = {student.size!r}: use one of "
                            f"{', '.join(SIZES)}")
        shape = SIZES[student.size]
        return StudentShape(shape["hidden_size"], shape["num_hidden_layers"], None, None)
    path = Path(student.checkpoint)
    if not (path / "config.json").is_file():
        raise UserError(f"train.student.checkpoint = {str(path)!r}: not a model directory (no "
                        "config.json); check the path")
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
    except (*LOAD_ERRORS, TypeError) as e:
        raise UserError(f"train.student.checkpoint = {str(path)!r}: its config.json does not "
                        f"load ({first_line(e)}); point it at a transformers model directory"
                        ) from None
    text = getattr(config, "text_config", None) or config

    def number(name: str) -> int | None:
        value = getattr(text, name, None)
        return value if isinstance(value, int) and value > 0 else None

    return StudentShape(number("hidden_size") or 1, number("num_hidden_layers") or 1,
                        number("vocab_size"), number("max_position_embeddings"))


def build_student(config: LlamaConfig, seed: int) -> LlamaForCausalLM:
    """A randomly initialised student; the same seed gives the same weights."""
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = config.pad_token_id
    model.generation_config.eos_token_id = config.eos_token_id
    return model


# What transformers and safetensors raise for a directory whose files are missing or damaged.
LOAD_ERRORS = (OSError, ValueError, KeyError, RuntimeError, SafetensorError)


def load_student(path: str | Path, setting: str | None = None,
                 fix: str = "point it at a saved transformers model", **kwargs: Any
                 ) -> PreTrainedModel:
    """A causal LM from a local model directory: a checkpoint or a trained student.

    A directory that does not load is a UserError naming `setting` (the recipe key that gave the
    path, if any) and what to do (`fix`).
    """
    path = Path(path)
    where = f"{setting} = {str(path)!r}" if setting else str(path)
    if not (path / "config.json").is_file():
        raise UserError(f"{where}: not a model directory (no config.json); check the path")
    try:
        with quiet_progress_bars():
            model: PreTrainedModel = AutoModelForCausalLM.from_pretrained(
                path, local_files_only=True, **kwargs)
    except LOAD_ERRORS as e:
        raise UserError(f"{where}: the model does not load ({first_line(e)}); {fix}") from None
    return model


def count_params(model: torch.nn.Module) -> int:
    """Parameters, counting tied embeddings once."""
    return sum(p.numel() for p in model.parameters())
