"""GRPO's shared-prompt forward: each prompt run once, the same log-probabilities and gradients as a
plain forward over every row."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers.models import tiny_model
from seed.train import shared_prompts
from seed.train.grpo import token_logprobs


def _groups(vocab: int, prompt_lengths: list[int], group: int, max_new: int, seed: int = 0
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """GRPO-shaped rows: `group` completions (1..max_new tokens) of each prompt, right-padded to
    the longest prompt + max_new; and the completion mask."""
    rng = random.Random(seed)
    width = max(prompt_lengths) + max_new
    rows, masks = [], []
    for length in prompt_lengths:
        prompt = [rng.randrange(vocab) for _ in range(length)]
        for _ in range(group):
            n = rng.randint(1, max_new)
            pad = width - length - n
            rows.append(prompt + [rng.randrange(vocab) for _ in range(n)] + [0] * pad)
            masks.append([0] * length + [1] * n + [0] * pad)
    return torch.tensor(rows), torch.tensor(masks)


def _plain(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor,
           temperature: float) -> torch.Tensor:
    """The reference: every row's full forward, each next token's log-probability, masked."""
    logits = model(input_ids=ids).logits[:, :-1].float() / temperature
    lp = torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    return lp * mask[:, 1:]


def _values_and_grads(model: torch.nn.Module, fn, ids: torch.Tensor, mask: torch.Tensor
                      ) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    lp = fn(model, ids, mask, 0.7)
    weights = torch.randn(lp.shape, generator=torch.Generator().manual_seed(1))
    (lp * mask[:, 1:] * weights).sum().backward()
    return lp.detach() * mask[:, 1:], [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_shared_prompts_give_the_plain_forwards_values_and_gradients(tmp_path: Path,
                                                                     attention: str) -> None:
    path = tiny_model(tmp_path / "m", tokenizer="digits", size="nano")
    model = AutoModelForCausalLM.from_pretrained(path, attn_implementation=attention).float()
    # prompts of different lengths (the cache right-pads the shorter ones), and one group split
    # across the batch's end: three rows of the last prompt
    ids, mask = _groups(model.config.vocab_size, [11, 13, 9, 12], group=4, max_new=6)
    ids, mask = ids[:-1], mask[:-1]
    seen: list[int] = []
    handle = model.model.embed_tokens.register_forward_hook(
        lambda _m, args, _out: seen.append(args[0].numel()))
    want, want_grads = _values_and_grads(model, _plain, ids, mask)
    seen.clear()
    got, got_grads = _values_and_grads(model, shared_prompts.logprobs, ids, mask)
    handle.remove()
    assert int(mask.sum()) > 0 and (got != 0).sum() == mask[:, 1:].sum()
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
    for g, w in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, w, atol=5e-5, rtol=1e-4)
    # the prompts went through once each (all but their last token), then every row's last
    # prompt token and completion: far fewer tokens than every row's whole width
    assert seen == [4 * 12, len(ids) * int(mask.sum(1).max())]
    assert sum(seen) < ids.numel() / 2


def test_grpo_logprobs_take_the_shared_path_and_match_it(tmp_path: Path) -> None:
    path = tiny_model(tmp_path / "m", tokenizer="digits", size="nano")
    model = AutoModelForCausalLM.from_pretrained(path).float()
    ids, mask = _groups(model.config.vocab_size, [10, 10, 12], group=8, max_new=8, seed=3)
    with torch.no_grad():
        torch.testing.assert_close(token_logprobs(model, ids, mask, 1.0) * mask[:, 1:],
                                   _plain(model, ids, mask, 1.0), atol=2e-5, rtol=1e-5)


def test_the_plain_forward_runs_where_sharing_cannot_help_or_run(tmp_path: Path) -> None:
    path = tiny_model(tmp_path / "m", tokenizer="digits", size="nano")
    model = AutoModelForCausalLM.from_pretrained(path).float()
    ids, mask = _groups(model.config.vocab_size, [10, 11, 12], group=1, max_new=4)
    assert shared_prompts.logprobs(model, ids, mask, 1.0) is None  # no prompt repeats
    ids, mask = _groups(model.config.vocab_size, [10, 11], group=3, max_new=4)
    model.activation_checkpointing_enable()
    assert shared_prompts.logprobs(model, ids, mask, 1.0) is None  # no cache under checkpointing
    model.activation_checkpointing_disable()
    assert shared_prompts.logprobs(model, ids, mask, 1.0) is not None
    model.config.sliding_window = 8  # a windowed model's mask is not the one built here
    assert shared_prompts.logprobs(model, ids, mask, 1.0) is None
    model.config.sliding_window = None
    with torch.no_grad():  # and the plain path grpo falls back to is the reference's values
        torch.testing.assert_close(token_logprobs(model, ids[::3], mask[::3], 1.0)
                                   * mask[::3, 1:], _plain(model, ids[::3], mask[::3], 1.0),
                                   atol=2e-5, rtol=1e-5)
