"""Spending: token usage per request, a price table per model, a live cost and a hard stop.

Prices are US dollars per million tokens (input, output), list prices when this table was written;
a recipe overrides or extends them under `[generate.prices]`. A model is matched exactly, then by
the longest known prefix (`gpt-4o-mini-2024-07-18` -> `gpt-4o-mini`). The budget only counts and
decides; the engine stops taking new work when `exhausted()` says so and lets requests in flight
finish, so the final spend can pass the cap by at most what those requests cost.

The budget fails closed: a reply is never free because its teacher did not say what it cost.
`billed_usage` takes the teacher's `prompt_tokens` and `completion_tokens` where they are counts
(an integer, a float with no fraction, a string of digits) and counts itself where they are not
(missing, null, negative, junk, or 0 for a non-empty text): the UTF-8 bytes of the request's
messages and of the replies, plus `TEMPLATE_TOKENS` per message and per reply for the chat
template's markers. Every token of a byte-level BPE tokenizer (GPT-2, tiktoken's, Llama 3's, Qwen's)
covers at least one byte, so the count is an upper bound on what such a teacher bills for the
visible text; hidden reasoning tokens, which only the teacher can count, are the one thing it cannot
see. A run with estimated counts says so once on stderr, and each answer's provenance says so
(`teacher.usage_estimated`).

Image teachers are billed per image (`IMAGE_PRICES`: DALL-E, by size and quality) or per token
(GPT image models: text in, image tokens out, from the response's `usage`); an image reply's usage
carries an `images` count, and a token-priced one without usage is charged `IMAGE_TOKENS_BOUND`
output tokens per image by its endpoint (seed.endpoints.images_api).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from seed.errors import UserError

log = logging.getLogger(__name__)

# Tokens a chat template adds around one message or one reply (role markers, separators): OpenAI
# documents 3-4 per message plus 3 to prime the reply; 8 leaves headroom for other templates.
TEMPLATE_TOKENS = 8

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
    # GPT image models bill text input and image output tokens (the response's `usage`)
    "gpt-image-1": (5.00, 40.00),
    "gpt-image-1-mini": (2.00, 8.00),
    "gpt-image-1.5": (5.00, 32.00),
}

# Dollars per image for models billed per image, by "model:size:quality" or "model:size"; a
# recipe adds or overrides entries under [generate.image_prices] (also "model" or "model:quality").
IMAGE_PRICES: dict[str, float] = {
    "dall-e-3:1024x1024:standard": 0.040, "dall-e-3:1024x1024:hd": 0.080,
    "dall-e-3:1792x1024:standard": 0.080, "dall-e-3:1024x1792:standard": 0.080,
    "dall-e-3:1792x1024:hd": 0.120, "dall-e-3:1024x1792:hd": 0.120,
    "dall-e-2:1024x1024": 0.020, "dall-e-2:512x512": 0.018, "dall-e-2:256x256": 0.016,
}
# What OpenAI uses when a request leaves size or quality out.
_IMAGE_DEFAULTS = {"dall-e-3": ("1024x1024", "standard"), "dall-e-2": ("1024x1024", "standard")}
# Output tokens charged per image when a token-priced image teacher sends no usage: the most a
# GPT image model bills for one image (high quality, 1024x1536: 6,240 tokens), so never too little.
IMAGE_TOKENS_BOUND = 6240


def price_for(model: str, overrides: dict[str, tuple[float, float]] | None = None
              ) -> tuple[float, float] | None:
    """(input, output) dollars per million tokens for a model, or None when unknown."""
    table = {**PRICES, **(overrides or {})}
    if model in table:
        return table[model]
    prefixes = [m for m in table if model.startswith(m)]
    return table[max(prefixes, key=len)] if prefixes else None


def image_price_for(model: str, params: dict[str, object],
                    overrides: dict[str, float] | None = None) -> float | None:
    """Dollars per image for `model` at the request's size and quality, or None when the model
    is not priced per image; the most specific key wins."""
    table = {**IMAGE_PRICES, **(overrides or {})}
    size0, quality0 = _IMAGE_DEFAULTS.get(model, ("", ""))
    size, quality = str(params.get("size") or size0), str(params.get("quality") or quality0)
    for key in (f"{model}:{size}:{quality}", f"{model}:{size}", f"{model}:{quality}", model):
        if key in table:
            return table[key]
    return None


def _count(value: object) -> int | None:
    """A token count as a teacher may send it (12, 12.0, "12"), or None when it is not one."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float):
        return int(value) if value.is_integer() and value >= 0 else None
    if isinstance(value, str) and value.strip().isascii() and value.strip().isdigit():
        return int(value.strip())
    return None


def text_tokens(texts: list[str]) -> int:
    """An upper bound on the tokens of these texts, each in a template (see the docstring)."""
    return sum(len(t.encode("utf-8", "surrogatepass")) + TEMPLATE_TOKENS for t in texts)


def billed_usage(reported: object, messages: list[dict[str, str]], replies: list[str],
                 thoughts: list[str | None] | None = None) -> tuple[dict[str, int], bool]:
    """(prompt_tokens, completion_tokens, total_tokens) to charge for one reply, and whether any
    of it was estimated because the teacher's own count was missing or not a count.

    A reasoning teacher's trace (`thoughts`, one per reply) is output it bills: it is counted in
    the estimate, and `reasoning_tokens` (part of `completion_tokens`) is the teacher's
    `completion_tokens_details.reasoning_tokens` where it sends one, else Seed's bound for the
    traces' text."""
    raw = reported if isinstance(reported, dict) else {}
    images = _count(raw.get("images"))
    if images is not None:  # an image teacher's reply: images, and tokens where it bills them
        tokens_in, tokens_out = (_count(raw.get("input_tokens")) or 0,
                                 _count(raw.get("output_tokens")) or 0)
        return ({"prompt_tokens": tokens_in, "completion_tokens": tokens_out,
                 "total_tokens": tokens_in + tokens_out, "images": images},
                raw.get("estimated") is True)
    prompt, completion = _count(raw.get("prompt_tokens")), _count(raw.get("completion_tokens"))
    asked = [m.get("content") or "" for m in messages]
    estimated = False
    if prompt is None or (prompt == 0 and any(asked)):
        prompt, estimated = text_tokens(asked), True
    traces = [t for t in thoughts or [] if t]
    if completion is None or (completion == 0 and (any(replies) or traces)):
        completion, estimated = text_tokens(replies + traces), True
    usage = {"prompt_tokens": prompt, "completion_tokens": completion,
             "total_tokens": prompt + completion}
    details = raw.get("completion_tokens_details")
    reasoning = _count(details.get("reasoning_tokens")) if isinstance(details, dict) else None
    if reasoning is None and traces:
        reasoning = min(completion, text_tokens(traces))
    if reasoning:
        usage["reasoning_tokens"] = reasoning
    return usage, estimated


@dataclass
class Budget:
    """Tokens and dollars spent so far against optional caps."""

    model: str
    prices: dict[str, tuple[float, float]] | None = None
    max_cost: float | None = None
    max_tokens: int | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated_requests: int = 0  # replies whose usage the budget counted itself
    reasoning_tokens: int = 0  # of completion_tokens, those of the teachers' thinking traces
    # image teachers: the request's size and quality (None for a text teacher), per-image prices
    image_params: dict[str, object] | None = None
    image_prices: dict[str, float] | None = None
    images: int = 0

    def __post_init__(self) -> None:
        self.price = price_for(self.model, self.prices)
        self.image_price = (None if self.image_params is None else
                            image_price_for(self.model, self.image_params, self.image_prices))
        if self.max_cost is not None and self.image_params is not None and (
                self.price is None and self.image_price is None):
            raise UserError(f"--max-cost needs a price for image model {self.model!r}; add "
                            f"`\"{self.model}\" = dollars` per image under "
                            "[generate.image_prices], or `[input, output]` dollars per million "
                            "tokens under [generate.prices]")
        if self.max_cost is not None and self.price is None and self.image_params is None:
            raise UserError(f"--max-cost needs a price for model {self.model!r}; add "
                            f"`\"{self.model}\" = [input, output]` (dollars per million tokens) "
                            "under [generate.prices]")

    def add(self, usage: dict[str, int], estimated: bool = False) -> None:
        """Charge one reply (`billed_usage`'s counts); the first estimated one is warned about."""
        self.prompt_tokens += usage.get("prompt_tokens", 0)
        self.completion_tokens += usage.get("completion_tokens", 0)
        self.reasoning_tokens += usage.get("reasoning_tokens", 0)
        self.images += usage.get("images", 0)
        if estimated:
            self.estimated_requests += 1
            if self.estimated_requests == 1:
                log.warning("the teacher (model %r) sent no usable token counts (usage); tokens "
                            "and cost are counted from the UTF-8 bytes of each request and reply, "
                            "an upper bound", self.model)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def cost(self) -> float | None:
        """Dollars spent so far; None when the model has no price."""
        if self.image_price is not None:  # billed per image: its tokens are not billed too
            return self.images * self.image_price
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
