"""Training losses on next-token logits: SFT cross-entropy, distillation (top-k, full logits), DPO,
and GRPO's group advantages and clipped policy objective.

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


def group_advantages(rewards: torch.Tensor, group: int, scale: bool = True,
                     eps: float = 1e-4) -> torch.Tensor:
    """Each completion's advantage within its group of `group` consecutive completions.

    (r - group mean) / (group std + eps), the std unbiased as in the GRPO paper and TRL; with
    `scale` False only the mean is taken off (Dr. GRPO: no bias toward low-variance groups). A
    group whose rewards are all equal gets 0 everywhere: it has nothing to learn from.
    """
    grouped = rewards.float().view(-1, group)
    centred = grouped - grouped.mean(dim=1, keepdim=True)
    if scale:
        centred = centred / (grouped.std(dim=1, keepdim=True) + eps)
    return centred.flatten()


def grpo_loss(logprobs: torch.Tensor, old_logprobs: torch.Tensor, advantages: torch.Tensor,
              mask: torch.Tensor, weights: torch.Tensor, clip: float,
              reference: torch.Tensor | None = None, beta: float = 0.0) -> torch.Tensor:
    """Summed clipped policy-gradient loss over completion tokens (Shao et al. 2024, PPO's clip).

    logprobs, old_logprobs, mask: (rows, tokens), the policy's log-probability of each completion
    token now and when it was sampled, and 1 on completion tokens; advantages, weights: (rows,),
    each row's advantage and the weight of each of its tokens in the sum (1 for a token mean, 1 /
    its length for a mean per sequence). Per token: -min(ratio A, clip(ratio, 1 -+ clip) A) with
    ratio = exp(logprobs - old_logprobs), plus beta times the k3 estimate of KL(policy ||
    reference), exp(ref - lp) - (ref - lp) - 1, when `reference` (its log-probabilities) is given.
    """
    ratio = torch.exp(logprobs - old_logprobs)
    adv = advantages[:, None]
    per_token = -torch.min(ratio * adv, torch.clamp(ratio, 1 - clip, 1 + clip) * adv)
    if reference is not None and beta:
        per_token = per_token + beta * k3_kl(logprobs, reference)
    return (per_token * mask * weights[:, None]).sum()


def k3_kl(logprobs: torch.Tensor, reference: torch.Tensor) -> torch.Tensor:
    """Per token, the k3 estimate of KL(policy || reference) from sampled tokens' log-probabilities:
    unbiased and never negative (Schulman 2020)."""
    delta = reference - logprobs
    return torch.exp(delta) - delta - 1
