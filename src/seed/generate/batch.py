"""The batch route: a request stream answered through a provider's batch API, at batch prices.

    stats = await batch.run(requests, endpoint, provider, limits, cache=cache, on_result=save,
                            budget=batch_budget, online_budget=budget, stats=stats, options=opts)

The same inputs and the same deliveries as `seed.generate.engine.run`, plus a `BatchProvider`
(`seed.generate.batch_protocol`). In order:

1. Requests already in the request cache are delivered as cached, as the engine does; requests
   with the same cache key are sent once and delivered to each.
2. The ledger (`seed.generate.batch_ledger`, in the same cache.sqlite) is read: a shard a killed
   run left behind is resumed, never sent again: its job is polled when its id is in the ledger,
   looked for at the provider when it is not (`provider.find`), and only submitted when the
   provider has none.
3. The rest is cut into shards within the provider's limits (requests, bytes, with a 5% margin)
   and the recipe's caps (`options.max_requests`, `options.max_bytes`). With `--max-cost` or
   `--max-tokens`, a shard is only cut if its worst case fits what is left (the prompt's byte
   bound plus `max_tokens * n` per request, at batch prices, counting shards not yet collected
   at their worst case): a shard that would cross the cap is cut smaller, and when not even one
   request fits, nothing more is submitted and `stats.stopped` says why. Each shard is written to
   the ledger (its id, its custom_ids) before anything of it is sent; each id the provider
   returns is written the moment it arrives.
4. Jobs are polled every `options.poll_interval` seconds; `stats.phase` shows their progress.
5. Each answer is written to the request cache under the key the online engine would use (so a
   later online run, or a rerun, pays nothing), with `"api": "batch"`, charged to `budget` (batch
   prices) and delivered with `Result.api = "batch"`. Items the job did not answer (expired,
   cancelled, failed with a reason worth retrying, a failed job) go through the online engine
   with `online_budget` when `options.retry_online` (the default), else to `on_result` as failed
   with the provider's reason; items the request itself is at fault for fail at once.
   Then the next wave of shards, while requests and budget are left.

This module knows nothing of records or files besides the cache; it does not parse providers'
answers (the provider does, with the online endpoint's parser).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from seed.endpoints.base import Completion, Endpoint, TransientError
from seed.errors import UserError
from seed.generate import batch_cut, engine
from seed.generate.batch_ledger import COLLECTED, DROPPED, SUBMITTED, Ledger, Shard
from seed.generate.batch_protocol import BatchProvider, ItemError, JobState
from seed.generate.budget import Budget, billed_usage
from seed.generate.cache import RequestCache, cache_key
from seed.generate.engine import Limits, Request, Result, Stats, completions_from_json
from seed.runs import now_iso

NOT_ANSWERED = "not answered by the batch job"


@dataclass
class BatchOptions:
    """The recipe's `[generate.batch]` section (seed.recipe.BatchConfig), as the runner needs it."""

    poll_interval: float = 30.0
    completion_window: str = "24h"
    retry_online: bool = True
    max_requests: int | None = None
    max_bytes: int | None = None


@dataclass
class _Open:
    """A shard of this run: its ledger row, the requests it answers, when it was sent."""

    shard: Shard
    requested_at: str
    state: JobState | None = None
    errors: int = 0


@dataclass
class _Run:
    endpoint: Endpoint
    provider: BatchProvider
    limits: Limits
    cache: RequestCache
    on_result: Callable[[Result], None] | None
    budget: Budget | None
    online_budget: Budget | None
    stats: Stats
    options: BatchOptions
    ledger: Ledger
    pending: dict[str, list[Request]] = field(default_factory=dict)  # key -> its requests
    retry: list[tuple[str, str]] = field(default_factory=list)  # (key, reason) to ask online
    # the worst cases of the shards submitted and not yet collected
    bound_cost: float = 0.0
    bound_tokens: int = 0
    caps: tuple[float | None, int | None] = (None, None)  # the online budget's own caps

    def __post_init__(self) -> None:
        if self.online_budget is not None:
            self.caps = (self.online_budget.max_cost, self.online_budget.max_tokens)

    # -- delivery --------------------------------------------------------------------------

    def deliver(self, result: Result) -> None:
        self.stats.delivered(result)
        if self.on_result is not None:
            self.on_result(result)

    def fail(self, key: str, reason: str) -> None:
        for req in self.pending.pop(key, []):
            self.deliver(Result(req, error=reason, attempts=1, api="batch"))

    # -- shards ----------------------------------------------------------------------------

    def room(self) -> tuple[float | None, int | None]:
        """Dollars and tokens the caps leave for new shards (None: no cap)."""
        b, o = self.budget, self.online_budget
        cost = room_tokens = None
        if b is not None and b.max_cost is not None:
            spent = (b.cost or 0.0) + ((o.cost or 0.0) if o is not None else 0.0)
            cost = b.max_cost - spent - self.bound_cost
        if b is not None and b.max_tokens is not None:
            spent_t = b.tokens + (o.tokens if o is not None else 0)
            room_tokens = b.max_tokens - spent_t - self.bound_tokens
        return cost, room_tokens

    def cut(self, keys: list[str]) -> tuple[list[Shard], list[str]]:
        """New shards for `keys` within the limits and the caps; the keys left for later."""
        o = self.options
        cut = batch_cut.cut(keys, {k: self.pending[k][0] for k in keys}, self.provider,
                            o.max_requests, o.max_bytes, self.room(), self.budget)
        for key, reason in cut.too_big:
            self.fail(key, reason)
        if cut.stopped is not None and not cut.shards and not self.bound_cost \
                and not self.bound_tokens:
            # not one more request fits, and no job out there will give room back
            self.stats.stopped = cut.stopped
        return cut.shards, cut.rest

    def lines(self, shard: Shard) -> list[dict[str, Any]] | None:
        """The shard's batch input, or None when a request of it is no longer in the stream."""
        out = []
        for key in shard.keys:
            reqs = self.pending.get(key)
            if not reqs:
                return None
            out.append(self.provider.line(key, reqs[0].messages, reqs[0].params))
        return out

    async def _retrying(self, what: str, work: Callable[[], Any]) -> Any:
        """`work()` with the engine's backoff on `TransientError`; after the last attempt the run
        stops (a rerun resumes from the ledger)."""
        lim = self.limits
        for attempt in range(1, lim.max_attempts + 1):
            try:
                return await work()
            except TransientError as e:
                reason, wait = e.reason, e.retry_after
            if attempt < lim.max_attempts:
                self.stats.retries += 1
                await asyncio.sleep(engine.backoff(attempt, lim, wait))
        raise _Stop(f"{what}: {reason} (after {lim.max_attempts} attempts); rerun to resume")

    async def start(self, shard: Shard, resumed: bool) -> _Open | None:
        """The shard submitted (or found at the provider); None when it was dropped."""
        def note(step: str, value: str) -> None:
            self.ledger.note(shard, step, value)

        opened = _Open(shard, datetime.fromtimestamp(shard.created, UTC).isoformat(
            timespec="seconds").replace("+00:00", "Z") if resumed else now_iso())
        lines = self.lines(shard)  # also tells the provider each request's response schema
        if "job" in shard.steps:
            return opened
        if resumed:
            taken = {s.steps["job"] for s in self.ledger.all_shards() if "job" in s.steps}
            found = await self._retrying("finding a batch job", lambda: self.provider.find(
                shard.shard_id, dict(shard.steps), shard.created, len(shard.keys),
                keys=list(shard.keys), taken=taken))
            if found is not None:
                note("job", found)
                return opened
        if lines is None:  # recorded, never sent, and the recipe no longer asks for all of it
            if "file" not in shard.steps:
                self.ledger.set_state(shard, DROPPED)
                return None
            lines = []  # the provider holds the file: it is not uploaded again
        job = await self._retrying("submitting a batch job", lambda: self.provider.submit(
            shard.shard_id, lines, dict(shard.steps), note))
        if shard.steps.get("job") != job:
            note("job", job)
        return opened

    async def wait(self, opened: list[_Open]) -> None:
        """Poll until every job has ended, `stats.phase` telling how far they are."""
        while True:
            live = [o for o in opened if o.state is None or not o.state.ended]
            for o in live:
                try:
                    o.state = await self.provider.poll(o.shard.steps["job"])
                except TransientError:
                    o.errors += 1
                    self.stats.retries += 1
                    if o.errors >= self.limits.max_attempts * 10:
                        raise _Stop("polling a batch job keeps failing; rerun to resume") from None
            states = [o.state for o in opened if o.state is not None]
            done = sum(s.completed + s.failed_items for s in states)
            total = sum(s.total or len(o.shard.keys) for o, s in
                        ((o, o.state) for o in opened) if s is not None)
            ended = sum(s.ended for s in states)
            words = sorted({s.status for s in states})
            self.stats.phase = (f"{ended}/{len(opened)} jobs ended, {done:,}/{total:,} "
                                f"requests ({', '.join(words)})")
            if all(o.state is not None and o.state.ended for o in opened):
                return
            await asyncio.sleep(self.options.poll_interval)

    async def collect(self, o: _Open) -> None:
        """Cache, charge and deliver one ended job's answers; queue the rest for a retry."""
        state = o.state
        assert state is not None
        shard = o.shard
        if state.failed is not None:
            items: dict[str, list[Completion] | ItemError] = {
                k: ItemError(f"the batch job failed: {state.failed}") for k in shard.keys}
        else:
            items = await self._retrying("reading a batch job's results",
                                         lambda: self.provider.results(shard.steps["job"]))
        responded = now_iso()
        for key in shard.keys:
            got = items.get(key, ItemError(NOT_ANSWERED, expired=True))
            reqs = self.pending.get(key)
            if reqs is None and self.cache.get(key) is not None:
                continue  # answered already (a rerun after a kill mid-collection)
            messages = reqs[0].messages if reqs else []
            item = got if isinstance(got, ItemError) else self.accept(
                key, messages, reqs[0].params if reqs else {}, got, o.requested_at, responded)
            if item is not None:
                if item.paid is not None:
                    self.charge(messages, [], item.paid)
                if not reqs:
                    continue
                if item.retry and self.options.retry_online:
                    self.retry.append((key, item.reason))
                else:
                    self.fail(key, f"batch: {item.reason}")
        self.bound_cost -= shard.bound_cost or 0.0
        self.bound_tokens -= shard.bound_tokens
        self.ledger.set_state(shard, COLLECTED)

    def charge(self, messages: list[dict[str, str]], comps: list[Completion],
               reported: dict[str, Any]) -> tuple[dict[str, int], bool]:
        usage, estimated = billed_usage(reported, messages, [c.text for c in comps],
                                        [c.reasoning for c in comps])
        if self.budget is not None:
            self.budget.add(usage, estimated)
        self.stats.completion_tokens += usage["completion_tokens"]
        return usage, estimated

    def accept(self, key: str, messages: list[dict[str, str]], params: dict[str, Any],
               comps: list[Completion], requested_at: str, responded_at: str
               ) -> ItemError | None:
        """Charge, cache and deliver one answered item; an `ItemError` when it cannot be kept."""
        usage, estimated = self.charge(messages, comps, comps[0].usage if comps else {})
        want = int(params.get("n", 1))
        if len(comps) < want:
            return ItemError(f"the batch answer has {len(comps)} of {want} choices")
        if self.limits.retry_on_length and any(c.finish_reason == "length" for c in comps):
            return ItemError("finish_reason=length")
        comps = comps[:want]
        for c in comps:
            c.usage, c.usage_estimated = usage, estimated
        self.cache.put(key, {"completions": engine.completions_to_json(comps),
                             "requested_at": requested_at, "responded_at": responded_at,
                             "api": "batch"})
        self.stats.paid += 1
        for req in self.pending.pop(key, []):
            self.deliver(Result(req, list(comps), attempts=1, requested_at=requested_at,
                                responded_at=responded_at, api="batch"))
        return None

    async def online(self) -> None:
        """The items a job did not answer, through the ordinary engine (at online prices)."""
        retry, self.retry = self.retry, []
        if not retry:
            return
        reqs = {key: self.pending[key] for key, _ in retry if key in self.pending}
        for key in reqs:
            del self.pending[key]
        budget = self.online_budget
        if budget is not None and self.budget is not None:
            # one cap over both routes: what the batch answers spent is not the online one's to use
            cost, tokens = self.caps
            budget.max_cost = (None if cost is None or self.budget.cost is None
                               else max(0.0, cost - self.budget.cost))
            budget.max_tokens = (None if tokens is None
                                 else max(0, tokens - self.budget.tokens))

        def fan_out(result: Result) -> None:  # the engine's answer to each request of its key
            for req in reqs[result.request.key]:
                self.deliver(Result(req, result.completions, result.error, result.cached,
                                    result.attempts, result.requested_at, result.responded_at))

        first = [Request(k, rs[0].messages, rs[0].params) for k, rs in reqs.items()]
        sub = Stats()
        await engine.run(first, self.endpoint, self.limits, cache=self.cache, on_result=fan_out,
                         budget=budget, stats=sub)
        self.stats.paid += sub.paid
        self.stats.retries += sub.retries
        self.stats.completion_tokens += sub.completion_tokens
        if sub.stopped and not self.stats.stopped:
            self.stats.stopped = sub.stopped


class _Stop(Exception):
    """The run cannot go on now (a provider keeps failing); what is done is kept."""


async def run(
    requests: Iterable[Request],
    endpoint: Endpoint,
    provider: BatchProvider,
    limits: Limits | None = None,
    *,
    cache: RequestCache,
    on_result: Callable[[Result], None] | None = None,
    budget: Budget | None = None,
    online_budget: Budget | None = None,
    stats: Stats | None = None,
    options: BatchOptions | None = None,
) -> Stats:
    """Answer every request through the batch API (see the module docstring)."""
    limits = limits or Limits()
    stats = stats or Stats()
    options = options or BatchOptions()
    ledger = Ledger(cache.path)
    r = _Run(endpoint, provider, limits, cache, on_result, budget, online_budget, stats, options,
             ledger)
    identity = endpoint.identity()
    try:
        order: list[str] = []
        for req in requests:
            key = cache_key(identity, req.messages, req.params)
            if key in r.pending:
                r.pending[key].append(req)
                continue
            if (hit := cache.get(key)) is not None:
                r.deliver(Result(req, completions_from_json(hit["completions"]), cached=True,
                                 requested_at=hit.get("requested_at"),
                                 responded_at=hit.get("responded_at"), api=hit.get("api")))
                continue
            r.pending[key] = [req]
            order.append(key)
        if batch_cut.reply_cap_missing(budget, [reqs[0] for reqs in r.pending.values()]):
            raise UserError("a batch run with --max-cost or --max-tokens needs a reply cap to "
                            "bound each shard's cost: set generate.params.max_tokens")
        resumed = ledger.open_shards()
        claimed = {k for s in resumed for k in s.keys}
        for s in resumed:
            r.bound_cost += s.bound_cost or 0.0
            r.bound_tokens += s.bound_tokens
        todo = [k for k in order if k not in claimed]
        wave: list[tuple[Shard, bool]] = [(s, True) for s in resumed]
        while True:
            if not wave:
                if not todo or stats.stopped:
                    break
                fresh, todo = r.cut(todo)
                if not fresh:
                    break
                for s in fresh:
                    ledger.record(s)
                    r.bound_cost += s.bound_cost or 0.0
                    r.bound_tokens += s.bound_tokens
                wave = [(s, False) for s in fresh]
            opened = []
            for s, resumed_shard in wave:
                o = await r.start(s, resumed_shard)
                if o is None:
                    r.bound_cost -= s.bound_cost or 0.0
                    r.bound_tokens -= s.bound_tokens
                    todo = [k for k in s.keys if k in r.pending] + todo
                else:
                    opened.append(o)
            wave = []
            if opened:
                await r.wait(opened)
                for o in opened:
                    await r.collect(o)
                await r.online()
            stats.phase = None
    except _Stop as e:
        stats.stopped = str(e)
    finally:
        ledger.close()
    return stats


def shards_of(cache: RequestCache) -> list[Shard]:
    """Every shard a run on this cache recorded (for tests and `seed` reports)."""
    ledger = Ledger(cache.path)
    try:
        return ledger.all_shards()
    finally:
        ledger.close()


__all__ = ["SUBMITTED", "BatchOptions", "BatchProvider", "run", "shards_of"]
