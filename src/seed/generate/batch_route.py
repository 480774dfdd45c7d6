"""The batch route of `seed generate`: which provider answers, and the generation's side of it.

`generate.teacher.batch = true` (or `seed generate --batch`) makes `seed.generate.teacher` answer
its single-turn prompt stream through `Batching.run` (the runner, `seed.generate.batch.run`) instead
of the online engine; everything else about the generation is the same (filters, the verifier, the
records, failed.jsonl). What it does not send through a batch API, and why:
- `generate.turns > 1` is refused: each round waits on the last, a batch round on a job of hours;
- Self-Instruct's and Evol-Instruct's generated-prompt steps, and follow-up turns, are asked
  online (each step needs the last one's answers before it can be built), at online prices;
- items a job did not answer are retried online when `generate.batch.retry_online` (the default).
The budget: answers through a batch API are charged at batch prices (`Budget(batch=True)`), online
retries at online prices, one `--max-cost` / `--max-tokens` over both. This module sends nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from seed.endpoints.base import Endpoint
from seed.errors import UserError
from seed.generate.batch import BatchOptions, run
from seed.generate.batch_protocol import BatchProvider
from seed.generate.budget import Budget
from seed.generate.cache import RequestCache
from seed.generate.engine import Limits, Request, Result, Stats
from seed.recipe import GenerateConfig


def batch_provider(endpoint: Endpoint, options: BatchOptions) -> BatchProvider:
    """The batch API of the endpoint's provider; `UserError` for a kind that has none."""
    from seed.endpoints.anthropic import AnthropicEndpoint
    from seed.endpoints.openai import OpenAIEndpoint

    if isinstance(endpoint, OpenAIEndpoint):
        from seed.endpoints.openai_batch import OpenAIBatch

        return OpenAIBatch(endpoint, options.completion_window)
    if isinstance(endpoint, AnthropicEndpoint):
        from seed.endpoints.anthropic_batch import AnthropicBatch

        return AnthropicBatch(endpoint)  # Anthropic's window is 24 h, not a parameter
    raise UserError(f"generate.teacher.batch = true: the {type(endpoint).__name__} teacher has no "
                    "batch API; set batch = false")


class Batching:
    """A generation's batch route (`generate.teacher.batch`): its options, its provider and its
    budget at batch prices; checked when the generation is built, before anything is paid for."""

    def __init__(self, config: GenerateConfig, endpoint: Endpoint) -> None:
        if config.turns > 1:
            raise UserError("generate.turns > 1 is not answered through a batch API (each round "
                            "waits on the last); set generate.teacher.batch = false or turns = 1")
        b = config.batch
        self.options = BatchOptions(b.poll_interval, b.completion_window, b.retry_online,
                                    b.max_requests, b.max_bytes)
        self.endpoint = endpoint
        self.budget = Budget(endpoint.teacher().model_requested or "", config.prices or None,
                             config.max_cost, config.max_tokens, batch=True, warn_prices=True)
        self.provider = batch_provider(endpoint, self.options)

    async def run(self, requests: Iterable[Request], limits: Limits, cache: RequestCache,
                  on_result: Callable[[Result], None], online_budget: Budget,
                  stats: Stats) -> Stats:
        """The prompts' answers through the batch API; retries online charge `online_budget`."""
        return await run(requests, self.endpoint, self.provider, limits, cache=cache,
                         on_result=on_result, budget=self.budget, online_budget=online_budget,
                         stats=stats, options=self.options)

    def summary(self, online: Budget) -> dict[str, Any]:
        """The summary's spending over both routes, and the batch part of it."""
        b = self.budget
        cost = None if b.cost is None else b.cost + (online.cost or 0.0)
        return {"api": "batch", "batch_cost": b.cost, "online_cost": online.cost, "cost": cost,
                "prompt_tokens": b.prompt_tokens + online.prompt_tokens,
                "completion_tokens": b.completion_tokens + online.completion_tokens,
                "reasoning_tokens": b.reasoning_tokens + online.reasoning_tokens,
                "usage_estimated_requests": b.estimated_requests + online.estimated_requests}


def batch_on(config: GenerateConfig) -> GenerateConfig:
    """The config with `generate.teacher.batch = true` (`seed generate --batch`)."""
    if "batch" not in type(config.teacher).model_fields:
        raise UserError(f"--batch: a {config.teacher.kind} teacher has no batch API; use an "
                        "openai (or azure) or anthropic teacher")
    return config.model_copy(update={"teacher": config.teacher.model_copy(
        update={"batch": True})})
