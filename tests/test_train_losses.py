"""Distillation and DPO losses: zero where distributions agree, gradients that point right."""

from __future__ import annotations

import math

import pytest
import torch

from seed.train.losses import dpo_loss, logit_kd_loss, topk_kd_loss

VOCAB, K = 11, 3


def _teacher(seq: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-3 ids and (unnormalized) logprobs for every token of one row, plus an all-ones mask."""
    ids = torch.tensor([[[1, 4, 7], [2, 3, 9], [0, 5, 6], [8, 1, 2]][:seq]])
    lps = torch.log(torch.tensor([[[0.5, 0.2, 0.1], [0.3, 0.3, 0.2], [0.6, 0.1, 0.1],
                                   [0.4, 0.3, 0.2]][:seq]]))
    return ids, lps, torch.ones(1, seq, dtype=torch.long)


def test_topk_kd_is_zero_when_the_student_equals_the_renormalized_top_k() -> None:
    ids, lps, mask = _teacher()
    renormalized = torch.log_softmax(lps, -1)
    logits = torch.full((1, 4, VOCAB), -1e4)
    # Position t predicts token t+1, so it carries token t+1's teacher distribution.
    logits[0, :-1].scatter_(-1, ids[0, 1:], renormalized[0, 1:])
    loss, n = topk_kd_loss(logits, ids, lps, mask)
    assert n == 3
    assert abs(loss.item()) < 1e-5
    logits[0, 0, ids[0, 1, 0]] += 1.0  # any other student distribution costs something
    assert float(topk_kd_loss(logits, ids, lps, mask)[0]) > 0.01


def test_topk_kd_gradient_moves_mass_toward_the_teachers_tokens() -> None:
    ids, lps, mask = _teacher()
    logits = torch.zeros(1, 4, VOCAB, requires_grad=True)
    loss, _ = topk_kd_loss(logits, ids, lps, mask)
    loss.backward()
    grad = logits.grad[0, 0]
    # Position 0 predicts token 1 (teacher ids 2, 3, 9): descent raises those, lowers the rest.
    assert all(grad[i] < 0 for i in (2, 3, 9))
    assert all(grad[i] > 0 for i in range(VOCAB) if i not in (2, 3, 9))
    # And one small step of gradient descent lowers the loss.
    stepped = (logits - 0.5 * logits.grad).detach()
    assert float(topk_kd_loss(stepped, ids, lps, mask)[0]) < loss.item()


def test_topk_kd_skips_tokens_without_teacher_data_and_outside_the_mask() -> None:
    ids, lps, mask = _teacher()
    lps[0, 2] = -math.inf  # the teacher did not score token 2
    mask[0, 3] = 0  # token 3 is not an assistant token
    logits = torch.randn(1, 4, VOCAB)
    loss, n = topk_kd_loss(logits, ids, lps, mask)
    assert n == 1
    alone = torch.log_softmax(lps[0, 1], -1)
    student = torch.log_softmax(logits[0, 0], -1)[ids[0, 1]]
    assert loss.item() == pytest.approx(float((alone.exp() * (alone - student)).sum()), rel=1e-5)


@pytest.mark.parametrize("divergence", ["forward_kl", "reverse_kl", "jsd"])
def test_logit_kd_is_zero_for_equal_logits_and_positive_otherwise(divergence: str) -> None:
    torch.manual_seed(0)
    teacher = torch.randn(2, 5, VOCAB)
    mask = torch.ones(2, 5, dtype=torch.long)
    same, n = logit_kd_loss(teacher.clone(), teacher, mask, divergence)
    assert n == 8 and abs(float(same)) < 1e-5
    student = torch.randn(2, 5, VOCAB, requires_grad=True)
    loss, _ = logit_kd_loss(student, teacher, mask, divergence)
    assert loss.item() > 0.1
    loss.backward()
    stepped = (student - 0.2 * student.grad).detach()
    assert float(logit_kd_loss(stepped, teacher, mask, divergence)[0]) < loss.item()


def test_forward_kl_matches_its_definition_and_jsd_is_bounded_by_log_2() -> None:
    torch.manual_seed(1)
    s, t = torch.randn(1, 2, VOCAB), torch.randn(1, 2, VOCAB)
    mask = torch.tensor([[1, 1]])
    p, q = torch.softmax(t[0, 0], -1), torch.softmax(s[0, 0], -1)
    assert float(logit_kd_loss(s, t, mask, "forward_kl")[0]) == pytest.approx(
        float((p * (p.log() - q.log())).sum()), rel=1e-5)
    far = torch.zeros(1, 2, VOCAB)
    far[..., 0], t2 = 50.0, torch.zeros(1, 2, VOCAB)
    t2[..., 1] = 50.0
    assert float(logit_kd_loss(far, t2, mask, "jsd", beta=0.5)[0]) <= math.log(2) + 1e-4


def test_dpo_loss_is_log_2_at_the_reference_and_falls_as_the_margin_grows() -> None:
    ref_c, ref_r = torch.tensor([-5.0, -7.0]), torch.tensor([-6.0, -4.0])
    loss, n = dpo_loss(ref_c, ref_r, ref_c, ref_r, beta=0.1)
    assert n == 2 and loss.item() == pytest.approx(2 * math.log(2), rel=1e-6)
    better, _ = dpo_loss(ref_c + 3, ref_r - 3, ref_c, ref_r, beta=0.1)
    assert float(better) < loss.item()
    expected = -2 * math.log(1 / (1 + math.exp(-0.1 * 6)))
    assert float(better) == pytest.approx(expected, rel=1e-6)
