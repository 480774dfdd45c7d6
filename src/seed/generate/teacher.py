"""`seed generate` with an HTTP teacher: prompts in, answered records out, resumable and in budget.

Files in the output directory:
- `train.jsonl`: one record per answer (times `samples`), each with its teacher, source and purpose
  provenance and `meta.prompt_key`, appended as one write per prompt; a write a kill tore after a
  whole line is cut off on the rerun (records.seal_records), which skips every prompt already
  wholly there. With `generate.verify`, only the
  answers its verifier passes, as `keep` says (seed.generate.verify).
- `eval.jsonl`: with `generate.tasks`, the held-out reasoning-gym prompts (never trained on).
- `cache.sqlite`: the request cache; answers land there before the records file, so a prompt
  answered but not yet written when the process died is written on the rerun without a request.
- `failed.jsonl`: prompts that failed after every retry, or whose answers the filters dropped
  (too short, a refusal, a claim to be another model: `generate.filters.identity`), or of which
  none verified, with the reason; a rerun tries them again (a cached answer costs nothing).
- `summary.json`: the closing figures (with a verifier, its yield per family over the job).

The flow: check every input (prompt files, key, base URL) before writing anything; build the
prompt stream (files, then Self-Instruct and Evol-Instruct output, then `generate.tasks`) through
the instruction filters; stream it through the engine; filter, verify, write. Multi-turn
conversations go round by round (the teacher answers, then plays the user), each round through the
same engine and cache.
"""

from __future__ import annotations

import asyncio
import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

from rich.console import Console

from seed.endpoints.base import Completion, Endpoint
from seed.endpoints.factory import make_endpoint
from seed.endpoints.openai import schema_model
from seed.errors import UserError
from seed.files import hash_json, seal_jsonl, write_json_atomic
from seed.generate import batch_route, sources, verify
from seed.generate.budget import Budget
from seed.generate.cache import RequestCache
from seed.generate.engine import Limits, Request, Result, Stats, complete_all, run
from seed.generate.filters import AnswerFilter, PromptFilter, is_refusal
from seed.generate.progress import live, summary
from seed.recipe import MAX_CONCURRENCY, GenerateConfig
from seed.records import (
    Provenance,
    Record,
    Source,
    Teacher,
    prompt_lines,
    read_records,
    seal_records,
    whole_prompts,
    write_records,
)
from seed.runs import now_iso

RECORDS, FAILED, CACHE, SUMMARY = "train.jsonl", "failed.jsonl", "cache.sqlite", "summary.json"
EVAL = "eval.jsonl"  # generate.tasks' held-out prompts
# A multi-turn conversation under way: its prompt, its turns so far, each answer's logprobs.
Conversation = tuple[sources.Prompt, list[dict[str, str]], list[Any]]


def make_limits(config: GenerateConfig) -> Limits:
    lc = config.limits
    return Limits(concurrency=lc.concurrency, requests_per_minute=lc.requests_per_minute,
                  tokens_per_minute=lc.tokens_per_minute, max_attempts=lc.max_attempts,
                  timeout=lc.timeout, retry_on_length=lc.retry_on_length,
                  backoff_base=lc.backoff_base, backoff_max=lc.backoff_max)


def request_params(config: GenerateConfig) -> dict[str, Any]:
    params = dict(config.params)
    if config.samples > 1:
        params["n"] = config.samples
    if config.response_schema is not None:
        params["response_schema"] = config.response_schema
    return params


def answered(out_dir: Path, job: str) -> set[str]:
    """The prompts this job already has all their records for; reads (and checks) `train.jsonl`
    and writes nothing. Answers of another teacher or other parameters do not count."""
    path = out_dir / RECORDS
    if not path.exists():
        return set()
    return whole_prompts(read_records(path), job)


class Output:
    """The records file, the failures file and the set of prompts already answered."""

    def __init__(self, out_dir: Path, done: set[str]) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.path = out_dir / RECORDS
        seal_records(self.path)
        self.done = done
        self._records = self.path.open("ab", buffering=0)
        seal_jsonl(out_dir / FAILED)
        self._failed = (out_dir / FAILED).open("ab", buffering=0)
        self.written = 0
        self.failed = 0

    def write(self, records: list[Record]) -> None:
        self._records.write(prompt_lines(records))  # one write() per prompt
        self.written += len(records)

    def fail(self, key: str, messages: list[dict[str, str]], reason: str, attempts: int,
             extra: dict[str, Any] | None = None) -> None:
        line = json.dumps({"prompt_key": key, "messages": messages, "reason": reason,
                           "attempts": attempts, "at": now_iso(), **(extra or {})},
                          ensure_ascii=False)
        self._failed.write((line + "\n").encode())
        self.failed += 1

    def close(self) -> None:
        self._records.close()
        self._failed.close()


def _records(prompt: sources.Prompt, result: Result, teacher: Teacher, job: str,
             turns: list[dict[str, str]] | None = None,
             logprobs: list[Any] | None = None) -> list[Record]:
    """One record per completion; `teacher` already holds the route, host, model and params."""
    out = []
    for i, c in enumerate(result.completions):
        answered_by = teacher.model_copy(update={
            "model_returned": c.model, "system_fingerprint": c.system_fingerprint,
            "requested_at": result.requested_at, "responded_at": result.responded_at,
            "usage_estimated": c.usage_estimated or None, "api": result.api})
        meta: dict[str, Any] = {**prompt.meta, "prompt_key": prompt.key, "job": job,
                                "sample": i, "finish_reason": c.finish_reason}
        lps = [*(logprobs or []), c.logprobs] if c.logprobs is not None else logprobs
        if lps:
            meta["logprobs"] = lps
        messages = [*(turns or prompt.messages), assistant_turn(c)]
        out.append(Record.new(messages, Provenance(teacher=answered_by, source=prompt.source,
                                                   purpose="train"), meta))
    return out


def assistant_turn(c: Completion) -> dict[str, str]:
    """The answer as an assistant message, its thinking trace in `reasoning_content`."""
    turn = {"role": "assistant", "content": c.text}
    if c.reasoning is not None:
        turn["reasoning_content"] = c.reasoning
    return turn


def job_key(endpoint: Endpoint, config: GenerateConfig) -> str:
    """What makes two answers to one prompt interchangeable: teacher, parameters, turns."""
    # What is kept depends on the verifier too (answers are cached, so a new one costs nothing).
    verify = {"verify": config.verify.model_dump()} if config.verify else {}
    return hash_json({"endpoint": endpoint.identity(), "params": request_params(config),
                      "turns": config.turns, **verify})[:16]


def _keep(answers: dict[int, Result], result: Result) -> None:
    answers[result.request.payload] = result


class Generation:
    """One `seed generate` invocation with an HTTP teacher."""

    def __init__(self, config: GenerateConfig, seed: int, out_dir: Path, console: Console) -> None:
        self.config, self.seed, self.out_dir, self.console = config, seed, out_dir, console
        if config.teacher.kind not in ("openai", "anthropic"):
            raise UserError(f"generate.teacher.kind = \"{config.teacher.kind}\": prompts are "
                            "answered by an openai or anthropic teacher (a tasks teacher writes "
                            "its own)")
        if config.turns > 1 and config.samples > 1:
            raise UserError("generate.turns > 1 needs generate.samples = 1 (sample whole "
                            "conversations by running again with another seed)")
        self.limit = config.num_records if "num_records" in config.model_fields_set else None
        self.verify = verify.resolved(config)
        self.reference = self.verify.reference if self.verify and self.verify.kind == "math" \
            else None
        self.total = 0
        for p in config.prompts:  # a broken line stops us here, before anything is paid for
            self.total += sources.check_prompts(p.path, kind=p.format, column=p.column,
                                                reference=self.reference)
        if config.self_instruct:
            sources.seed_tasks(config.self_instruct.seed_tasks)
        self.held_out, self.task_prompts = sources.task_prompts(config, seed)
        self.total += len(self.task_prompts)
        if not config.prompts and not config.self_instruct and not config.tasks:
            raise UserError("no prompts: add [[generate.prompts]] with a path, "
                            "[[generate.tasks]], [generate.self_instruct], or pass --prompts FILE")
        if config.response_schema is not None:
            schema_model(config.response_schema)
        f = config.filters
        self.filter = PromptFilter(f.exact_duplicates, f.near_duplicates, f.min_prompt_chars,
                                   f.max_prompt_chars, f.embedding_model, f.embedding_threshold)
        self.answers = AnswerFilter(f.min_answer_chars, f.drop_refusals, f.identity)
        self.endpoint = make_endpoint(config.teacher, "generate.teacher",
                                      timeout=config.limits.timeout,
                                      max_connections=config.limits.concurrency * 2)
        self.teacher = self.endpoint.teacher().model_copy(
            update={"params": request_params(config)})
        self.job = job_key(self.endpoint, config)
        self.limits = make_limits(config)
        # generate.teacher.batch: the answers through the provider's batch API (seed.generate.batch)
        self.batch = batch_route.Batching(config, self.endpoint) \
            if getattr(config.teacher, "batch", False) else None
        # the price warnings come once, from the budget that charges first
        self.budget = Budget(self.teacher.model_requested or "", config.prices or None,
                             config.max_cost, config.max_tokens, warn_prices=self.batch is None)
        self.stats = Stats()

    async def _ask(self, prompts: list[list[dict[str, str]]]) -> list[str | None]:
        """Answers for generated-prompt steps (Self-Instruct, Evol, follow-ups), via the cache."""
        params = {k: v for k, v in self.config.params.items()
                  if k not in ("logprobs", "top_logprobs", "n")}
        return await complete_all(prompts, self.endpoint, self.limits, params, self.cache)

    async def _generated(self) -> list[sources.Prompt]:
        c, out = self.config, []
        if c.self_instruct:
            si = c.self_instruct
            seeds = sources.seed_tasks(si.seed_tasks)
            texts = await sources.self_instruct(seeds, si.num_instructions, self._ask, self.seed)
            src = Source(kind="self_instruct", name=Path(si.seed_tasks).name, license=si.license,
                         seed=self.seed, config=si.model_dump())
            out += [sources.Prompt([{"role": "user", "content": t}], src) for t in texts]
        if c.evol_instruct:
            ev = c.evol_instruct
            base = out + [p for f in c.prompts for p in self._file_prompts(f)]
            evolved = await sources.evol_instruct(
                [p.messages[-1]["content"] for p in base], ev.rounds, self._ask, self.seed,
                ev.breadth_share)
            src = Source(kind="evol_instruct", name="evol_instruct", seed=self.seed,
                         config=ev.model_dump())
            out = base if ev.keep_original else []
            out += [sources.Prompt([{"role": "user", "content": t}],
                                   src.model_copy(update={"operation": op, "round": r}))
                    for t, op, r in evolved]
        return out

    def _file_prompts(self, f: Any) -> Iterator[sources.Prompt]:
        return sources.read_prompts(f.path, f.format, f.column, f.license, f.name,
                                    self.reference)

    def candidates(self, generated: list[sources.Prompt]
                   ) -> Iterator[tuple[sources.Prompt, str | None]]:
        """Every prompt in the order the job takes them, with the instruction filters' reason to
        drop it (None: it is answered), all of them, the limit not applied; sends nothing."""
        evolved_files = self.config.evol_instruct is not None
        files = () if evolved_files else (p for f in self.config.prompts
                                          for p in self._file_prompts(f))
        for stream in (files, generated, self.task_prompts):
            for p in stream:
                yield p, self.filter.reason(p.messages[-1]["content"])

    def _stream(self, generated: list[sources.Prompt]) -> Iterator[sources.Prompt]:
        """Every prompt to answer, filtered, without those already answered, up to the limit."""
        n = 0
        for p, dropped in self.candidates(generated):
            if self.limit is not None and n >= self.limit:
                return
            if dropped is not None:
                continue
            n += 1
            if p.key not in self.out.done:
                yield p

    def judge(self, result: Result) -> tuple[list[Record], str | None, dict[str, Any] | None]:
        """An answered prompt's records that the answer filters and the verifier keep, why none
        were kept (else None), and the verifier's tally; writes nothing (`seed generate
        --forecast` judges its sample with it)."""
        samples = _records(result.request.payload, result, self.teacher, self.job)
        kept, why = self.answers.keep(samples)
        extra = None
        if self.verify is not None:  # on answers already cached: a rerun re-verifies for free
            kept, verdict, tally = verify.select(self.verify, samples, kept)
            why, extra = why or verdict, {"job": self.job, "verify": tally}
        return kept, why, extra

    def _save(self, result: Result) -> None:
        prompt: sources.Prompt = result.request.payload
        if not result.ok:
            self.out.fail(prompt.key, prompt.messages, result.error or "failed", result.attempts)
            return
        kept, why, extra = self.judge(result)
        if kept:
            self.out.write(kept)
            self.out.done.add(prompt.key)
        else:
            self.out.fail(prompt.key, prompt.messages, why or "filtered", result.attempts, extra)

    async def _multi_turn(self, prompts: Iterator[sources.Prompt]) -> None:
        convs: list[Conversation] = [(p, list(p.messages), []) for p in prompts]
        params = request_params(self.config)
        for turn in range(1, self.config.turns + 1):
            answers: dict[int, Result] = {}
            reqs = (Request(p.key, msgs, params, payload=i) for i, (p, msgs, _) in enumerate(convs))
            await run(reqs, self.endpoint, self.limits, cache=self.cache, budget=self.budget,
                      stats=self.stats, on_result=partial(_keep, answers))
            if self.stats.stopped:
                return
            last = turn == self.config.turns
            keep: list[Conversation] = []
            for i, (p, msgs, lps) in enumerate(convs):
                r = answers.get(i)
                if r is None or r.error is not None:
                    self.out.fail(p.key, msgs, r.error if r and r.error else "not answered",
                                  r.attempts if r else 0)
                    continue
                if last:
                    self._save_turns(p, r, msgs, lps)
                else:
                    msgs.append(assistant_turn(r.completions[0]))  # trace kept, never resent
                    lps.append(r.completions[0].logprobs)
                    keep.append((p, msgs, lps))
            if last:
                return
            follow = await self._ask([sources.follow_up_messages(m) for _, m, _ in keep])
            convs = []
            for (p, msgs, lps), text in zip(keep, follow, strict=True):
                if text and not is_refusal(text):
                    convs.append((p, [*msgs, {"role": "user", "content": text.strip()}], lps))
                else:
                    self.out.fail(p.key, msgs, "no follow-up from the teacher", 0)

    def _save_turns(self, p: sources.Prompt, r: Result, msgs: list[dict[str, str]],
                    lps: list[Any]) -> None:
        logprobs = lps if any(x is not None for x in lps) else None
        records = _records(p, r, self.teacher, self.job, turns=msgs, logprobs=logprobs)
        kept, why = self.answers.keep(records)
        if kept:
            self.out.write(kept)
        else:
            self.out.fail(p.key, msgs, why or "filtered", r.attempts)

    @contextmanager
    def _opened(self) -> Iterator[None]:
        """The output, once every check has passed: the records are read first, then the cache
        is opened, so a broken records file or an unreadable cache leaves no new file behind."""
        done = answered(self.out_dir, self.job)
        self.cache = RequestCache(self.out_dir / CACHE)
        try:
            self.out = Output(self.out_dir, done)
        except BaseException:
            self.cache.close()
            raise
        self.already = len(done)
        if self.held_out:
            write_records(self.out_dir / EVAL, self.held_out)
        if self.total:
            limit = self.total if self.limit is None else min(self.total, self.limit)
            self.stats.total = limit - self.already
        try:
            yield
        finally:
            self.out.close()
            self.cache.close()

    async def _main(self) -> None:
        try:
            await self.endpoint.check_reachable()
            with self._opened():
                await self._answer_all()
        finally:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the teacher's connections (and its batch API's); the generation is not used
        afterwards."""
        if self.batch is not None:
            await self.batch.provider.aclose()
        await self.endpoint.aclose()

    async def _answer_all(self) -> None:
        generated = await self._generated()
        prompts = self._stream(generated)
        shown = self.budget if self.batch is None else self.batch.budget
        with live(self.stats, shown, self.console):
            if self.config.turns > 1:
                await self._multi_turn(prompts)
            elif self.batch is not None:
                await self.batch.run((Request(p.key, p.messages, request_params(self.config),
                                              payload=p) for p in prompts), self.limits,
                                     self.cache, self._save, self.budget, self.stats)
            else:
                reqs = (Request(p.key, p.messages, request_params(self.config), payload=p)
                        for p in prompts)
                await run(reqs, self.endpoint, self.limits, cache=self.cache,
                          on_result=self._save, budget=self.budget, stats=self.stats)

    def run(self) -> dict[str, Any]:
        asyncio.run(self._main())
        info = {"records_written": self.out.written, "prompts_already_done": self.already,
                "prompts_answered": len(self.out.done), "failed": self.out.failed,
                "filtered_prompts": self.filter.dropped,
                "filtered_answers": self.answers.dropped,
                "identity_flagged": self.answers.flagged, "requests_paid": self.stats.paid,
                "answers_from_cache": self.stats.cached, "retries": self.stats.retries,
                "prompt_tokens": self.budget.prompt_tokens,
                "cached_tokens": self.budget.cached_tokens,  # of prompt_tokens, cache reads
                "completion_tokens": self.budget.completion_tokens,
                "reasoning_tokens": self.budget.reasoning_tokens, "cost": self.budget.cost,
                "usage_estimated_requests": self.budget.estimated_requests,
                "stopped": self.stats.stopped}
        verified = None if self.verify is None else verify.dataset_yield(
            self.out_dir / RECORDS, self.out_dir / FAILED, self.job, self.verify)
        if verified is not None:
            info["verify"] = verified
        if self.batch is not None:  # batch answers at batch prices, retries at online ones
            info.update(self.batch.summary(self.budget))
        write_json_atomic(self.out_dir / SUMMARY, info)
        for line in summary(self.stats, self.budget if self.batch is None else self.batch.budget):
            self.console.print(line)
        for line in verify.yield_lines(verified) if verified is not None else ():
            self.console.print(f"yield {line}")
        return info


def generate_from_teacher(config: GenerateConfig, seed: int, out_dir: Path,
                          console: Console | None = None) -> dict[str, Any]:
    """Answer the configured prompts with the HTTP teacher into `out_dir` (see the docstring)."""
    return Generation(config, seed, out_dir, console or Console()).run()


def apply_overrides(config: GenerateConfig, prompts: list[Path] | None, max_cost: float | None,
                    max_tokens: int | None, concurrency: int | None) -> GenerateConfig:
    """The recipe's [generate] section with the command line's flags on top."""
    from seed.recipe import PromptFile

    update: dict[str, Any] = {}
    if max_cost is not None and not (0 < max_cost < math.inf):
        raise UserError(f"--max-cost {max_cost}: give a number of dollars above 0")
    if max_tokens is not None and max_tokens < 1:
        raise UserError(f"--max-tokens {max_tokens}: give at least 1")
    if prompts:
        update["prompts"] = [*config.prompts, *(PromptFile(path=str(p)) for p in prompts)]
    if max_cost is not None:
        update["max_cost"] = max_cost
    if max_tokens is not None:
        update["max_tokens"] = max_tokens
    if concurrency is not None:
        if not 1 <= concurrency <= MAX_CONCURRENCY:
            raise UserError(f"--concurrency {concurrency}: give 1 to {MAX_CONCURRENCY:,}")
        update["limits"] = config.limits.model_copy(update={"concurrency": concurrency})
    return config.model_copy(update=update)
