"""Distillation data: a teacher's top-k logprobs stored in records, lined up with student tokens.

The generation engine keeps, per assistant message, the teacher's sampled tokens with their top-k
alternatives (`record.meta["logprobs"]`). `teacher_targets` lines those up with the student's tokens
of the same turn and maps each alternative to a student token id; it works only when the teacher
and the student share a tokenizer (a local teacher behind `seed serve`), and raises a UserError
naming the record otherwise: a wrong alignment would train on noise. `pack_targets` lays the
aligned alternatives out in the rows `data.pack` builds. The loss (`losses.topk_kd_loss`) is
KL(teacher top-k renormalized || student), zero exactly when the student puts the teacher's
renormalized top-k probabilities on those tokens and nothing elsewhere.

Two modes are built here: `kd` (the stored top-k logprobs, `kd_layout`) and `online_kd` (a local
teacher model run beside the student on the same rows, `online_kd_layout`; losses.logit_kd_loss).
This module knows nothing about the loop, optimizers or where records came from.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from seed.errors import UserError, first_line
from seed.train.data import Example
from seed.train.layout import Layout, ModeInputs, Rows, logits, packed_rows, shuffled, token_count
from seed.train.losses import logit_kd_loss, sft_loss, topk_kd_loss
from seed.train.models import load_student


@dataclass
class TeacherTargets:
    """Per token of one example: the teacher's top-k alternatives as student ids, with logprobs.

    `ids[t]`/`logprobs[t]` describe the teacher's distribution for token t (predicted at t-1);
    rows of tokens without teacher data have logprobs all -inf.
    """

    ids: list[list[int]]
    logprobs: list[list[float]]


def decoded_vocab(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Each token's decoded text -> its id; texts several ids share (partial bytes) are left out."""
    seen: dict[str, int] = {}
    shared: set[str] = set()
    for i, text in enumerate(tokenizer.batch_decode([[i] for i in range(len(tokenizer))])):
        if text in seen:
            shared.add(text)
        else:
            seen[text] = i
    return {t: i for t, i in seen.items() if t not in shared}


def _turn_spans(mask: Sequence[int]) -> list[tuple[int, int]]:
    """(start, stop) of each run of 1s in the assistant mask: one per assistant turn, in order."""
    spans, start = [], None
    for t, m in enumerate([*mask, 0]):
        if m and start is None:
            start = t
        elif not m and start is not None:
            spans.append((start, t))
            start = None
    return spans


def teacher_targets(tokenizer: PreTrainedTokenizerBase, example: Example,
                    logprobs: list[list[dict[str, Any]]], where: str,
                    vocab: dict[str, int] | None = None) -> TeacherTargets:
    """Align one record's teacher logprobs (one list per assistant message) with its student tokens.

    Raises UserError (naming `where`) when the turns or tokens do not line up: the teacher's
    tokenizer differs from the student's, and top-k distillation cannot use these logprobs.
    """
    vocab = vocab if vocab is not None else decoded_vocab(tokenizer)
    n = len(example.ids)
    ids: list[list[int]] = [[] for _ in range(n)]
    lps: list[list[float]] = [[] for _ in range(n)]
    spans = _turn_spans(example.mask)
    if len(spans) != len(logprobs):
        raise UserError(f"{where}: meta.logprobs has {len(logprobs)} assistant turns but the chat "
                        f"has {len(spans)}; regenerate the record with logprobs for every turn")
    for (start, stop), entries in zip(spans, logprobs, strict=True):
        if len(entries) > stop - start:
            raise UserError(f"{where}: the teacher's logprobs have {len(entries)} tokens for a "
                            f"turn the student tokenizes into {stop - start}; the teacher's "
                            "tokenizer differs from the student's, so use SFT (mode = 'sft') "
                            "for this data")
        for j, entry in enumerate(entries):
            t = start + j
            student_text = tokenizer.decode([example.ids[t]])
            if entry["token"] != student_text:
                raise UserError(
                    f"{where}: teacher token {j} of an assistant turn is {entry['token']!r} where "
                    f"the student's is {student_text!r}; the teacher's tokenizer differs from the "
                    "student's, so use SFT (mode = 'sft') for this data")
            alternatives = {example.ids[t]: float(entry["logprob"])}
            for alt in entry.get("top_logprobs") or []:
                alt_id = vocab.get(alt["token"])
                if alt_id is not None and alt["logprob"] is not None:
                    alternatives.setdefault(alt_id, float(alt["logprob"]))
            ids[t], lps[t] = list(alternatives), list(alternatives.values())
    return TeacherTargets(ids, lps)


def pack_targets(examples: Sequence[Example], targets: Sequence[TeacherTargets], seq_len: int,
                 k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher ids and logprobs, shaped (rows, seq_len, k), laid out as `data.pack` lays out rows.

    Greedy and in order, like `pack`: an example that does not fit starts a new row; a longer one is
    truncated. Missing entries have id 0 and logprob -inf.
    """
    rows_ids: list[torch.Tensor] = []
    rows_lps: list[torch.Tensor] = []
    used = seq_len  # forces a new row for the first example

    def new_row() -> None:
        rows_ids.append(torch.zeros(seq_len, k, dtype=torch.long))
        rows_lps.append(torch.full((seq_len, k), -math.inf))

    for ex, tt in zip(examples, targets, strict=True):
        n = min(len(ex.ids), seq_len)
        if used + n > seq_len:
            new_row()
            used = 0
        for t in range(n):
            m = min(len(tt.ids[t]), k)
            if m:
                rows_ids[-1][used + t, :m] = torch.tensor(tt.ids[t][:m])
                rows_lps[-1][used + t, :m] = torch.tensor(tt.logprobs[t][:m])
        used += n
    return torch.stack(rows_ids), torch.stack(rows_lps)


def kd_layout(inputs: ModeInputs) -> Layout:
    """Packed rows with the teacher's top-k per token; KD where scored, cross-entropy elsewhere."""
    if inputs.config.reasoning == "train" and any(
            m.reasoning_content for r in inputs.records for m in r.messages):
        raise UserError(f"{inputs.source}: mode = 'kd' learns the teacher's logprobs of the "
                        "answers, which a thinking trace is not part of; set train.reasoning = "
                        "\"answer\" (the trace shown, not trained) or \"drop\"")
    examples, config, settings = inputs.examples(), inputs.config, inputs.config.distill
    vocab = decoded_vocab(inputs.tokenizer)
    targets = []
    for i, (r, ex) in enumerate(zip(inputs.records, examples, strict=True)):
        where = f"{inputs.source} record {i + 1} ({r.id})"
        if not isinstance(r.meta.get("logprobs"), list):
            raise UserError(f"{where}: mode = 'kd' needs the teacher's meta.logprobs; generate "
                            "with logprobs (generate.params.logprobs) or use mode = 'sft'")
        targets.append(teacher_targets(inputs.tokenizer, ex, r.meta["logprobs"], where, vocab))

    def epoch_rows(epoch: int) -> Rows:
        order = shuffled(range(len(examples)), inputs.seed, epoch)
        rows = packed_rows([examples[i] for i in order], config.seq_len, inputs.pad_id)
        rows["topk_ids"], rows["topk_logprobs"] = pack_targets(
            [examples[i] for i in order], [targets[i] for i in order], config.seq_len,
            settings.top_k)
        return rows

    def loss(model: torch.nn.Module, rows: Rows) -> tuple[torch.Tensor, int]:
        out = logits(model, rows)
        # Tokens the teacher did not score (the end-of-turn token) learn by cross-entropy.
        scored = torch.isfinite(rows["topk_logprobs"]).any(-1) & rows["mask"].bool()
        kd, _ = topk_kd_loss(out, rows["topk_ids"], rows["topk_logprobs"], rows["mask"])
        ce_scored, _ = sft_loss(out, rows["input_ids"], scored.long())
        ce_rest, _ = sft_loss(out, rows["input_ids"], rows["mask"] * ~scored)
        w = settings.weight
        return w * kd + (1 - w) * ce_scored + ce_rest, token_count(rows)

    return Layout(epoch_rows, loss, token_count, f"{config.seq_len} tokens", inputs.source)


def online_teacher(inputs: ModeInputs) -> PreTrainedModel:
    """The frozen local teacher of `online_kd`, on the student's device; same tokenizer or error."""
    path = inputs.config.distill.teacher
    if not path:
        raise UserError("train.mode = 'online_kd' needs train.distill.teacher, a local model "
                        "directory that shares the student's tokenizer")
    teacher = load_student(path, "train.distill.teacher")
    try:
        teacher_tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError) as e:
        raise UserError(f"train.distill.teacher = {path!r}: its tokenizer does not load "
                        f"({first_line(e)}); save the tokenizer with the model") from None
    if teacher_tok.get_vocab() != inputs.tokenizer.get_vocab():
        raise UserError(f"train.distill.teacher = {path}: its tokenizer differs from the "
                        "student's; online distillation needs the same vocabulary")
    teacher = inputs.runtime.place(teacher)
    return teacher.eval().requires_grad_(False)


def online_kd_layout(inputs: ModeInputs) -> Layout:
    """Packed rows; the loss compares the student's next-token distribution with the teacher's."""
    examples, config, settings = inputs.examples(), inputs.config, inputs.config.distill
    teacher = online_teacher(inputs)

    def epoch_rows(epoch: int) -> Rows:
        return packed_rows(shuffled(examples, inputs.seed, epoch), config.seq_len, inputs.pad_id)

    def loss(model: torch.nn.Module, rows: Rows) -> tuple[torch.Tensor, int]:
        out = logits(model, rows)
        with torch.no_grad():
            teacher_logits = logits(teacher, rows)
        kd, n = logit_kd_loss(out, teacher_logits, rows["mask"], settings.divergence,
                              settings.beta, settings.temperature)
        ce, _ = sft_loss(out, rows["input_ids"], rows["mask"])
        return settings.weight * kd + (1 - settings.weight) * ce, n

    return Layout(epoch_rows, loss, token_count, f"{config.seq_len} tokens", inputs.source)
