"""The optimizer and its schedule: AdamW without decay on vectors, linear warmup then cosine.

This module knows nothing about data, devices or checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from seed.recipe import TrainConfig


def warmup_cosine(config: TrainConfig, total_steps: int) -> Callable[[int], float]:
    """The learning-rate factor of each step: linear warmup, then cosine to `min_lr_ratio`."""
    warmup = min(config.warmup_steps, max(total_steps - 1, 0))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine

    return factor


def make_optimizer(model: torch.nn.Module, config: TrainConfig, total_steps: int
                   ) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW over the trainable parameters (weight decay on matrices only) and its schedule.

    Call it after any sharding: the optimizer must hold the parameters the model trains with.
    """
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in trainable if p.dim() >= 2], "weight_decay": config.weight_decay},
         {"params": [p for p in trainable if p.dim() < 2], "weight_decay": 0.0}],
        lr=config.lr, betas=(0.9, 0.95), eps=1e-8, fused=fused(trainable) or None)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer,
                                                         warmup_cosine(config, total_steps))


def fused(params: list[torch.nn.Parameter]) -> bool:
    """Whether AdamW can run fused (one kernel per tensor instead of a dozen ops, the HF Trainer's
    default since torch 2.8): every parameter a plain floating-point tensor on the CPU or a GPU.
    Sharded (DTensor) parameters keep torch's default implementation."""
    from torch.distributed.tensor import DTensor

    return bool(params) and all(
        not isinstance(p, DTensor) and p.device.type in ("cpu", "cuda") and p.is_floating_point()
        for p in params)
