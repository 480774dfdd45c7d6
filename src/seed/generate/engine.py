"""The async engine: many chat requests through one endpoint, within limits, retried, cached.

The public entry point, for generation and for any stage that needs a teacher or a judge:

    stats = await engine.run(requests, endpoint, limits, cache=cache, on_result=save, budget=b)

- `requests`: an iterable or async iterable of `Request(key, messages, params, payload)`. It is
  pulled lazily by `limits.concurrency` workers, so at most that many requests exist at once and
  memory stays flat however long the stream is.
- `on_result(result)`: called once per request, in completion order, with a `Result` holding the
  `Completion`s (or the reason it failed after `limits.max_attempts`). It runs on the event loop:
  keep it quick (append a line, update a dict).
- `cache`: a `RequestCache`; an answer is committed there *before* `on_result` sees it, and a
  request found there is delivered without being sent, so a rerun after a crash pays nothing twice.
- `budget`: a `Budget`; once it is exhausted no new request starts, those in flight finish and are
  delivered, and `stats.stopped` says why. Every reply is charged what `billed_usage` says: the
  teacher's counts, or Seed's own upper bound where the teacher sent none it can trust.

`run_sync(...)` is the same for callers without an event loop; `complete_all(prompts, endpoint)`
answers a plain list of prompts and returns the texts.

Retries: 429, 5xx, timeouts, dropped connections and invalid answers are retried with jittered
exponential backoff (at least the server's `Retry-After`); `finish_reason == "length"` too when
`limits.retry_on_length`. A `PromptRefused` (a moderation block) fails that request at once,
without a retry, and the run goes on. A `UserError` from the endpoint (400, 401, 403, 404)
stops the run at once: in-flight requests finish, then it is raised. The engine knows nothing
about files or records.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import AsyncIterable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from seed.endpoints.base import Completion, Endpoint, PromptRefused, TransientError
from seed.errors import UserError
from seed.generate.budget import Budget, billed_usage
from seed.generate.cache import RequestCache, cache_key
from seed.runs import now_iso


@dataclass
class Request:
    """One chat request; `key` names it for the caller, `payload` travels back untouched."""

    key: str
    messages: list[dict[str, str]]
    params: dict[str, Any] = field(default_factory=dict)
    payload: Any = None


@dataclass
class Result:
    request: Request
    completions: list[Completion] = field(default_factory=list)
    error: str | None = None
    cached: bool = False
    attempts: int = 0
    requested_at: str | None = None
    responded_at: str | None = None
    api: str | None = None  # "batch" when a provider's batch API answered (seed.generate.batch)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Limits:
    concurrency: int = 32
    requests_per_minute: float | None = None
    tokens_per_minute: float | None = None
    max_attempts: int = 6
    timeout: float = 120.0  # seconds for a whole request, body included
    backoff_base: float = 1.0
    backoff_max: float = 60.0
    retry_on_length: bool = False


@dataclass
class Stats:
    """Live counters, read by the progress display while the engine runs."""

    total: int | None = None
    done: int = 0
    cached: int = 0
    paid: int = 0
    failed: int = 0
    retries: int = 0
    in_flight: int = 0
    completion_tokens: int = 0
    stopped: str | None = None
    phase: str | None = None  # what a batch run is waiting for (its jobs' progress), shown live
    started: float = field(default_factory=time.monotonic)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def delivered(self, result: Result) -> None:
        """Count one result handed to the caller (answered, from the cache, or failed)."""
        self.done += 1
        self.cached += result.cached
        self.failed += not result.ok


class TokenBucket:
    """`rate` units per second, bursts up to `capacity`; server headers can only tighten it."""

    def __init__(self, per_minute: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.stamp = time.monotonic()

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    async def take(self, amount: float) -> None:
        amount = min(amount, self.capacity)
        while True:
            self._refill()
            if self.level >= amount:
                self.level -= amount
                return
            await asyncio.sleep((amount - self.level) / self.rate)

    def give_back(self, amount: float) -> None:
        self.level = min(self.capacity, self.level + amount)

    def tighten(self, limit: float | None, remaining: float | None, reset_s: float | None) -> None:
        if limit is not None and limit / 60.0 < self.rate:
            self.rate = limit / 60.0
            self.capacity = max(1.0, self.rate)
        if remaining is not None:
            self._refill()
            if remaining < self.level:
                self.level = remaining
                if remaining <= 0 and reset_s:
                    # Nothing left until the server's window resets: owe what refills by then.
                    self.level = -reset_s * self.rate


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")


def parse_reset(value: str | None) -> float | None:
    """`x-ratelimit-reset-*` durations such as `1s`, `6m0s`, `20ms` in seconds."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    unit = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = _DURATION.findall(value)
    return sum(float(n) * unit[u] for n, u in parts) if parts else None


def _num(headers: Mapping[str, str], name: str) -> float | None:
    try:
        return float(headers[name]) if name in headers else None
    except ValueError:
        return None


def _tightened(bucket: TokenBucket | None, headers: Mapping[str, str],
               kind: str) -> TokenBucket | None:
    """The bucket after one response's `x-ratelimit-*-<kind>` headers; a limit the server states
    where the recipe set none creates one."""
    limit = _num(headers, f"x-ratelimit-limit-{kind}")
    remaining = _num(headers, f"x-ratelimit-remaining-{kind}")
    if limit is None and remaining is None:
        return bucket
    if bucket is None and limit:
        bucket = TokenBucket(limit)
    if bucket is not None:
        bucket.tighten(limit, remaining, parse_reset(headers.get(f"x-ratelimit-reset-{kind}")))
    return bucket


class RateLimiter:
    """Requests/min and tokens/min buckets, created or tightened from `x-ratelimit-*` headers."""

    def __init__(self, limits: Limits) -> None:
        rpm, tpm = limits.requests_per_minute, limits.tokens_per_minute
        self.requests = TokenBucket(rpm) if rpm else None
        self.tokens = TokenBucket(tpm) if tpm else None

    def observe(self, headers: Mapping[str, str]) -> None:
        self.requests = _tightened(self.requests, headers, "requests")
        self.tokens = _tightened(self.tokens, headers, "tokens")

    async def acquire(self, tokens: float) -> None:
        if self.requests is not None:
            await self.requests.take(1)
        if self.tokens is not None:
            await self.tokens.take(tokens)

    def settle(self, estimated: float, used: int) -> None:
        if self.tokens is not None and used:
            self.tokens.give_back(estimated - used)


def estimate_tokens(messages: list[dict[str, str]], params: dict[str, Any]) -> float:
    """A rough request size for the tokens/min bucket: ~4 characters a token plus the reply cap."""
    chars = sum(len(m.get("content") or "") for m in messages)
    reply = params.get("max_completion_tokens") or params.get("max_tokens") or 256
    return chars / 4 + reply * params.get("n", 1)


def backoff(attempt: int, limits: Limits, retry_after: float | None) -> float:
    """Full-jitter exponential backoff, never shorter than the server asked for."""
    cap = min(limits.backoff_max, limits.backoff_base * 2 ** (attempt - 1))
    return max(retry_after or 0.0, random.uniform(cap / 2, cap))


def completions_to_json(completions: list[Completion]) -> list[dict[str, Any]]:
    # A shallow copy: `asdict` deep-copies every logprob entry, which is all this needs to avoid.
    return [dict(vars(c)) for c in completions]


def completions_from_json(data: list[dict[str, Any]]) -> list[Completion]:
    return [Completion(**c) for c in data]


class _Engine:
    def __init__(self, endpoint: Endpoint, limits: Limits, cache: RequestCache | None,
                 on_result: Callable[[Result], None] | None, budget: Budget | None,
                 stats: Stats) -> None:
        self.endpoint, self.limits, self.cache = endpoint, limits, cache
        self.on_result, self.budget, self.stats = on_result, budget, stats
        self.limiter = RateLimiter(limits)
        endpoint.on_headers = self.limiter.observe
        self.identity = endpoint.identity()
        self.fatal: UserError | None = None

    def _deliver(self, result: Result) -> None:
        self.stats.delivered(result)
        if self.on_result is not None:
            self.on_result(result)

    async def _call(self, req: Request, params: dict[str, Any]) -> list[Completion]:
        estimate = estimate_tokens(req.messages, params)
        await self.limiter.acquire(estimate)
        try:
            async with asyncio.timeout(self.limits.timeout):  # no extra task, unlike wait_for
                comps = await self.endpoint.complete(req.messages, **params)
        except TimeoutError:
            raise TransientError("timeout") from None
        except TransientError as e:
            if e.paid is not None:  # an answer arrived, unusable but billed
                self._charge(req, estimate, *e.paid)
            raise
        usage, estimated = self._charge(req, estimate, [c.text for c in comps],
                                        comps[0].usage if comps else {},
                                        [c.reasoning for c in comps])
        for c in comps:  # what was charged travels with the answer, into the cache and records
            c.usage, c.usage_estimated = usage, estimated
        return comps

    def _charge(self, req: Request, estimate: float, replies: list[str],
                reported: dict[str, Any], thoughts: list[str | None] | None = None
                ) -> tuple[dict[str, int], bool]:
        """Count one answer against the budget and the rate limits, as `billed_usage` says."""
        usage, estimated = billed_usage(reported, req.messages, replies, thoughts)
        self.limiter.settle(estimate, usage["total_tokens"])
        if self.budget is not None:
            self.budget.add(usage, estimated)
        self.stats.completion_tokens += usage["completion_tokens"]
        return usage, estimated

    async def _answer(self, req: Request) -> Result:
        lim = self.limits
        want = int(req.params.get("n", 1))
        comps: list[Completion] = []
        requested_at = now_iso()
        reason = "no attempt"
        for attempt in range(1, lim.max_attempts + 1):
            params = dict(req.params)
            if want > 1:
                params["n"] = want - len(comps)
            retry_after = None
            try:
                got = await self._call(req, params)
            except PromptRefused as e:  # this prompt only; the run goes on
                return Result(req, error=f"refused: {e}", attempts=attempt,
                              requested_at=requested_at, responded_at=now_iso())
            except TransientError as e:
                reason, retry_after = e.reason, e.retry_after
            else:
                if lim.retry_on_length and any(c.finish_reason == "length" for c in got):
                    reason = "finish_reason=length"
                else:
                    comps.extend(got[: want - len(comps)])
                    if len(comps) >= want:
                        return Result(req, comps, attempts=attempt, requested_at=requested_at,
                                      responded_at=now_iso())
                    continue  # the server gave fewer than n choices: ask for the rest
            if attempt < lim.max_attempts:
                self.stats.retries += 1
                await asyncio.sleep(backoff(attempt, lim, retry_after))
        return Result(req, error=f"{reason} (after {lim.max_attempts} attempts)",
                      attempts=lim.max_attempts, requested_at=requested_at)

    def _over_budget(self) -> bool:
        if self.budget is not None and (why := self.budget.exhausted()):
            self.stats.stopped = why
            return True
        return False

    async def worker(self, pull: Callable[[], Any]) -> None:
        while self.fatal is None and self.stats.stopped is None:
            req = await pull()
            if req is None:
                return
            key = cache_key(self.identity, req.messages, req.params)
            if self.cache is not None and (hit := self.cache.get(key)) is not None:
                self._deliver(Result(req, completions_from_json(hit["completions"]), cached=True,
                                     requested_at=hit.get("requested_at"),
                                     responded_at=hit.get("responded_at")))
                continue
            if self._over_budget():
                return  # this request stays unanswered; a rerun with a higher cap picks it up
            self.stats.in_flight += 1
            try:
                result = await self._answer(req)
            except UserError as e:
                if self.fatal is None:
                    self.fatal = e
                return
            finally:
                self.stats.in_flight -= 1
            if result.ok:
                self.stats.paid += 1
                if self.cache is not None:
                    self.cache.put(key, {"completions": completions_to_json(result.completions),
                                         "requested_at": result.requested_at,
                                         "responded_at": result.responded_at})
            self._deliver(result)


async def run(
    requests: Iterable[Request] | AsyncIterable[Request],
    endpoint: Endpoint,
    limits: Limits | None = None,
    *,
    cache: RequestCache | None = None,
    on_result: Callable[[Result], None] | None = None,
    budget: Budget | None = None,
    stats: Stats | None = None,
) -> Stats:
    """Answer every request (see the module docstring); return the final counters."""
    limits = limits or Limits()
    stats = stats or Stats()
    engine = _Engine(endpoint, limits, cache, on_result, budget, stats)
    if isinstance(requests, AsyncIterable):
        ait = aiter(requests)
        lock = asyncio.Lock()

        async def pull() -> Request | None:
            async with lock:
                return await anext(ait, None)
    else:
        it = iter(requests)

        async def pull() -> Request | None:
            return next(it, None)

    await asyncio.gather(*(engine.worker(pull) for _ in range(limits.concurrency)))
    if engine.fatal is not None:
        raise engine.fatal
    return stats


def run_sync(requests: Iterable[Request], endpoint: Endpoint, limits: Limits | None = None,
             **kwargs: Any) -> Stats:
    """`run` for callers without an event loop; closes the endpoint afterwards."""

    async def main() -> Stats:
        try:
            return await run(requests, endpoint, limits, **kwargs)
        finally:
            await endpoint.aclose()

    return asyncio.run(main())


async def complete_all(prompts: list[list[dict[str, str]]], endpoint: Endpoint,
                       limits: Limits | None = None, params: dict[str, Any] | None = None,
                       cache: RequestCache | None = None) -> list[str | None]:
    """The first answer's text for each prompt, in order; None where a prompt failed."""
    out: list[str | None] = [None] * len(prompts)

    def keep(r: Result) -> None:
        if r.ok:
            out[r.request.payload] = r.completions[0].text

    reqs = (Request(str(i), m, dict(params or {}), payload=i) for i, m in enumerate(prompts))
    await run(reqs, endpoint, limits, cache=cache, on_result=keep)
    return out
