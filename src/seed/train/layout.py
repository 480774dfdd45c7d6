"""A mode's data layout: what the loop steps through, and the loss it takes on a slice of it.

A `Layout` is the seam between the loop and a training mode. Each epoch is a dict of equal-length
tensors (rows), shuffled by a pure function of the seed and the epoch, so the data position after a
resume is just the step; `steps` cuts global batches out of consecutive epochs; `loss` returns the
summed loss of a micro-batch and `count` the number of units (tokens, pairs) it is averaged over.
A mode that learns from its own samples (grpo) also gives a `rollout`, which the loop calls on each
global batch with the current weights before the step, and a `step_log` for the metrics line.
A new mode is a function that builds a Layout from `ModeInputs`, registered in modes.py; the loop
does not change. This module knows nothing about optimizers, devices or checkpoints.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from seed.errors import UserError
from seed.recipe import TrainConfig
from seed.records import Record
from seed.train.data import Example, fit, pack, render
from seed.train.runtime import Runtime

log = logging.getLogger(__name__)

Rows = dict[str, torch.Tensor]
Loss = Callable[[torch.nn.Module, Rows], tuple[torch.Tensor, int]]
Rollout = Callable[[torch.nn.Module, Rows, int], Rows]


@dataclass
class ModeInputs:
    """What a mode builds its layout from: the records of one split and the starting student."""

    records: list[Record]  # chat records, or image records for the diffusion mode
    source: str  # the records file, for messages
    tokenizer: PreTrainedTokenizerBase
    model: PreTrainedModel  # or the diffusion mode's ImageStudent
    config: TrainConfig
    seed: int
    runtime: Runtime
    notes: dict[str, Any] = field(default_factory=dict)  # for the summary: what was left out

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_token_id)

    def examples(self) -> list[Example]:
        """The records rendered with the chat template (with their tools), masked on assistant
        turns but those of weight 0 (and their traces as `train.reasoning` says); those with a
        trace longer than `train.seq_len` are dropped (`data.fit`), counted in `notes`."""
        examples = render(self.tokenizer, [r.chat(weights=True) for r in self.records],
                          self.source, self.config.reasoning, [r.tools for r in self.records])
        if not any(any(ex.mask) for ex in examples):
            raise UserError(f"{self.source}: no record has an assistant turn to learn from")
        kept, dropped = fit(examples, self.config.seq_len)
        if dropped:  # the records stay in line with their examples (kd reads both)
            ids = {id(ex) for ex in kept}
            self.records = [r for r, ex in zip(self.records, examples, strict=True)
                            if id(ex) in ids]
            examples = kept
            log.warning("%s: %d records with a thinking trace longer than train.seq_len = %d "
                        "tokens are left out (cut, they would lose their answer); raise "
                        "train.seq_len to keep them", self.source, dropped, self.config.seq_len)
            self.notes["long_traces_dropped"] = self.notes.get("long_traces_dropped", 0) + dropped
        if not examples:
            raise UserError(f"{self.source}: every record's thinking trace is longer than "
                            f"train.seq_len = {self.config.seq_len}; raise train.seq_len")
        return examples


@dataclass
class Layout:
    """Each epoch's rows, the loss on a slice of them, and what the loss is averaged over."""

    epoch_rows: Callable[[int], Rows]
    loss: Loss
    count: Callable[[Rows], int]
    unit: str  # what a row holds, for the log: "256 tokens" (packed) or "one pair"
    source: str = "the records"  # the records file, for messages
    # A mode whose rows come from the current weights (grpo): the rows of one global batch (else
    # batch_size x grad_accum x processes), the batch -> the rows trained on, from the weights
    # (unwrapped) at that step, and what the last step measured, for the log.
    step_rows: int | None = None
    rollout: Rollout | None = None
    step_log: Callable[[], dict[str, float]] | None = None
    notes: dict[str, Any] = field(default_factory=dict)  # for the summary (ModeInputs.notes)
    rows_per_epoch: int = field(init=False)

    def __post_init__(self) -> None:
        self.rows_per_epoch = num_rows(self.epoch_rows(0))

    def steps(self, start_row: int, rows_per_step: int) -> Iterator[Rows]:
        """Global batches of `rows_per_step` rows from row `start_row` on, crossing epochs."""
        # Packing another order can give an epoch a row more or less than epoch 0: walk them.
        epoch, offset, current = 0, start_row, self.epoch_rows(0)
        while offset >= num_rows(current):
            offset -= num_rows(current)
            epoch += 1
            current = self.epoch_rows(epoch)
        while True:
            parts, need = [], rows_per_step
            while need:
                take = {k: v[offset:offset + need] for k, v in current.items()}
                got = num_rows(take)
                parts.append(take)
                need, offset = need - got, offset + got
                if offset >= num_rows(current):
                    epoch, offset = epoch + 1, 0
                    current = self.epoch_rows(epoch)
            yield parts[0] if len(parts) == 1 else {k: torch.cat([p[k] for p in parts])
                                                    for k in parts[0]}


def num_rows(rows: Rows) -> int:
    return len(next(iter(rows.values())))


def shuffled(items: Sequence[Any], seed: int, epoch: int) -> list[Any]:
    """`items` in the seeded order of `epoch`: the same seed and epoch give the same order."""
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return [items[i] for i in torch.randperm(len(items), generator=g).tolist()]


def packed_rows(examples: Sequence[Example], seq_len: int, pad_id: int) -> Rows:
    """Examples packed in order into rows of `seq_len`: input_ids, mask, position_ids."""
    batch = pack(examples, seq_len, pad_id)
    return {"input_ids": batch.input_ids, "mask": batch.mask, "position_ids": batch.position_ids}


def token_count(rows: Rows) -> int:
    """Trainable tokens: a token's mask counts for the prediction of that token."""
    return int(rows["mask"][:, 1:].sum())


def logits(model: torch.nn.Module, rows: Rows) -> torch.Tensor:
    """The model's next-token logits over packed rows (positions restart per example)."""
    out: torch.Tensor = model(input_ids=rows["input_ids"], position_ids=rows["position_ids"],
                              use_cache=False).logits
    return out


@dataclass(frozen=True)
class StudentKind:
    """What the student is, for the loop: how its records are read, how the starting student is
    built or loaded (saved once as initial/), how a finished one is saved and recognised, what a
    batch counts (tokens or images), its training FLOPs per unit (None: no MFU), and the decay of
    its weights' moving average (0: none)."""

    check: Callable[[TrainConfig, Runtime], None]
    read: Callable[[Path], list[Any]]
    initial: Callable[[Path, list[Any], TrainConfig, int, Runtime],
                      tuple[Any, PreTrainedTokenizerBase]]
    save: Callable[[Path, Any, PreTrainedTokenizerBase, TrainConfig], None]
    saved: Callable[[Path], bool]
    units: Callable[[Rows, int], int]
    flops: Callable[[Any, TrainConfig], float | None]
    ema_decay: Callable[[TrainConfig], float] = lambda config: 0.0
