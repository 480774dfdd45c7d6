"""Spending: token usage per request, a price table per model, a live cost and a hard stop.

Prices are US dollars per million tokens, read from the dated table `prices.toml` next to this
module (input, cached input, cache writes, output, and the batch API's input and output, each row
with its source); a recipe overrides or extends them under `[generate.prices]`, as an
`[input, output]` pair or a table of those fields. A model is matched exactly, then by the longest
known prefix (`gpt-4o-mini-2024-07-18` -> `gpt-4o-mini`). `price_warnings` says when the teacher's
model is not priced or the table is older than `STALE_DAYS`.

Usage keys (`billed_usage`): `prompt_tokens` and `completion_tokens` are what is billed;
`cached_tokens` (read from the prompt cache) and `cache_write_tokens` (written to it) are part of
`prompt_tokens`, and `reasoning_tokens` part of `completion_tokens`. A budget charges cached tokens
at `cached_input`, cache writes at `cache_write` and the rest of the input at `input`; with
`batch=True`, at the batch API's prices (the cache multipliers stack on the batch discount, as
both OpenAI and Anthropic bill them). The budget only counts and
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

import datetime
import logging
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib.resources import files
from typing import Any

from seed.errors import UserError

log = logging.getLogger(__name__)

# Tokens a chat template adds around one message or one reply (role markers, separators): OpenAI
# documents 3-4 per message plus 3 to prime the reply; 8 leaves headroom for other templates.
TEMPLATE_TOKENS = 8

# The table is stale past this many days: list prices move every few months (new models each
# quarter, cuts of 30-70% on a model's successor), so a table older than a quarter and a bit may
# price a run wrong; the warning asks for a recipe price or a newer Seed, nothing stops.
STALE_DAYS = 120
PRICE_FIELDS = ("input", "output", "cached_input", "cache_write", "batch_input", "batch_output")
BATCH_SHARE = 0.5  # what a batch API charges of the online price where a row does not say


@dataclass(frozen=True)
class Price:
    """Dollars per million tokens for one model, online and through a batch API."""

    input: float
    output: float
    cached_input: float
    cache_write: float
    batch_input: float
    batch_output: float

    @classmethod
    def of(cls, spec: object, name: str = "price") -> Price:
        """A price from a pair `(input, output)`, a mapping of PRICE_FIELDS (input and output
        required; cached and cache writes default to input, batch to half of online) or a model
        with those fields (the recipe's); UserError when it is none of these or negative."""
        if isinstance(spec, Price):
            return spec
        if isinstance(spec, list | tuple):
            if len(spec) != 2:
                raise UserError(f"{name}: give [input, output] dollars per million tokens")
            spec = {"input": spec[0], "output": spec[1]}
        elif hasattr(spec, "model_dump"):
            spec = spec.model_dump(exclude_none=True)
        if not isinstance(spec, Mapping) or "input" not in spec or "output" not in spec:
            raise UserError(f"{name}: give [input, output] or a table with input and output "
                            "(dollars per million tokens)")
        values: dict[str, float] = {}
        for key in PRICE_FIELDS:
            value = spec.get(key)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int | float) or not (
                    0 <= value < float("inf")):
                raise UserError(f"{name}: {key} = {value!r}; give dollars per million tokens, "
                                "0 or more")
            values[key] = float(value)
        base_in, base_out = values["input"], values["output"]
        return cls(input=base_in, output=base_out,
                   cached_input=values.get("cached_input", base_in),
                   cache_write=values.get("cache_write", base_in),
                   batch_input=values.get("batch_input", base_in * BATCH_SHARE),
                   batch_output=values.get("batch_output", base_out * BATCH_SHARE))

    def rates(self, batch: bool = False) -> tuple[float, float, float, float]:
        """(input, cached input, cache write, output) at the online or the batch prices; in a
        batch the cache multipliers apply to the batch input price."""
        if not batch:
            return self.input, self.cached_input, self.cache_write, self.output
        share = self.batch_input / self.input if self.input else 1.0
        return (self.batch_input, self.cached_input * share, self.cache_write * share,
                self.batch_output)

    def dollars(self, usage: Mapping[str, int], batch: bool = False) -> float:
        """The dollars of one usage dict (`billed_usage`'s keys) at these prices."""
        rate_in, rate_cached, rate_write, rate_out = self.rates(batch)
        prompt = usage.get("prompt_tokens", 0)
        cached = min(usage.get("cached_tokens", 0), prompt)
        written = min(usage.get("cache_write_tokens", 0), prompt - cached)
        return ((prompt - cached - written) * rate_in + cached * rate_cached
                + written * rate_write + usage.get("completion_tokens", 0) * rate_out) / 1e6


@dataclass(frozen=True)
class PriceTable:
    """The packaged table: its date and a price (and source) per model."""

    updated: datetime.date
    prices: dict[str, Price] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)


def parse_table(data: Mapping[str, Any], name: str = "prices.toml") -> PriceTable:
    """The table from its parsed TOML; UserError naming the row when a row is wrong."""
    updated = data.get("updated")
    if not isinstance(updated, datetime.date) or isinstance(updated, datetime.datetime):
        raise UserError(f"{name}: `updated` must be a date (updated = YYYY-MM-DD)")
    rows = data.get("models")
    if not isinstance(rows, dict) or not rows:
        raise UserError(f"{name}: no [models.\"NAME\"] rows")
    prices, sources = {}, {}
    for model, row in rows.items():
        if not isinstance(row, dict) or not isinstance(row.get("source"), str):
            raise UserError(f"{name}: models.{model!r} needs a source (the pricing page's URL)")
        extra = set(row) - {*PRICE_FIELDS, "source", "checked", "via"}
        if extra:
            raise UserError(f"{name}: models.{model!r} has unknown keys {sorted(extra)}")
        prices[model] = Price.of(row, f"{name}: models.{model!r}")
        sources[model] = row["source"]
    return PriceTable(updated, prices, sources)


@cache
def price_table() -> PriceTable:
    """The table packaged with Seed (`seed/generate/prices.toml`)."""
    text = files("seed.generate").joinpath("prices.toml").read_text(encoding="utf-8")
    return parse_table(tomllib.loads(text))


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


def price_for(model: str, overrides: Mapping[str, object] | None = None) -> Price | None:
    """A model's prices (dollars per million tokens), or None when unknown: a recipe's override
    (`[input, output]` or a table) first, then the packaged table; exact name, then the longest
    prefix."""
    table: dict[str, object] = {**price_table().prices, **(overrides or {})}
    if model in table:
        return Price.of(table[model], f"generate.prices.{model!r}")
    prefixes = [m for m in table if model.startswith(m)]
    if not prefixes:
        return None
    best = max(prefixes, key=len)
    return Price.of(table[best], f"generate.prices.{best!r}")


def price_warnings(model: str, overrides: Mapping[str, object] | None = None,
                   today: datetime.date | None = None) -> list[str]:
    """What `seed generate` warns about before it starts: a model the table does not price, a
    table older than STALE_DAYS. A recipe price for the model silences both."""
    overrides = overrides or {}
    if any(model.startswith(m) for m in overrides):
        return []
    table = price_table()
    out = []
    if price_for(model) is None:
        out.append(f"no price for the teacher's model {model!r} in Seed's price table: its cost "
                   "is not counted and --max-cost cannot be used; add "
                   f"`\"{model}\" = [input, output]` (dollars per million tokens) under "
                   "[generate.prices]")
    else:
        age = ((today or datetime.date.today()) - table.updated).days
        if age > STALE_DAYS:
            out.append(f"Seed's price table is {age} days old (updated {table.updated}); list "
                       f"prices may have changed: check the provider's pricing page, or set "
                       f"`\"{model}\"` under [generate.prices]")
    return out


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
    """(prompt_tokens, completion_tokens, total_tokens; cached_tokens, cache_write_tokens,
    reasoning_tokens where there are any) to charge for one reply, and whether any of it was
    estimated because the teacher's own count was missing or not a count.

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
    prompt_counted = not (prompt is None or (prompt == 0 and any(asked)))
    if prompt is None or not prompt_counted:
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
    if prompt_counted:
        # Cache reads and writes are parts of the teacher's own prompt count; against Seed's
        # estimate they would buy a discount the teacher never confirmed.
        cached, written = _cache_counts(raw)
        cached = min(cached, prompt)
        written = min(written, prompt - cached)
        if cached:
            usage["cached_tokens"] = cached
        if written:
            usage["cache_write_tokens"] = written
    return usage, estimated


def _cache_counts(raw: dict[str, Any]) -> tuple[int, int]:
    """(cache reads, cache writes) as a teacher sent them: OpenAI's
    `prompt_tokens_details.cached_tokens` (and `cache_write_tokens` there), or top-level
    `cached_tokens` / `cache_write_tokens` an endpoint put there (seed.endpoints.anthropic)."""
    details = raw.get("prompt_tokens_details")
    details = details if isinstance(details, dict) else {}
    counts = []
    for key in ("cached_tokens", "cache_write_tokens"):
        value = _count(raw.get(key))
        if value is None:
            value = _count(details.get(key))
        counts.append(value or 0)
    return counts[0], counts[1]


@dataclass
class Budget:
    """Tokens and dollars spent so far against optional caps (`batch`: at batch API prices)."""

    model: str
    prices: Mapping[str, object] | None = None
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
    batch: bool = False
    cached_tokens: int = 0  # of prompt_tokens, read from the provider's prompt cache
    cache_write_tokens: int = 0  # of prompt_tokens, written to it
    # `seed generate`: with the first charged reply, say if the model is unpriced or the table
    # old (`price_warnings`); then, not before, the teacher is known to answer for that model
    warn_prices: bool = False

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
        self.cached_tokens += usage.get("cached_tokens", 0)
        self.cache_write_tokens += usage.get("cache_write_tokens", 0)
        self.images += usage.get("images", 0)
        if self.warn_prices:
            self.warn_prices = False
            for warning in price_warnings(self.model, self.prices):
                log.warning("%s", warning)
        if estimated:
            self.estimated_requests += 1
            if self.estimated_requests == 1:
                log.warning("the teacher (model %r) sent no usable token counts (usage); tokens "
                            "and cost are counted from the UTF-8 bytes of each request and reply, "
                            "an upper bound", self.model)

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def cost_of(self, usage: Mapping[str, int]) -> float | None:
        """The dollars of one usage dict at this budget's prices (batch ones with `batch`);
        None when the model has no price."""
        if self.image_price is not None:  # billed per image: its tokens are not billed too
            return usage.get("images", 0) * self.image_price
        if self.price is None:
            return None
        return self.price.dollars(usage, self.batch)

    @property
    def cost(self) -> float | None:
        """Dollars spent so far; None when the model has no price."""
        return self.cost_of({"prompt_tokens": self.prompt_tokens,
                             "completion_tokens": self.completion_tokens,
                             "cached_tokens": self.cached_tokens,
                             "cache_write_tokens": self.cache_write_tokens,
                             "images": self.images})

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
