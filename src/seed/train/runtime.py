"""Where training runs: the device, the processes, the precision, the threads, decided once.

`Runtime.start` reads the hardware and the launcher's environment (`torchrun` and `accelerate
launch` set RANK, WORLD_SIZE and LOCAL_RANK) and the recipe's `train.dtype` and `train.threads`,
joins the process group when there are several processes, and says in one line what it chose.
Everything the loop does differently on a GPU box or under torchrun is a field here, never a
branch on the hardware somewhere else; the same recipe runs the same code on a laptop. This module
knows nothing about data, models or losses.
"""

from __future__ import annotations

import contextlib
import os
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from seed.recipe import TrainConfig

M = TypeVar("M", bound=torch.nn.Module)


def local_device() -> torch.device:
    """This process's device: its local GPU when CUDA is there (one per rank), else the CPU."""
    if torch.cuda.is_available():
        index = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return torch.device("cpu")


@dataclass(frozen=True)
class Runtime:
    """This process's place in the run: device, rank among `world` processes, precision."""

    device: torch.device
    rank: int
    world: int
    dtype: str  # the recipe's train.dtype: auto, float32 or bfloat16
    threads: int
    sharded: bool  # FSDP2 over the processes rather than DDP replicas

    @classmethod
    def start(cls, config: TrainConfig) -> Runtime:
        """Pick the device, join the process group under a launcher, set the thread count."""
        dev = local_device()
        if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
        rank = dist.get_rank() if dist.is_initialized() else 0
        world = dist.get_world_size() if dist.is_initialized() else 1
        threads = config.threads or max(1, (os.cpu_count() or 1) // world)
        torch.set_num_threads(threads)
        return cls(dev, rank, world, config.dtype, threads,
                   sharded=world > 1 and config.distributed == "fsdp")

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes files and prints."""
        return self.rank == 0

    def place(self, model: M) -> M:
        """`model` on this process's device; a 4-bit model was placed when loaded and stays."""
        return model if getattr(model, "is_loaded_in_4bit", False) else model.to(self.device)

    @property
    def bf16(self) -> bool:
        """bf16 autocast: on a GPU by default ("auto"), on any device for "bfloat16"."""
        return self.dtype == "bfloat16" or (self.dtype == "auto" and self.device.type == "cuda")

    def autocast(self) -> AbstractContextManager[object]:
        if self.bf16:
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def barrier(self) -> None:
        if dist.is_initialized():
            dist.barrier()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """`value` summed over the processes (in place; itself with one process)."""
        if self.world > 1:
            dist.all_reduce(value)
        return value

    def describe(self) -> str:
        """One line for the log: e.g. `1 x cpu, float32, 2 threads` or `2 x cuda (fsdp), bf16`."""
        precision = "bf16 autocast" if self.bf16 else "float32"
        spread = f" ({'fsdp' if self.sharded else 'ddp'})" if self.world > 1 else ""
        return (f"{self.world} x {self.device.type}{spread}, {precision}, "
                f"{self.threads} thread{'s' if self.threads != 1 else ''} each")
