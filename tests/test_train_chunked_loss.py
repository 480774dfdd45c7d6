"""Chunked cross-entropy: the same loss and gradients as the plain loss, with smaller logits."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers.models import tiny_model
from helpers.recipes import SMALL
from helpers.training import metrics, sums, write_chats
from seed.recipe import TrainConfig
from seed.train import train_student
from seed.train.losses import chunked_sft_loss, sft_loss


def _largest_logits(model: torch.nn.Module) -> tuple[list[int], torch.utils.hooks.RemovableHandle]:
    seen = [0]

    def hook(_module: torch.nn.Module, _args: object, out: torch.Tensor) -> None:
        seen[0] = max(seen[0], out.numel())

    return seen, model.get_output_embeddings().register_forward_hook(hook)


def test_chunked_loss_and_gradients_equal_the_plain_loss(tmp_path: Path) -> None:
    path = tiny_model(tmp_path / "m", tokenizer="digits", size="nano")
    model = AutoModelForCausalLM.from_pretrained(path).float()
    torch.manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (3, 40))
    mask = (torch.rand(3, 40) < 0.6).long()
    seen, handle = _largest_logits(model)

    plain, n = sft_loss(model(input_ids=ids).logits, ids, mask)
    plain.backward()
    plain_grads = [p.grad.clone() for p in model.parameters()]
    plain_largest = seen[0]
    model.zero_grad()
    seen[0] = 0
    out = model(input_ids=ids, output_hidden_states=True, logits_to_keep=torch.zeros(0).long())
    chunked, m = chunked_sft_loss(out.hidden_states[-1], model.get_output_embeddings(), ids,
                                  mask, chunk=16)
    chunked.backward()
    handle.remove()

    assert m == n and chunked.item() == pytest.approx(plain.item(), rel=1e-5)
    for p, g in zip(model.parameters(), plain_grads, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-5, atol=1e-6)
    vocab = model.config.vocab_size
    assert plain_largest == 3 * 40 * vocab
    assert seen[0] == 16 * vocab  # one chunk at a time, forward and the backward's recompute


@pytest.mark.parametrize("extra", [{}, {"lora": {"rank": 4}, "grad_checkpointing": True}],
                         ids=["full", "lora"])
def test_training_with_chunked_loss_gives_the_same_losses(tmp_path: Path, extra: dict) -> None:
    base = tiny_model(tmp_path / "base", tokenizer="digits", size="nano")
    records = write_chats(tmp_path / "r.jsonl", sums())
    runs = {}
    for name, chunk in (("plain", None), ("chunked", 32)):
        config = TrainConfig.model_validate({**SMALL, "max_steps": 4, "eval_fraction": 0.1,
                                             "student": {"checkpoint": str(base)},
                                             "loss_chunk": chunk, **extra})
        train_student(records, tmp_path / name, config, seed=0)
        runs[name] = metrics(tmp_path / name)
    assert [m["loss"] for m in runs["chunked"]] == pytest.approx(
        [m["loss"] for m in runs["plain"]], rel=1e-5)
    assert runs["chunked"][-1]["eval_loss"] == pytest.approx(runs["plain"][-1]["eval_loss"],
                                                             rel=1e-5)
