"""Training losses on next-token logits: SFT cross-entropy, distillation (top-k, full logits), DPO.

A loss returns the *sum* of per-token losses and the number of tokens it covers, so the caller can
weight gradient accumulation by trainable tokens (sum over micro-batches / total tokens), which
makes accumulation equal to one big batch. This module knows nothing about data loading or
optimizers.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from seed.errors import UserError

Divergence = Literal["forward_kl", "reverse_kl", "jsd"]


def sft_loss(logits: torch.Tensor, input_ids: torch.Tensor,
             mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed cross-entropy of predicting each masked token from the ones before it, and the count.

    logits: (rows, seq_len, vocab); input_ids, mask: (rows, seq_len). Position t predicts token t+1,
    which counts when mask[t+1] is 1.
    """
    targets = input_ids[:, 1:]
    weights = mask[:, 1:].to(logits.dtype)
    per_token = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), targets.flatten(),
                                reduction="none")
    return (per_token * weights.flatten()).sum(), int(mask[:, 1:].sum())


def _chunk_ce(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(head(hidden).float(), targets, reduction="sum")


def chunked_sft_loss(hidden: torch.Tensor, head: torch.nn.Module, input_ids: torch.Tensor,
                     mask: torch.Tensor, chunk: int) -> tuple[torch.Tensor, int]:
    """`sft_loss` from the final hidden states, projecting `chunk` positions at a time.

    hidden: (rows, seq_len, d), the output of the last norm; head: the lm head (a module, so its
    hooks and adapters apply). Only positions whose next token counts are projected, `chunk` at a
    time, and each chunk runs under activation checkpointing: backward recomputes that chunk's
    logits rather than keeping them, so at most one chunk's (chunk, vocab) logits live at once,
    forward or backward, instead of the whole (rows * seq_len, vocab).
    """
    keep = mask[:, 1:].bool()
    h = hidden[:, :-1][keep]
    targets = input_ids[:, 1:][keep]
    total = hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, len(targets), chunk):
        total = total + checkpoint(_chunk_ce, head, h[start:start + chunk],
                                   targets[start:start + chunk], use_reentrant=False)
    return total, int(keep.sum())


def topk_kd_loss(logits: torch.Tensor, topk_ids: torch.Tensor, topk_logprobs: torch.Tensor,
                 mask: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Summed KL(teacher top-k renormalized || student) over masked tokens with teacher data.

    logits: (rows, seq, vocab); topk_ids, topk_logprobs: (rows, seq, k) for token t (so position
    t-1 predicts it), -inf logprobs where absent; mask: (rows, seq), 1 on assistant tokens.
    """
    teacher_lp = topk_logprobs[:, 1:].float()
    has = torch.isfinite(teacher_lp).any(-1) & mask[:, 1:].bool()
    teacher_lp = torch.log_softmax(teacher_lp.masked_fill(~has.unsqueeze(-1), 0.0), dim=-1)
    student_lp = torch.log_softmax(logits[:, :-1].float(), dim=-1).gather(-1, topk_ids[:, 1:])
    p = teacher_lp.exp()
    per_token = torch.where(p > 0, p * (teacher_lp - student_lp), torch.zeros_like(p)).sum(-1)
    return (per_token * has).sum(), int(has.sum())


def logit_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor,
                  divergence: Divergence = "forward_kl", beta: float = 0.5,
                  temperature: float = 1.0) -> tuple[torch.Tensor, int]:
    """Summed divergence between teacher and student next-token distributions over masked tokens.

    forward_kl = KL(teacher || student) (mode covering), reverse_kl = KL(student || teacher) (mode
    seeking), jsd = beta KL(T || M) + (1 - beta) KL(S || M) with M = beta T + (1 - beta) S, which
    is forward KL as beta -> 0 and reverse KL as beta -> 1 up to scale (the GKD convention).
    """
    if student_logits.shape[-1] != teacher_logits.shape[-1]:
        raise UserError(f"the teacher has {teacher_logits.shape[-1]} output tokens and the student "
                        f"{student_logits.shape[-1]}; online distillation needs a shared tokenizer")
    s = torch.log_softmax(student_logits[:, :-1].float() / temperature, dim=-1)
    t = torch.log_softmax(teacher_logits[:, :-1].float() / temperature, dim=-1)
    if divergence == "forward_kl":
        per_token = F.kl_div(s, t, log_target=True, reduction="none").sum(-1)
    elif divergence == "reverse_kl":
        per_token = F.kl_div(t, s, log_target=True, reduction="none").sum(-1)
    elif divergence == "jsd":
        if not 0 < beta < 1:
            raise UserError(f"train.distill.beta = {beta}: the JSD needs 0 < beta < 1")
        m = torch.logsumexp(torch.stack([t + math.log(beta), s + math.log(1 - beta)]), dim=0)
        per_token = (beta * F.kl_div(m, t, log_target=True, reduction="none").sum(-1)
                     + (1 - beta) * F.kl_div(m, s, log_target=True, reduction="none").sum(-1))
    else:
        raise UserError(f"train.distill.divergence = {divergence!r}: use forward_kl, reverse_kl "
                        "or jsd")
    weights = mask[:, 1:].to(per_token.dtype)
    return (per_token * weights).sum() * temperature**2, int(mask[:, 1:].sum())


def dpo_loss(policy_chosen: torch.Tensor, policy_rejected: torch.Tensor,
             reference_chosen: torch.Tensor, reference_rejected: torch.Tensor,
             beta: float) -> tuple[torch.Tensor, int]:
    """Summed DPO loss over pairs (Rafailov et al. 2023) and the number of pairs.

    Each argument is (pairs,): the summed log-probability of the chosen or rejected answer under
    the policy being trained or the frozen reference. The loss is -log sigmoid(beta * margin gain),
    where the gain is how much more the policy prefers chosen over rejected than the reference does.
    """
    gain = (policy_chosen - reference_chosen) - (policy_rejected - reference_rejected)
    return -F.logsigmoid(beta * gain).sum(), int(gain.numel())
