"""The log-probabilities of completions that share prompts, each prompt run through the model once.

GRPO trains on G completions of every prompt, so a batch's rows repeat each prompt G times; a
plain forward runs (and backpropagates through) every copy. Here the distinct prompts, all but
their last token, go through the model once to fill a key/value cache; the cache is indexed out
to the rows (its backward sums the rows' gradients into their prompt, which is what the copies'
separate gradients add up to); and each row's last prompt token and completion then run on that
cache, at their own positions, attending to their own prompt's keys only (a 4-D mask: the
shorter prompts of the batch are right-padded in the cache). The values are the plain forward's
up to float rounding: the same tokens at the same positions see the same keys.

`logprobs` returns None where this cannot help or cannot run (no prompt is shared; a model whose
forward takes no cache or no 4-D mask; attention kernels other than sdpa and eager; a sliding
window or linear attention in any layer; gradient checkpointing, which turns the cache off): the
caller then runs the plain forward. This module knows nothing about rewards, advantages or the
loss.
"""

from __future__ import annotations

import inspect

import torch

MASKS = ("sdpa", "eager")  # the attention kernels that take a 4-D mask as it is given


def logprobs(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor,
             temperature: float) -> torch.Tensor | None:
    """(rows, len - 1), 0 outside `mask`: each completion token's log-probability under `model`
    (logits / temperature), computing each distinct prompt once; None when that cannot be done
    or saves nothing (then run the plain forward).

    `ids` are rows of prompt + completion + padding; `mask` is 1 on each row's completion tokens,
    which start right after its prompt (at least one token) and run without gaps.
    """
    inner = getattr(model, "module", model)  # a DDP wrapper's model: the prompt pass is local
    attention = _attention(inner)
    if attention not in MASKS or not _takes_a_cache(inner) or not _full_attention(inner):
        return None
    lengths = mask.sum(1)
    starts = mask.int().argmax(1)
    if int(lengths.min()) == 0 or int(starts.min()) < 2:
        return None
    rows = ids.tolist()
    firsts = starts.tolist()
    prompts: dict[tuple[int, ...], int] = {}
    index = [prompts.setdefault(tuple(row[:s - 1]), len(prompts))
             for row, s in zip(rows, firsts, strict=True)]
    if len(prompts) == len(rows):
        return None
    device = ids.device
    shared = max(firsts) - 1
    prompt_ids = torch.tensor([[*p, *[0] * (shared - len(p))] for p in prompts],
                              dtype=ids.dtype, device=device)
    cache = inner(input_ids=prompt_ids, use_cache=True, logits_to_keep=1).past_key_values
    cache.batch_select_indices(torch.tensor(index, device=device))

    width = int(lengths.max())
    steps = torch.arange(width, device=device)
    cols = (starts - 1)[:, None] + steps  # the last prompt token, then the completion's
    inputs = ids.gather(1, cols.clamp(max=ids.shape[1] - 1))
    targets = ids.gather(1, (cols + 1).clamp(max=ids.shape[1] - 1))
    out = model(input_ids=inputs, position_ids=cols, past_key_values=cache,
                attention_mask=_mask(starts - 1, shared, width, attention, _dtype(inner)),
                use_cache=False).logits
    lp = torch.log_softmax(out.float() / temperature, dim=-1).gather(-1, targets[..., None])
    valid = steps < lengths[:, None]
    lp = lp.squeeze(-1).masked_fill(~valid, 0.0)
    # each value to its column of the (rows, len - 1) layout; the padding's to spare columns
    n = ids.shape[1] - 1
    place = torch.where(valid, cols, n + steps)
    return torch.zeros(len(rows), n + width, device=device).scatter(1, place, lp)[:, :n]


def _attention(model: torch.nn.Module) -> str | None:
    """The attention kernel a transformers model runs ("sdpa", "eager", ...)."""
    return getattr(getattr(model, "config", None), "_attn_implementation", None)


def forward_takes(model: torch.nn.Module, *names: str) -> bool:
    """The model's forward takes these keyword arguments (a DDP wrapper's: its model's)."""
    params = inspect.signature(getattr(model, "module", model).forward).parameters
    return all(name in params for name in names)


def _takes_a_cache(model: torch.nn.Module) -> bool:
    """The forward fills and reads a key/value cache now (activation checkpointing turns it off)."""
    return (not getattr(model, "is_activation_checkpointing", False)
            and forward_takes(model, "past_key_values", "position_ids", "logits_to_keep"))


def _full_attention(model: torch.nn.Module) -> bool:
    """Every layer attends to all earlier tokens (the 4-D mask here has no sliding window, and
    linear-attention layers keep no key/value cache to share)."""
    config = getattr(model, "config", None)
    config = config.get_text_config() if config is not None else None
    layers = getattr(config, "layer_types", None) or ["full_attention"]
    sliding = (getattr(config, "sliding_window", None) is not None
               and getattr(config, "use_sliding_window", True))
    return all(t == "full_attention" for t in layers) and not sliding


def _dtype(model: torch.nn.Module) -> torch.dtype:
    return next(model.parameters()).dtype


def _mask(prompt_lengths: torch.Tensor, shared: int, width: int, attention: str,
          dtype: torch.dtype) -> torch.Tensor:
    """(rows, 1, width, shared + width): a row's query j sees its own prompt's cached keys (the
    first `prompt_lengths` of `shared`) and its own tokens up to j. sdpa takes it as booleans,
    eager as 0 / the dtype's minimum added to the scores."""
    device = prompt_lengths.device
    keys = torch.arange(shared, device=device)
    prompt = (keys < prompt_lengths[:, None])[:, None, None, :].expand(-1, 1, width, shared)
    causal = torch.ones(width, width, dtype=torch.bool, device=device).tril()
    allowed = torch.cat([prompt, causal.expand(len(prompt_lengths), 1, width, width)], dim=-1)
    if attention == "sdpa":
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(
        ~allowed, torch.finfo(dtype).min)
