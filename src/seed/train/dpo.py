"""Preference pairs for DPO: records with `meta.chosen` / `meta.rejected`, rendered and scored.

A pair record holds the prompt as its messages (a trailing assistant message, if any, is dropped)
and two answers for the next assistant turn: `meta["chosen"]` and `meta["rejected"]`, plain strings.
`render_pairs` renders prompt + answer with the chat template and masks only the answer's tokens;
`sequence_logprobs` sums a model's log-probabilities of those tokens, which the loop calls once on
the frozen starting model (the reference) and on every step on the policy. The loss is
`losses.dpo_loss`; `layout` is the mode the loop trains. This module knows nothing about optimizers
or checkpoints.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from seed.errors import UserError
from seed.records import Record
from seed.train.data import Example, render
from seed.train.layout import Layout, ModeInputs, Rows, shuffled
from seed.train.losses import dpo_loss


@dataclass
class Pair:
    """One prompt's chosen and rejected answers, each rendered with a mask on the answer alone."""

    chosen: Example
    rejected: Example


def _prompt(record: Record, where: str) -> list[dict[str, Any]]:
    if record.tools is not None or any(m.tool_calls for m in record.messages):
        raise UserError(f"{where}: mode = 'dpo' trains text answers without tools, and this "
                        "record offers tools or holds tool calls; train it with mode = 'sft' "
                        "or leave it out")
    chat = record.prompt()
    if not chat:
        raise UserError(f"{where}: a preference record needs prompt messages before its answers")
    for key in ("chosen", "rejected"):
        if not isinstance(record.meta.get(key), str):
            raise UserError(f"{where}: mode = 'dpo' needs meta.{key} (the answer's text) in every "
                            "record; add it or train with mode = 'sft'")
    return chat


def _answer_only(example: Example) -> Example:
    """The example with its mask kept on the last assistant turn only."""
    last = max(t for t, m in enumerate(example.mask) if m)
    start = last
    while start > 0 and example.mask[start - 1]:
        start -= 1
    mask = [1 if start <= t <= last else 0 for t in range(len(example.mask))]
    return Example(example.ids, mask)


def render_pairs(tokenizer: PreTrainedTokenizerBase, records: Sequence[Record],
                 source: str = "the records") -> list[Pair]:
    """Each record's (chosen, rejected) pair, rendered; a record without both is a UserError."""
    chats = []
    for i, record in enumerate(records):
        prompt = _prompt(record, f"{source} record {i + 1} ({record.id})")
        for key in ("chosen", "rejected"):
            chats.append([*prompt, {"role": "assistant", "content": record.meta[key]}])
    examples = [_answer_only(ex) for ex in render(tokenizer, chats, source)]
    return [Pair(examples[i], examples[i + 1]) for i in range(0, len(examples), 2)]


def pad_examples(examples: Sequence[Example], length: int,
                 pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Ids and masks right-padded (or truncated) to `length`; padding at the end never changes the
    causal logits of the tokens before it, so no attention mask is needed."""
    ids = torch.full((len(examples), length), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), length), dtype=torch.long)
    for i, ex in enumerate(examples):
        n = min(len(ex.ids), length)
        ids[i, :n] = torch.tensor(ex.ids[:n])
        mask[i, :n] = torch.tensor(ex.mask[:n])
    return ids, mask


def sequence_logprobs(model: torch.nn.Module, input_ids: torch.Tensor,
                      mask: torch.Tensor) -> torch.Tensor:
    """Per row, the summed log-probability of the masked tokens given the ones before them."""
    logits = model(input_ids=input_ids, use_cache=False).logits[:, :-1].float()
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    return (logprobs * mask[:, 1:]).sum(-1)


@torch.no_grad()
def reference_logprobs(model: PreTrainedModel, pairs: Sequence[Pair], length: int, pad_id: int,
                       batch_size: int) -> torch.Tensor:
    """(pairs, 2): chosen and rejected log-probabilities under `model`, once, no gradient."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(pairs), batch_size):
        chunk = pairs[start:start + batch_size]
        ids, mask = pad_examples([p.chosen for p in chunk] + [p.rejected for p in chunk], length,
                                 pad_id)
        lp = sequence_logprobs(model, ids, mask)
        out.append(torch.stack([lp[:len(chunk)], lp[len(chunk):]], dim=1))
    model.train(was_training)
    return torch.cat(out)


def layout(inputs: ModeInputs) -> Layout:
    """One row per pair: chosen and rejected ids/masks padded to seq_len, and their reference.

    The reference log-probabilities are the starting student's, computed here once, at the same
    precision as the policy's forward.
    """
    config, pad_id = inputs.config, inputs.pad_id
    pairs = render_pairs(inputs.tokenizer, inputs.records, inputs.source)
    if not pairs:
        raise UserError(f"{inputs.source}: no preference pair to train on")
    with inputs.runtime.autocast():
        reference = reference_logprobs(inputs.runtime.place(inputs.model), pairs,
                                       config.seq_len, pad_id, config.batch_size).cpu()
    chosen = pad_examples([p.chosen for p in pairs], config.seq_len, pad_id)
    rejected = pad_examples([p.rejected for p in pairs], config.seq_len, pad_id)
    every = {"chosen_ids": chosen[0], "chosen_mask": chosen[1], "rejected_ids": rejected[0],
             "rejected_mask": rejected[1], "reference": reference}

    def epoch_rows(epoch: int) -> Rows:
        order = torch.tensor(shuffled(range(len(pairs)), inputs.seed, epoch))
        return {k: v[order] for k, v in every.items()}

    def loss(model: torch.nn.Module, rows: Rows) -> tuple[torch.Tensor, int]:
        ids = torch.cat([rows["chosen_ids"], rows["rejected_ids"]])
        lp = sequence_logprobs(model, ids, torch.cat([rows["chosen_mask"], rows["rejected_mask"]]))
        n = len(rows["chosen_ids"])
        return dpo_loss(lp[:n], lp[n:], rows["reference"][:, 0], rows["reference"][:, 1],
                        config.dpo.beta)

    return Layout(epoch_rows, loss, lambda rows: len(rows["chosen_ids"]), "one pair",
                  inputs.source)
