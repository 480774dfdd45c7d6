"""Training losses on next-token logits; today supervised fine-tuning (SFT) cross-entropy.

A loss returns the *sum* of per-token losses and the number of tokens it covers, so the caller can
weight gradient accumulation by trainable tokens (sum over micro-batches / total tokens), which
makes accumulation equal to one big batch. This module knows nothing about data loading or
optimizers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
