"""Spending: token usage per request, a price table per model, a live cost and a hard stop.

Prices are US dollars per million tokens (input, output), list prices when this table was written;
a recipe overrides or extends them under `[generate.prices]`. A model is matched exactly, then by
the longest known prefix (`gpt-4o-mini-2024-07-18` -> `gpt-4o-mini`). The budget only counts and
decides; the engine stops taking new work when `exhausted()` says so and lets requests in flight
finish, so the final spend can pass the cap by at most what those requests cost.
"""

from __future__ import annotations

from dataclasses import dataclass

from seed.errors import UserError

PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    "claude-3-5-haiku": (0.80, 4.00),
    "claude-3-5-sonnet": (3.00, 15.00),
    "claude-sonnet-4": (3.00, 15.00),
}


def price_for(model: str, overrides: dict[str, tuple[float, float]] | None = None
              ) -> tuple[float, float] | None:
    """(input, output) dollars per million tokens for a model, or None when unknown."""
    table = {**PRICES, **(overrides or {})}
    if model in table:
        return table[model]
    prefixes = [m for m in table if model.startswith(m)]
    return table[max(prefixes, key=len)] if prefixes else None


@dataclass
class Budget:
    """Tokens and dollars spent so far against optional caps."""

    model: str
    prices: dict[str, tuple[float, float]] | None = None
    max_cost: float | None = None
    max_tokens: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def __post_init__(self) -> None:
        self.price = price_for(self.model, self.prices)
        if self.max_cost is not None and self.price is None:
            raise UserError(f"--max-cost needs a price for model {self.model!r}; add "
                            f"`\"{self.model}\" = [input, output]` (dollars per million tokens) "
                            "under [generate.prices]")

    def add(self, usage: dict[str, int]) -> None:
        self.prompt_tokens += usage.get("prompt_tokens", 0)
        self.completion_tokens += usage.get("completion_tokens", 0)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def cost(self) -> float | None:
        """Dollars spent so far; None when the model has no price."""
        if self.price is None:
            return None
        return (self.prompt_tokens * self.price[0] + self.completion_tokens * self.price[1]) / 1e6

    def projected(self, paid: int, total: int | None) -> float | None:
        """The cost of the whole job at the mean cost per paid request so far."""
        if self.cost is None or not paid or total is None:
            return None
        return self.cost / paid * total

    def exhausted(self) -> str | None:
        """Why no new request may start, or None while within the caps."""
        if self.max_tokens is not None and self.tokens >= self.max_tokens:
            return f"token cap reached ({self.tokens:,} >= {self.max_tokens:,} tokens)"
        cost = self.cost
        if self.max_cost is not None and cost is not None and cost >= self.max_cost:
            return f"cost cap reached (${cost:.4f} >= ${self.max_cost:.4f})"
        return None
