"""The engine's plain data: what a sequence asks for and what it gives back.

`SamplingParams` (how to pick each next token), `TokenLogprob` and `Event` (a sequence's new
output), and `QueueFull`. They cross the pipe between the API process and the engine process
(`worker.py`), so this module imports neither torch nor the engine: the API process can spawn the
engine process before it imports either, and the two load side by side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from seed.serve.grammar import Constraint


class QueueFull(Exception):
    """The waiting queue is at its bound; the caller should answer 429."""


@dataclass
class SamplingParams:
    """How to pick each next token for one sequence."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    top_k: int = 0  # keep the k most likely tokens; 0 or -1: all (vLLM's meaning)
    min_p: float = 0.0  # drop tokens less likely than min_p x the most likely one; 0: none
    repetition_penalty: float = 1.0  # over prompt and output tokens, as transformers does; 1: off
    logit_bias: dict[int, float] | None = None  # added to the logits before sampling
    prompt_logprobs: int | None = None  # score the prompt, with this many alternatives; None: no
    constraint: Constraint | None = None
    watermark: bool = False  # bias it with the engine's watermark (the engine must have one)
    # False: events carry token ids only, no text (in-process callers that decode once at the
    # end, as GRPO's rollouts do; vLLM's meaning); not with stop strings, which need the text
    detokenize: bool = True


@dataclass
class TokenLogprob:
    """The chosen token's log-probability under the model, and the most likely alternatives."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]]


@dataclass
class Event:
    """New output of one sequence: text to show, its tokens, and the finish reason once done."""

    index: int
    text: str
    token_ids: list[int]
    logprobs: list[TokenLogprob]
    finish_reason: str | None = None
    # the prompt's tokens after the first, each given the ones before it (the first event only,
    # for a sequence that asked)
    prompt_logprobs: list[TokenLogprob] | None = None
