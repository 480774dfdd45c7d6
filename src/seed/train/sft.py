"""Supervised fine-tuning: packed chats, cross-entropy on the assistant's tokens.

With `train.loss_chunk` the loss never builds the whole batch's logits: the model projects no
position and the loss projects `loss_chunk` positions at a time (losses.chunked_sft_loss), which
bounds the memory of a large vocabulary. This module knows nothing about the loop.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import PreTrainedModel

from seed.train.layout import Layout, ModeInputs, Rows, logits, packed_rows, shuffled, token_count
from seed.train.losses import chunked_sft_loss, sft_loss


class ChunkedLoss:
    """SFT loss without whole-batch logits, from the decoder's last hidden state.

    The hidden state comes from a forward hook on the decoder rather than from
    `output_hidden_states`, whose capture hooks transformers installs per call and torch.compile
    cannot trace.
    """

    def __init__(self, model: PreTrainedModel, chunk: int) -> None:
        self.head, self.chunk = model.get_output_embeddings(), chunk
        self.hidden: list[torch.Tensor] = []
        model.get_decoder().register_forward_hook(self.keep)

    def keep(self, _module: torch.nn.Module, _args: object, out: Any) -> None:
        self.hidden.append(out.last_hidden_state)

    def __call__(self, model: torch.nn.Module, rows: Rows) -> tuple[torch.Tensor, int]:
        ids = rows["input_ids"]
        none = torch.zeros(0, dtype=torch.long, device=ids.device)
        self.hidden.clear()
        model(input_ids=ids, position_ids=rows["position_ids"], use_cache=False,
              logits_to_keep=none)
        return chunked_sft_loss(self.hidden.pop(), self.head, ids, rows["mask"], self.chunk)


def full_loss(model: torch.nn.Module, rows: Rows) -> tuple[torch.Tensor, int]:
    return sft_loss(logits(model, rows), rows["input_ids"], rows["mask"])


def layout(inputs: ModeInputs) -> Layout:
    """Each epoch: the examples shuffled, then packed into rows of `train.seq_len`."""
    examples, config = inputs.examples(), inputs.config

    def epoch_rows(epoch: int) -> Rows:
        return packed_rows(shuffled(examples, inputs.seed, epoch), config.seq_len, inputs.pad_id)

    loss = ChunkedLoss(inputs.model, config.loss_chunk) if config.loss_chunk else full_loss
    return Layout(epoch_rows, loss, token_count, f"{config.seq_len} tokens", inputs.source)
