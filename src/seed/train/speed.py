"""Throughput accounting: FLOPs per token, the device's peak and MFU.

MFU (model FLOPs utilization) is achieved model FLOPs per second over the device's peak: the model
FLOPs of a token are 6 N (forward + backward over the N weights its matmuls use, the lm head
included) plus 12 L d T for attention over T positions (the PaLM paper's accounting, appendix B).
Peaks are the dense bf16 figures of the vendor's datasheet; a device not in the table (every CPU)
has no MFU unless the recipe gives `train.peak_flops`. This module knows nothing about data or
where the loop runs (runtime.py).
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

# Dense bf16 tensor-core peak per device, FLOP/s, by a substring of the CUDA device name.
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12,
                   "A10": 125e12, "4090": 165e12, "3090": 71e12}


def flops_per_token(model: PreTrainedModel, seq_len: int) -> float:
    """Training FLOPs per token: 6 x matmul weights (embedding lookup excluded) + attention."""
    cfg = model.config
    embed = sum(p.numel() for p in model.get_input_embeddings().parameters())
    weights = sum(p.numel() for p in model.parameters()) - embed
    if getattr(cfg, "tie_word_embeddings", False):
        weights += embed  # the lm head is a matmul with the tied embedding
    attention = 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len
    return 6.0 * weights + attention


def peak_flops(dev: torch.device, configured: float | None) -> float | None:
    """The device's peak FLOP/s: the recipe's figure, else the table's for the GPU, else None."""
    if configured:
        return configured
    if dev.type != "cuda":
        return None
    name = torch.cuda.get_device_name(dev)
    return next((v for k, v in PEAK_BF16_FLOPS.items() if k in name), None)


def mfu(tokens_per_s: float, per_token: float, peak: float | None,
        devices: int = 1) -> float | None:
    """Model FLOPs utilization across `devices` devices, or None without a known peak."""
    if not peak:
        return None
    return tokens_per_s * per_token / (peak * devices)
