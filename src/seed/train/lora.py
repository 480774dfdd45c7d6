"""LoRA and QLoRA adapters on a student (via `peft`), and merging them back for serving.

`add_lora` wraps a causal LM so only low-rank adapters train; `merge_lora` folds them into the base
weights and returns a plain `transformers` model that any tool loads. QLoRA (4-bit base weights)
needs `bitsandbytes` and a CUDA GPU; asked for without them it is a clear error, never a silent
full-precision run. This module knows nothing about data or the loop.
"""

from __future__ import annotations

import importlib.util
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import torch
from transformers import PreTrainedModel

from seed.errors import UserError
from seed.quiet import quiet_progress_bars
from seed.recipe import LoraSettings


@contextmanager
def quiet_peft() -> Iterator[None]:
    """peft asks transformers' deprecated `is_gradient_checkpointing`; nothing for the user."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing` is deprecated",
                                FutureWarning)
        yield


def quantized_load_kwargs(settings: LoraSettings) -> dict[str, Any]:
    """`from_pretrained` arguments for a 4-bit base (QLoRA), or none when not asked for."""
    if not settings.load_in_4bit:
        return {}
    if importlib.util.find_spec("bitsandbytes") is None or not torch.cuda.is_available():
        raise UserError("train.lora.load_in_4bit = true needs the bitsandbytes package and a CUDA "
                        "GPU; install bitsandbytes on a GPU machine or set it to false")
    from transformers import BitsAndBytesConfig

    return {"device_map": {"": torch.cuda.current_device()},
            "quantization_config": BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=torch.bfloat16)}


# An image student's "all-linear": the attention projections of its UNet (its VAE, which has
# layers of the same names, and its text encoder stay frozen), as diffusers' LoRA scripts do.
UNET_ATTENTION = r"unet\..*\.(to_q|to_k|to_v|to_out\.0)"


def add_lora(model: PreTrainedModel, settings: LoraSettings) -> PreTrainedModel:
    """The model with LoRA adapters on `settings.target_modules`; only the adapters train.

    A causal LM gets peft's CAUSAL_LM adapters; any other module (the diffusion mode's image
    student) plain ones, "all-linear" meaning its UNet's attention projections."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if settings.load_in_4bit:
        model = prepare_model_for_kbit_training(model)
    text = isinstance(model, PreTrainedModel)
    targets = settings.target_modules
    if not text and targets == "all-linear":
        targets = UNET_ATTENTION
    # peft annotates lora_alpha as int; it only divides by it, and a float alpha is the recipe's.
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha,  # type: ignore[arg-type]
                        lora_dropout=settings.dropout, target_modules=targets,
                        task_type="CAUSAL_LM" if text else None)
    try:
        with quiet_peft():
            wrapped = get_peft_model(model, config)
        # A PeftModel forwards every attribute the loop uses to the model it wraps.
        return cast(PreTrainedModel, wrapped)
    except ValueError as e:
        raise UserError(f"train.lora.target_modules = {settings.target_modules!r}: {e}") from None


def is_lora(model: torch.nn.Module) -> bool:
    """Whether the model carries peft adapters."""
    return hasattr(model, "merge_and_unload")


def merge_lora(model: PreTrainedModel) -> PreTrainedModel:
    """A plain model with the adapters folded into the base weights; `model` is left unchanged."""
    import copy

    with quiet_peft():
        # A PeftModel forwards merge_and_unload to its LoraModel, which mypy cannot see.
        merged: PreTrainedModel = copy.deepcopy(model).merge_and_unload()  # type: ignore[operator]
    return merged


def save_adapter(model: PreTrainedModel, path: Path) -> None:
    """The adapter alone (adapter_config.json + weights), loadable with peft on top of the base."""
    with quiet_progress_bars():
        model.save_pretrained(path)
