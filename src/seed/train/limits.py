"""Training settings that can never work, refused before a run writes anything.

Each bound is a floor on what a setting needs, so a refused setting could not have run; one that
passes may still not fit (the loop then fails as the hardware does). The bounds:
- `train.seq_len` within the context (`max_position_embeddings`) of a checkpoint student; a
  student built from scratch is built for the recipe's seq_len;
- one micro-batch on the device: backward keeps at least every decoder layer's input for each
  token (`hidden_size` x layers values, even with activation checkpointing) and, for a checkpoint
  of known vocabulary without `train.loss_chunk`, the whole batch's logits;
- one global batch of packed rows in host memory: `batch_size x grad_accum x processes` rows of
  `seq_len` int64 ids, masks and positions.
Memory is the device's total (a GPU's, or the machine's RAM on a CPU). This module knows nothing
about data, losses or the loop's order of steps.
"""

from __future__ import annotations

import os

import torch

from seed.errors import UserError
from seed.recipe import TrainConfig
from seed.train.models import StudentShape
from seed.train.runtime import Runtime

ROW_BYTES = 3 * 8  # per token of a packed row on the host: int64 ids, mask and position


def check_fits(config: TrainConfig, shape: StudentShape, runtime: Runtime) -> None:
    """UserError naming the setting and its limit if the student or memory can never hold it."""
    if shape.context is not None and config.seq_len > shape.context:
        raise UserError(f"train.seq_len = {config.seq_len} is beyond the context of the student "
                        f"{config.student.checkpoint} (max_position_embeddings = "
                        f"{shape.context}); set train.seq_len to {shape.context} or less")
    device, host = memory_bytes(runtime.device), memory_bytes(torch.device("cpu"))
    rows = config.batch_size * config.grad_accum * runtime.world
    global_limit = host // (rows * ROW_BYTES)
    if config.seq_len > global_limit:
        raise UserError(
            f"train.batch_size x train.grad_accum x processes = {rows:,} rows of train.seq_len = "
            f"{config.seq_len} tokens can never fit: the {gib(host)} of host memory "
            f"{holds(global_limit)}; lower train.grad_accum, train.batch_size or train.seq_len")
    per_token = micro_batch_bytes(config, shape, runtime.bf16)
    # On a CPU the global batch's rows share the memory with the micro-batch's activations.
    per_row_token = config.batch_size * per_token + (rows * ROW_BYTES
                                                     if runtime.device.type == "cpu" else 0)
    micro_limit = device // per_row_token
    if config.seq_len > micro_limit:
        raise UserError(
            f"train.seq_len = {config.seq_len} with train.batch_size = {config.batch_size} can "
            f"never fit: each token of a micro-batch row keeps at least {per_token:,} bytes "
            f"({kept(config, shape)}), so the {gib(device)} of {runtime.device.type} memory "
            f"{holds(micro_limit)}; lower train.seq_len or train.batch_size")


def micro_batch_bytes(config: TrainConfig, shape: StudentShape, bf16: bool) -> int:
    """The floor of device bytes one token of a micro-batch row keeps until backward."""
    return (shape.layers * shape.hidden_size + logit_count(config, shape)) * (2 if bf16 else 4)


def logit_count(config: TrainConfig, shape: StudentShape) -> int:
    """Logits per token held at once: the vocabulary, unless unknown or chunked by loss_chunk."""
    return shape.vocab_size if shape.vocab_size and not config.loss_chunk else 0


def kept(config: TrainConfig, shape: StudentShape) -> str:
    """What `micro_batch_bytes` counts, for the message."""
    logits = logit_count(config, shape)
    return (f"{shape.layers} layers x {shape.hidden_size} values"
            + (f" and {logits:,} logits" if logits else ""))


def memory_bytes(device: torch.device) -> int:
    """A device's total memory: a GPU's, or the machine's physical RAM for the CPU."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory)
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def holds(limit: int) -> str:
    return (f"holds rows of at most {limit:,} tokens" if limit
            else "cannot hold even one token per row")


def gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"
