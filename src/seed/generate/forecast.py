"""`seed generate --forecast`: what a generation will cost and keep, from a small paid sample.

It builds the same `Generation` as `seed generate` (the same checks, endpoint, request parameters
and request cache in the output directory), then:

1. runs the instruction filters over the whole prompt stream (prompt files, then `generate.tasks`;
   free, nothing is sent), so the dedup and length drop rates and the prompts the job will send
   are exact; prompts this job already answered (in `train.jsonl`) are left out;
2. answers a sample of those prompts (`--forecast-sample N`, one drawn at random from each of N
   equal stretches of the stream, by the recipe's seed) through the same engine, budget and
   cache, so the full run later finds them in the cache and pays nothing for them twice;
3. judges each answer as the full run would (answer filters, refusals, the verifier) and prints,
   and writes to `forecast.json` (atomically): the expected cost online and through a batch API
   (the price table's batch prices), the wall time at the recipe's limits (concurrency, requests
   per minute, tokens per minute: the binding one is named), the records that will be kept, and
   the spend needed to keep `num_records`.

Intervals (95%): the cost is the sample's mean cost per request times the prompts to send, with a
normal interval on that mean (1.96 standard errors, times the finite-population correction
sqrt((M - n) / (M - 1)), so it closes when the sample is the whole stream); the share of answers
kept has a Wilson score interval (records counted as independent trials), closed the same way.
The spend for `num_records` combines both ends.

It writes no records (`train.jsonl` stays absent or unchanged) and no `failed.jsonl`. Not
forecast: Self-Instruct and Evol-Instruct prompts (writing them is paid generation itself) and
multi-turn conversations (each turn's length depends on the last); both are refused with one line.
"""

from __future__ import annotations

import asyncio
import datetime
import math
import random
import statistics
import time
from pathlib import Path
from typing import Any, cast

from rich.console import Console

from seed.endpoints.base import Completion, Endpoint
from seed.errors import UserError
from seed.files import write_json_atomic
from seed.generate import sources
from seed.generate.budget import Price, price_for
from seed.generate.cache import RequestCache
from seed.generate.engine import Request, Result, run
from seed.generate.teacher import CACHE, Generation, answered, request_params
from seed.recipe import GenerateConfig

FORECAST = "forecast.json"
Z95 = 1.96


def sample_indices(total: int, n: int, seed: int) -> list[int]:
    """`n` of `range(total)` spread over it: one at random from each of n equal stretches."""
    n = min(n, total)
    rng = random.Random(seed)
    return [rng.randrange(j * total // n, (j + 1) * total // n) for j in range(n)]


def half_width(values: list[float], fpc: float) -> float:
    """The 95% half-width of the mean of `values` (one value: the mean itself), times `fpc`."""
    mean = statistics.fmean(values)
    spread = statistics.stdev(values) if len(values) > 1 else mean
    return Z95 * spread / math.sqrt(len(values)) * fpc


def wilson(kept: int, trials: int, fpc: float = 1.0) -> tuple[float, float]:
    """The 95% Wilson score interval of a share `kept / trials`, its width times `fpc`."""
    if trials == 0:
        return 0.0, 1.0
    p = kept / trials
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * trials)) / (1 + z2 / trials)
    half = Z95 * math.sqrt(p * (1 - p) / trials + z2 / (4 * trials * trials)) / (1 + z2 / trials)
    return max(0.0, p - (p - centre + half) * fpc), min(1.0, p + (centre + half - p) * fpc)


class _Timed:
    """The endpoint with each `complete` call timed (the records' timestamps are whole seconds);
    everything else, `on_headers` included, goes to the endpoint itself."""

    def __init__(self, inner: Endpoint) -> None:
        object.__setattr__(self, "inner", inner)
        object.__setattr__(self, "seconds", [])

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self.inner, name, value)

    async def complete(self, messages: list[dict[str, str]], **params: Any) -> list[Completion]:
        start = time.perf_counter()
        try:
            return await self.inner.complete(messages, **params)
        finally:
            self.seconds.append(time.perf_counter() - start)


def _latency(result: Result) -> float | None:
    if not result.requested_at or not result.responded_at:
        return None
    t0 = datetime.datetime.fromisoformat(result.requested_at)
    t1 = datetime.datetime.fromisoformat(result.responded_at)
    return max(0.0, (t1 - t0).total_seconds())


class Forecast:
    """One `seed generate --forecast` invocation (see the module docstring)."""

    def __init__(self, config: GenerateConfig, seed: int, out_dir: Path, console: Console,
                 sample: int) -> None:
        if sample < 1:
            raise UserError(f"--forecast-sample {sample}: give at least 1 prompt to answer")
        if config.self_instruct or config.evol_instruct:
            raise UserError("--forecast covers prompt files and generate.tasks; Self-Instruct and "
                            "Evol-Instruct write their prompts with paid requests: forecast "
                            "without them, or run them first and forecast their output file")
        if config.turns > 1:
            raise UserError("--forecast measures single answers: set generate.turns = 1 to "
                            "forecast (a conversation's cost depends on every turn)")
        self.gen = Generation(config, seed, out_dir, console)
        self.config, self.seed, self.out_dir, self.console = config, seed, out_dir, console
        self.sample = sample
        self.price: Price | None = price_for(self.gen.budget.model, config.prices or None)
        self.timed = _Timed(self.gen.endpoint)

    async def _answer(self, prompts: list[sources.Prompt]) -> list[Result]:
        results: list[Result] = []
        params = request_params(self.config)
        reqs = (Request(p.key, p.messages, params, payload=p) for p in prompts)
        self.gen.stats.total = len(prompts)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        cache = RequestCache(self.out_dir / CACHE)
        try:
            await run(reqs, cast(Endpoint, self.timed), self.gen.limits, cache=cache,
                      on_result=results.append, budget=self.gen.budget, stats=self.gen.stats)
        finally:
            cache.close()
        return results

    async def _main(self, prompts: list[sources.Prompt]) -> list[Result]:
        try:
            await self.gen.endpoint.check_reachable()
            return await self._answer(prompts)
        finally:
            await self.gen.aclose()

    def run(self) -> dict[str, Any]:
        gen = self.gen
        done = answered(self.out_dir, gen.job)
        seen = survivors = 0
        planned: list[sources.Prompt] = []
        for p, dropped in gen.candidates([]):
            seen += 1
            if dropped is not None:
                continue
            survivors += 1
            if gen.limit is None or survivors <= gen.limit:
                planned.append(p)
        to_send = [p for p in planned if p.key not in done]
        picked = [to_send[i] for i in sample_indices(len(to_send), self.sample, self.seed)]
        results = asyncio.run(self._main(picked)) if picked else []
        info = self._figures(seen, survivors, len(planned), len(done & {p.key for p in planned}),
                             to_send, results)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        write_json_atomic(self.out_dir / FORECAST, info)
        for line in report(info):
            self.console.print(line)
        return info

    def _figures(self, seen: int, survivors: int, planned: int, already: int,
                 to_send: list[sources.Prompt], results: list[Result]) -> dict[str, Any]:
        config, gen = self.config, self.gen
        big_m, n = len(to_send), len(results)
        fpc = math.sqrt((big_m - n) / (big_m - 1)) if big_m > 1 and n else 0.0
        ok = [r for r in results if r.ok]
        costs, batch_costs, kept_counts, tokens_in, tokens_out, reasoning, latencies = (
            [], [], [], [], [], [], [])
        answers = verified_out = 0
        for r in results:
            if not r.ok:
                kept_counts.append(0)
                costs.append(0.0)
                batch_costs.append(0.0)
                continue
            usage = r.completions[0].usage  # what the engine charged for the whole request
            tokens_in.append(usage.get("prompt_tokens", 0))
            tokens_out.append(usage.get("completion_tokens", 0))
            reasoning.append(usage.get("reasoning_tokens", 0))
            costs.append(self.price.dollars(usage) if self.price else 0.0)
            batch_costs.append(self.price.dollars(usage, batch=True) if self.price else 0.0)
            if not self.timed.seconds and (lat := _latency(r)) is not None:
                latencies.append(lat)  # answered before (the cache): its timestamps, in seconds
            filtered_before = sum(gen.answers.dropped.values())
            kept, _, _ = gen.judge(r)
            filtered = sum(gen.answers.dropped.values()) - filtered_before
            answers += len(r.completions)
            verified_out += len(r.completions) - filtered - len(kept)
            kept_counts.append(len(kept))
        latencies += self.timed.seconds
        trials = n * config.samples
        kept_total = sum(kept_counts)
        share_lo, share_hi = wilson(kept_total, trials, fpc) if trials else (0.0, 0.0)
        per_prompt = kept_total / n if n else 0.0
        info: dict[str, Any] = {
            "prompts_seen": seen, "prompts_dropped": dict(gen.filter.dropped),
            "prompts_surviving": survivors, "prompts_planned": planned,
            "prompts_already_answered": already, "prompts_to_send": big_m, "sample": n,
            "sample_paid": gen.stats.paid, "sample_from_cache": gen.stats.cached,
            "sample_failed": len(results) - len(ok),
            "samples_per_prompt": config.samples,
            "answers_judged": answers, "answers_dropped": dict(gen.answers.dropped),
            "answers_not_verified": verified_out,
            "answers_kept": kept_total, "kept_share": kept_total / trials if trials else None,
            "kept_share_interval": [share_lo, share_hi],
            "mean_prompt_tokens": statistics.fmean(tokens_in) if tokens_in else None,
            "mean_completion_tokens": statistics.fmean(tokens_out) if tokens_out else None,
            "mean_reasoning_tokens": statistics.fmean(reasoning) if reasoning else None,
            "mean_latency_s": statistics.fmean(latencies) if latencies else None,
            "usage_estimated_requests": gen.budget.estimated_requests,
            "sample_cost": gen.budget.cost,
            "priced": self.price is not None,
            "records_expected": per_prompt * big_m,
            "records_interval": [share_lo * config.samples * big_m,
                                 share_hi * config.samples * big_m],
            "num_records": config.num_records,
            "stopped": gen.stats.stopped,
        }
        if self.price is not None and n:
            info.update(self._costs(costs, batch_costs, big_m, n, fpc))
        info.update(self._time(info, big_m - n))
        info.update(self._target(info, per_prompt, share_lo, share_hi, survivors, costs, fpc))
        return info

    @staticmethod
    def _costs(costs: list[float], batch_costs: list[float], big_m: int, n: int,
               fpc: float) -> dict[str, Any]:
        mean, bmean = statistics.fmean(costs), statistics.fmean(batch_costs)
        half, bhalf = half_width(costs, fpc), half_width(batch_costs, fpc)
        return {"cost_per_request": mean, "cost_online": mean * big_m,
                "cost_online_interval": [max(0.0, mean - half) * big_m, (mean + half) * big_m],
                "cost_online_remaining": mean * (big_m - n),
                "cost_batch": bmean * big_m,
                "cost_batch_interval": [max(0.0, bmean - bhalf) * big_m, (bmean + bhalf) * big_m],
                "cost_batch_remaining": bmean * (big_m - n)}

    def _time(self, info: dict[str, Any], remaining: int) -> dict[str, Any]:
        """The wall time of the requests still to send at the recipe's limits."""
        lim = self.gen.limits
        rates: dict[str, float] = {}
        latency = info["mean_latency_s"]
        if latency:
            rates["concurrency"] = lim.concurrency / latency
        if lim.requests_per_minute:
            rates["requests_per_minute"] = lim.requests_per_minute / 60
        per_request = (info["mean_prompt_tokens"] or 0) + (info["mean_completion_tokens"] or 0)
        if lim.tokens_per_minute and per_request:
            rates["tokens_per_minute"] = lim.tokens_per_minute / 60 / per_request
        if not rates:
            return {"wall_time_s": 0.0 if remaining <= 0 else None, "binding_limit": None}
        binding = min(rates, key=lambda k: rates[k])
        return {"wall_time_s": max(0, remaining) / rates[binding], "binding_limit": binding,
                "requests_per_s": rates[binding]}

    def _target(self, info: dict[str, Any], per_prompt: float, share_lo: float,
                share_hi: float, survivors: int, costs: list[float],
                fpc: float) -> dict[str, Any]:
        """What keeping `num_records` records takes: prompts, dollars, and whether there are
        enough prompts."""
        want, samples = self.config.num_records, self.config.samples
        out: dict[str, Any] = {"records_possible": per_prompt * survivors,
                               "enough_prompts": per_prompt * survivors >= want}
        if per_prompt <= 0:
            out.update(prompts_needed=None, spend_needed=None, spend_needed_interval=None)
            return out
        needed = math.ceil(want / per_prompt)
        out["prompts_needed"] = needed
        if info.get("cost_per_request") is None:
            out.update(spend_needed=None, spend_needed_interval=None)
            return out
        mean, half = info["cost_per_request"], half_width(costs, fpc)
        lo_prompts = math.ceil(want / (share_hi * samples)) if share_hi else None
        hi_prompts = math.ceil(want / (share_lo * samples)) if share_lo else None
        out["spend_needed"] = needed * mean
        out["spend_needed_interval"] = [
            None if lo_prompts is None else lo_prompts * max(0.0, mean - half),
            None if hi_prompts is None else hi_prompts * (mean + half)]
        return out


def _money(x: float | None) -> str:
    return "n/a" if x is None else f"${x:,.4f}"


def _span(pair: list[float | None] | None, money: bool = True) -> str:
    if not pair:
        return ""
    shown = [("n/a" if v is None else _money(v) if money else f"{v:,.0f}") for v in pair]
    return f" (95%: {shown[0]} to {shown[1]})"


def report(info: dict[str, Any]) -> list[str]:
    """The forecast as plain lines, one fact each."""
    dropped = ", ".join(f"{v} {k}" for k, v in info["prompts_dropped"].items()) or "none"
    lines = [f"prompts: {info['prompts_seen']:,} seen, {info['prompts_surviving']:,} survive the "
             f"filters (dropped: {dropped}); {info['prompts_planned']:,} planned, "
             f"{info['prompts_already_answered']:,} already answered, "
             f"{info['prompts_to_send']:,} to send"]
    lines.append(f"sample: {info['sample']} prompts answered ({info['sample_paid']} paid, "
                 f"{info['sample_from_cache']} from the cache, {info['sample_failed']} failed); "
                 f"the full run reuses them")
    if info["mean_prompt_tokens"] is not None:
        reasoning = (f", {info['mean_reasoning_tokens']:,.0f} of them reasoning"
                     if info["mean_reasoning_tokens"] else "")
        lines.append(f"per request: {info['mean_prompt_tokens']:,.0f} tokens in, "
                     f"{info['mean_completion_tokens']:,.0f} out{reasoning}; latency "
                     f"{info['mean_latency_s'] or 0:.2f}s")
    dropped_answers = ", ".join(f"{v} {k}" for k, v in info["answers_dropped"].items())
    share = info["kept_share"]
    asked = info["sample"] * info["samples_per_prompt"]
    lines.append(f"answers kept: {info['answers_kept']} of {asked}"
                 + (f" ({share:.0%}, 95%: {info['kept_share_interval'][0]:.0%} to "
                    f"{info['kept_share_interval'][1]:.0%})" if share is not None else "")
                 + (f"; dropped: {dropped_answers}" if dropped_answers else "")
                 + (f"; {info['answers_not_verified']} failed verification"
                    if info["answers_not_verified"] else ""))
    if info["priced"] and "cost_online" in info:
        lines.append(f"cost online: {_money(info['cost_online'])}"
                     f"{_span(info['cost_online_interval'])}, "
                     f"{_money(info['cost_online_remaining'])} still to pay")
        lines.append(f"cost through a batch API: {_money(info['cost_batch'])}"
                     f"{_span(info['cost_batch_interval'])}")
    elif not info["priced"]:
        lines.append("cost: n/a (the teacher's model has no price; add it under "
                     "[generate.prices])")
    if info.get("wall_time_s") is not None:
        bound = f", bound by {info['binding_limit']}" if info.get("binding_limit") else ""
        lines.append(f"wall time: {info['wall_time_s'] / 60:,.1f} min for the rest{bound}")
    lines.append(f"records kept: {info['records_expected']:,.0f}"
                 f"{_span(info['records_interval'], money=False)}")
    want = info["num_records"]
    if not info["prompts_to_send"]:
        lines.append("nothing left to send: every planned prompt is answered already")
    elif not info["enough_prompts"]:
        lines.append(f"not enough prompts: all {info['prompts_surviving']:,} surviving prompts "
                     f"would keep about {info['records_possible']:,.0f} records, fewer than "
                     f"num_records = {want:,}")
    elif info.get("prompts_needed") is not None:
        lines.append(f"to keep {want:,} records: about {info['prompts_needed']:,} prompts, "
                     f"{_money(info.get('spend_needed'))}"
                     f"{_span(info.get('spend_needed_interval'))}")
    if info["stopped"]:
        lines.append(f"stopped: {info['stopped']}")
    return lines


def forecast(config: GenerateConfig, seed: int, out_dir: Path, sample: int,
             console: Console | None = None) -> dict[str, Any]:
    """Forecast the generation `config` describes into `out_dir` (see the module docstring)."""
    return Forecast(config, seed, out_dir, console or Console(), sample).run()
