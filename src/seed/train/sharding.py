"""FSDP for several processes: shard a student with FSDP2 and move whole state dicts in and out.

`train.distributed = "fsdp"` under torchrun shards parameters, gradients and optimizer state over
the ranks (`torch.distributed.fsdp.fully_shard`, one unit per transformer block, then the root),
which works with gloo on CPU as with NCCL on GPUs. Checkpoints stay whole-model files that one
process can read: the gathers here are collectives every rank must call; rank 0 writes. This module
knows nothing about data, losses or the training loop.
"""

from __future__ import annotations

from typing import Any

import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
from torch.distributed.fsdp import fully_shard

_FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def shard(model: torch.nn.Module) -> None:
    """Shard `model` in place: each block named in its `_no_split_modules`, then the whole."""
    blocks = set(getattr(model, "_no_split_modules", None) or [])
    for module in list(model.modules()):
        if type(module).__name__ in blocks:
            fully_shard(module)
    fully_shard(model)


def full_state(model: torch.nn.Module,
               optimizer: torch.optim.Optimizer) -> tuple[dict[str, Any], dict[str, Any]]:
    """The whole model and optimizer state on the CPU (a collective; empty on ranks but 0)."""
    return get_state_dict(model, optimizer, options=_FULL)


def load_full_state(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    model_state: dict[str, Any], optimizer_state: dict[str, Any]) -> None:
    """Load whole state dicts (as `full_state` gave them) into a sharded model and its optimizer."""
    set_state_dict(model, optimizer, model_state_dict=model_state,
                   optim_state_dict=optimizer_state,
                   options=StateDictOptions(full_state_dict=True))
