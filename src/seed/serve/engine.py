"""Continuous batching over a `transformers` causal LM: many sequences share one forward pass.

One thread owns the model. Each step it admits waiting sequences into free slots (rows of the
batch), prefills at most `max_prefill_tokens` prompt tokens (in groups of similar length; a long
prompt in chunks over several steps when the runner allows), runs one decode step for every slot,
samples per sequence (its own temperature, top-p/top-k/min-p, penalties, logit bias, seed and
JSON-schema constraint), and hands each sequence's new text to the caller (an asyncio queue, or the
`on_events` sink). A finished or cancelled sequence frees its slot at once, so a short reply never
waits for a long one. The cache and the forward pass live in `forward.py`.

A sequence may ask for its prompt's logprobs (scoring, as `echo` with `logprobs` does): its
prefill then keeps every position's logits (the same forward pass), and the first event carries
each prompt token's logprob given the tokens before it. `max_tokens=0` ends a sequence right after
its prefill. What a sequence asks for beyond plain sampling is read once, when it is submitted
(`Sequence.adjusts`, `Sequence.filters`), so plain requests pay nothing per token for it.

An engine given a `Watermark` (seed.protect.watermark) biases every sequence whose params ask
(`SamplingParams.watermark`): once the window of the last `context` tokens (prompt tokens count)
exists, `delta` is added to its green tokens' logits after the temperature, the penalties and the
constraint's mask, greedy rows included, and before top-p/top-k/min-p. Logprobs it returns (and
scored prompts) are those of the watermarked model: its logits plus the bias, which at
temperature 1 without penalties is the distribution it sampled from, so a distiller that learns
from logprobs learns the watermark too.

Why our own scheduler: transformers' `generate_batch` / ContinuousBatchingManager reached 2.6x a
sequential loop on this CPU (docs/LOG.md) but takes no per-request logits processor, seed or
logprobs, which the OpenAI API needs. This module knows nothing about HTTP or the OpenAI wire
format.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from seed.protect.watermark import Watermark
from seed.serve.engine_types import Event, QueueFull, SamplingParams, TokenLogprob
from seed.serve.forward import make_runner

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Sequence:
    """One sequence being generated; `queue` receives its Events on the caller's event loop
    (or the engine's `on_events` sink gets them, with `tag` to route them by).

    Two sequences are the same only when they are one object: finding a slot's sequence
    (`list.index`, `in`) then compares identities, not every field (with 512 running sequences the
    field-by-field comparison took a third of a rollout's time; docs/LOG.md, "Issue 16: GRPO").
    """

    index: int
    prompt_ids: list[int]
    params: SamplingParams
    queue: asyncio.Queue | None = None
    loop: asyncio.AbstractEventLoop | None = None
    tag: Any = None
    out_ids: list[int] = field(default_factory=list)
    text: str = ""  # out_ids decoded so far, whole characters only
    emitted: int = 0  # characters of `text` already handed out
    decode_from: int = 0  # out_ids[decode_from:decoded] is the context window of the next decode
    decoded: int = 0  # out_ids[:decoded] are in `text`
    prefilled: int = 0  # prompt tokens in the cache; the sequence decodes once all of them are
    pending_ids: list[int] = field(default_factory=list)
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    cancelled: bool = False
    rng: random.Random = field(init=False)  # its draws: from params.seed, else from the OS
    submitted_at: float = field(default_factory=time.monotonic)
    prompt_scores: list[TokenLogprob] = field(default_factory=list)  # prefilled prompt, scored
    adjusts: bool = False  # penalties, a logit bias or a constraint change its logits
    filters: bool = False  # top-p, top-k or min-p narrow what it samples from
    bias: tuple[torch.Tensor, torch.Tensor] | None = None  # logit_bias as (ids, values)
    seen: torch.Tensor | None = None  # for a repetition penalty: the tokens of prompt and output

    def __post_init__(self) -> None:
        p = self.params
        self.rng = random.Random(p.seed)
        if not p.detokenize and p.stop:
            raise ValueError("engine: stop strings need text; a sequence with detokenize=False "
                             "cannot have them")
        self.adjusts = bool(p.presence_penalty or p.frequency_penalty or p.logit_bias
                            or p.repetition_penalty != 1.0 or p.constraint is not None)
        self.filters = p.top_p < 1.0 or p.top_k > 0 or p.min_p > 0
        if p.logit_bias:
            self.bias = (torch.tensor(list(p.logit_bias)),
                         torch.tensor(list(p.logit_bias.values()), dtype=torch.float32))


class Engine:
    """Runs sequences for a model and tokenizer with at most `max_running` in one batch."""

    def __init__(self, model: Any, tokenizer: Any, *, eos_ids: set[int], max_running: int = 32,
                 max_waiting: int = 256, max_prefill_tokens: int = 2048,
                 on_events: Callable[[list[tuple[Sequence, Event]]], None] | None = None,
                 watermark: Watermark | None = None):
        _check_limits(max_running=max_running, max_waiting=max_waiting,
                      max_prefill_tokens=max_prefill_tokens)
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.max_running = max_running
        self.max_waiting = max_waiting
        # Padded prompt tokens prefilled per step: a burst of newcomers is admitted over several
        # steps, so running sequences wait less between tokens (docs/LOG.md: ITL p99 -35-50%).
        self.max_prefill_tokens = max_prefill_tokens
        self.on_events = on_events  # called on the engine thread with each step's events
        self.watermark = watermark  # biases the sequences whose params ask for it
        self.device = next(model.parameters()).device
        self.vocab_size = model.config.get_text_config().vocab_size
        self._waiting: collections.deque[Sequence] = collections.deque()
        self.runner = make_runner(model, max_running)
        self._slots: list[Sequence | None] = []  # the batch: each running sequence keeps a row
        self._last: list[int] = []  # each slot's latest token, the next step's input
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="seed-engine", daemon=True)
        self.steps = 0
        self.threads = torch.get_num_threads()

    # -- the caller's side -------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self._thread.join(timeout=30)

    @property
    def queue_depth(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        return sum(s is not None for s in self._slots)

    def submit(self, prompt_ids: list[int], params: list[SamplingParams],
               queue: asyncio.Queue | None = None, tag: Any = None) -> list[Sequence]:
        """Queue one sequence per params (n > 1 gives several); raises QueueFull at the bound.

        Events go to `queue` on the calling event loop, or to `on_events` when there is no queue.
        """
        loop = asyncio.get_running_loop() if queue is not None else None
        seqs = []
        for i, p in enumerate(params):
            seqs.append(Sequence(index=i, prompt_ids=prompt_ids, params=p, queue=queue, loop=loop,
                                 tag=tag))
        with self._cond:
            if len(self._waiting) + len(seqs) > self.max_waiting:
                raise QueueFull
            self._waiting.extend(seqs)
            self._cond.notify()
        return seqs

    def cancel(self, seqs: list[Sequence]) -> None:
        """Stop generating for these sequences (the client went away); safe from any thread.

        A waiting one leaves the queue now, so the queue holds only sequences someone waits for
        (its depth is what the API side counts); a running one frees its slot at the next step.
        """
        with self._cond:
            for s in seqs:
                s.cancelled = True
            self._waiting = collections.deque(s for s in self._waiting if not s.cancelled)

    # -- the engine thread -------------------------------------------------------------------

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        torch.set_num_threads(self.threads)
        while True:
            with self._cond:
                while not self._stopping and not self._waiting and not self._slots:
                    self._cond.wait()
                if self._stopping:
                    return
                partial = [s for s in self._slots if s is not None and not _ready(s)]
                budget = self.max_prefill_tokens - sum(len(s.prompt_ids) - s.prefilled
                                                       for s in partial)
                admitted = self._take_waiting(budget)
            with torch.inference_mode():
                try:
                    if partial or admitted:
                        self._prefill(partial, admitted)
                    if any(s is not None and _ready(s) for s in self._slots):
                        self._decode()
                except Exception as e:  # a bug must not hang the clients: fail their sequences
                    log.exception("generation step failed")
                    self._post([(s, Event(s.index, "", [], [], f"error: {e}"))
                                for s in {id(s): s for s in admitted + self._slots if s}.values()])
                    self._reset_batch()

    def _take_waiting(self, budget: int) -> list[Sequence]:
        """Waiting sequences for free slots, within `budget` prompt tokens this step (a runner
        that prefills in chunks takes a newcomer while any budget is left; others take whole
        prompts, padded to the longest, and at least one)."""
        taken: list[Sequence] = []
        width = 0
        while self._waiting and self.running + len(taken) < self.max_running:
            s = self._waiting[0]
            if self.runner.chunked:
                if budget <= 0:
                    break
                budget -= len(s.prompt_ids)
            else:
                w = max(width, len(s.prompt_ids))
                if taken and w * (len(taken) + 1) > budget:
                    break
                width = w
            taken.append(self._waiting.popleft())
        return taken

    def _prefill(self, partial: list[Sequence], new: list[Sequence]) -> None:
        """Prefill this step's share of prompts: the unfinished ones first, then newcomers, each
        a chunk within the step's token budget when the runner allows (so a long prompt does not
        stall every running sequence), in groups of similar length so padding stays small."""
        for s in new:
            slot = next((i for i, x in enumerate(self._slots) if x is None), len(self._slots))
            if slot == len(self._slots):
                self._slots.append(None)
                self._last.append(0)
            self._slots[slot] = s
        budget = self.max_prefill_tokens
        work: list[tuple[int, int]] = []  # (slot, tokens to prefill now)
        whole: set[int] = set()  # prompts (by identity) prefilled whole this step
        for s in partial + new:
            if s.cancelled:  # the client left before its first token: free the slot now
                slot = self._slots.index(s)
                self._slots[slot] = None
                self.runner.free(slot)
                continue
            n = len(s.prompt_ids) - s.prefilled
            if _shares(self.runner, s) and id(s.prompt_ids) in whole:
                work.append((self._slots.index(s), n))  # a copy of its sibling's cache
                continue
            if self.runner.chunked:
                n = min(n, max(budget, 0))
                if n == 0:
                    continue
            budget -= n
            if _shares(self.runner, s) and n == len(s.prompt_ids):
                whole.add(id(s.prompt_ids))
            work.append((self._slots.index(s), n))
        group: list[tuple[int, int]] = []
        for slot, n in sorted(work, key=lambda w: w[1]):
            real = sum(g[1] for g in group) + n
            if group and n * (len(group) + 1) > 1.25 * real:
                self._prefill_group(group)
                group = []
            group.append((slot, n))
        if group:
            self._prefill_group(group)
        if all(x is None for x in self._slots):
            self._reset_batch()

    def _prefill_group(self, group: list[tuple[int, int]]) -> None:
        seqs = [_held(self._slots[slot]) for slot, _ in group]
        chunks = [s.prompt_ids[s.prefilled:s.prefilled + n] for s, (_, n) in zip(seqs, group,
                                                                                 strict=True)]
        slots = [slot for slot, _ in group]
        # The siblings of one prompt (n > 1, GRPO's group) whole and fresh: the first is run, the
        # others copy its cache and its last logits (vLLM's prefix caching, for a whole prompt).
        first: dict[int, int] = {}  # id(prompt_ids) -> the group index that runs it
        runs = []  # for each group index, the index of the row that computes it
        for j, s in enumerate(seqs):
            if _shares(self.runner, s) and len(chunks[j]) == len(s.prompt_ids):
                runs.append(first.setdefault(id(s.prompt_ids), j))
            else:
                runs.append(j)
        run = sorted(set(runs))
        at = {j: i for i, j in enumerate(run)}
        starts = [seqs[j].prefilled for j in run]
        scored = [at[j] for j in run if seqs[j].params.prompt_logprobs is not None]
        if scored:
            logits, every = self.runner.add_scoring([slots[j] for j in run],
                                                    [chunks[j] for j in run], starts, scored)
            for i, chunk_logits in zip(scored, every, strict=True):
                self._score(seqs[run[i]], chunk_logits, starts[i])
        else:
            logits = self.runner.add([slots[j] for j in run], [chunks[j] for j in run], starts)
        copies: dict[int, list[int]] = {}
        for j, r in enumerate(runs):
            if r != j:
                copies.setdefault(slots[r], []).append(slots[j])
        for src, dsts in copies.items():
            self.runner.copy(src, dsts)
        if len(run) < len(seqs):
            logits = logits[torch.tensor([at[r] for r in runs], device=logits.device)]
        for s, chunk in zip(seqs, chunks, strict=True):
            s.prefilled += len(chunk)
        done = [j for j, s in enumerate(seqs) if _ready(s)]
        if scored or any(seqs[j].params.max_tokens <= 0 for j in done):
            done = self._end_prefill([(j, slots[j], seqs[j]) for j in done])
        if done:
            self._sample_and_emit(logits[done], [group[j][0] for j in done])

    def _score(self, s: Sequence, logits: torch.Tensor, start: int) -> None:
        """Record the logprobs of the prompt tokens a prefilled piece predicts: position i of the
        piece (prompt position start + i) gives the logprob of the prompt token after it."""
        targets = s.prompt_ids[start + 1:start + 1 + len(logits)]
        if not targets:
            return
        logits = logits[:len(targets)].float()
        if self.watermark is not None and s.params.watermark:
            logits = self._watermarked_prompt(logits, s.prompt_ids, start)
        logprobs = torch.log_softmax(logits, dim=-1)
        chosen = logprobs.gather(1, torch.tensor(targets, device=logprobs.device)[:, None])
        k = s.params.prompt_logprobs or 0
        tops: list[list[tuple[int, float]]] = [[] for _ in targets]
        if k:
            vals, idx = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
            tops = [list(zip(i, v, strict=True)) for i, v in zip(idx.tolist(), vals.tolist(),
                                                                  strict=True)]
        s.prompt_scores += [TokenLogprob(t, lp, top) for t, lp, top in
                            zip(targets, chosen[:, 0].tolist(), tops, strict=True)]

    def _end_prefill(self, ready: list[tuple[int, int, Sequence]]) -> list[int]:
        """Hand each fully prefilled sequence that scored its prompt its prompt logprobs, and end
        each with max_tokens 0 here. Returns the indices (into the group) still to sample."""
        posts, sample = [], []
        for j, slot, s in ready:
            scored = s.params.prompt_logprobs is not None
            end = "length" if s.params.max_tokens <= 0 else None
            if not scored and end is None:
                sample.append(j)
                continue
            posts.append((s, Event(s.index, "", [], [], end,
                                   prompt_logprobs=s.prompt_scores if scored else None)))
            s.prompt_scores = []
            if end is None:
                sample.append(j)
            else:
                self._slots[slot] = None
                self.runner.free(slot)
        self._post(posts)
        return sample

    def _decode(self) -> None:
        # Close holes: the highest sequence moves down into the lowest free slot (one row's cache
        # is copied), so finished rows are not computed again; then shed the free top.
        while self._slots and self._slots[-1] is None:
            self._slots.pop()
            self._last.pop()
        hole = next((i for i, s in enumerate(self._slots) if s is None), None)
        while hole is not None:
            top = len(self._slots) - 1
            self.runner.move(top, hole)
            self._slots[hole], self._last[hole] = self._slots[top], self._last[top]
            self._slots.pop()
            self._last.pop()
            while self._slots and self._slots[-1] is None:
                self._slots.pop()
                self._last.pop()
            hole = next((i for i, s in enumerate(self._slots) if s is None), None)
        live = [s is not None and _ready(s) for s in self._slots]
        logits = self.runner.step(self._last, live)
        self.steps += 1
        self._sample_and_emit(logits, [i for i, ok in enumerate(live) if ok], dense=True)

    def _sample_and_emit(self, logits: torch.Tensor, slots: list[int], dense: bool = False) -> None:
        """Pick a token for each of `slots` (rows of `logits`, or of slot numbers when `dense`),
        emit text, free finished slots."""
        if dense:  # a decode step's logits cover every slot; keep the decoding ones
            logits = logits[slots]
        logits = logits.float()
        rows = [self._slots[i] for i in slots]
        marked = self._green_rows(rows, logits.shape[-1]) if self.watermark is not None else None
        raw_logprobs = None
        if any(s is not None and s.params.logprobs for s in rows):
            raw_logprobs = torch.log_softmax(logits if marked is None else self._biased(
                logits.clone(), marked, [1.0] * len(marked[0])), dim=-1)
        for j, s in enumerate(rows):
            if s is not None and s.adjusts:
                _adjust(logits[j], s)
        if marked is not None:
            # delta after the temperature: _pick divides by it, so the bias is delta x T here (and
            # delta for a greedy row, which never divides)
            temps = [_held(rows[j]).params.temperature for j in marked[0]]
            self._biased(logits, marked, [t if t > 0 else 1.0 for t in temps])
        tokens = self._pick(logits, rows)
        posts = []
        for j, (slot, s, tok) in enumerate(zip(slots, rows, tokens, strict=True)):
            if s is None:
                continue
            self._last[slot] = tok
            reason = self._advance(s, tok, raw_logprobs[j] if raw_logprobs is not None else None)
            event = self._event(s, reason) if s.params.detokenize else _tokens_event(s, reason)
            if event is not None:
                posts.append((s, event))
                reason = event.finish_reason  # a stop string ends the sequence here too
            if reason is not None or s.cancelled:
                self._slots[slot] = None
                self.runner.free(slot)
        self._post(posts)
        if all(s is None for s in self._slots):
            self._reset_batch()

    def _green_rows(self, rows: list[Sequence | None],
                    vocab: int) -> tuple[list[int], torch.Tensor] | None:
        """The rows to watermark (their sequence asks and has a whole window of context) and
        their green masks; None when there are none."""
        context = _marking(self.watermark).green.context
        picked, windows = [], []
        for j, s in enumerate(rows):
            if s is not None and s.params.watermark:
                window = _window(s, context)
                if window is not None:
                    picked.append(j)
                    windows.append(tuple(window))
        if not picked:
            return None
        return picked, self._green_masks(windows, vocab)

    def _green_masks(self, windows: list[tuple[int, ...]], vocab: int) -> torch.Tensor:
        return _marking(self.watermark).green.masks(windows, vocab, self.device)

    def _biased(self, logits: torch.Tensor, marked: tuple[list[int], torch.Tensor],
                scales: list[float]) -> torch.Tensor:
        """`logits` (in place) with delta x scale added to each marked row's green tokens."""
        rows, green = marked
        delta = _marking(self.watermark).delta
        if len(set(scales)) == 1:  # one temperature: one fused add (most steps)
            bias = green.to(logits.dtype).mul_(delta * scales[0])
        else:
            bias = green.to(logits.dtype).mul_(
                torch.tensor(scales, device=logits.device)[:, None] * delta)
        if len(rows) == len(logits):  # every row marked, in order (_green_rows keeps the order)
            return logits.add_(bias)
        return logits.index_add_(0, torch.tensor(rows, device=logits.device), bias)

    def _watermarked_prompt(self, logits: torch.Tensor, prompt_ids: list[int],
                            start: int) -> torch.Tensor:
        """A scored prompt piece's logits with the watermark's bias: position i predicts prompt
        token start + i + 1 after the window of tokens before it (none before a whole window)."""
        context = _marking(self.watermark).green.context
        ends = [start + 1 + i for i in range(len(logits)) if start + 1 + i >= context]
        if not ends:
            return logits
        green = self._green_masks([tuple(prompt_ids[e - context:e]) for e in ends],
                                  logits.shape[-1])
        rows = list(range(len(logits) - len(ends), len(logits)))
        return self._biased(logits.clone(), (rows, green), [1.0] * len(ends))

    def _pick(self, logits: torch.Tensor, rows: list[Sequence | None]) -> list[int]:
        """Each row's next token: the top one for a greedy row (or a free one), else a draw.

        The sampling rows are drawn together: one softmax at each row's temperature, each row's
        top-k/min-p/top-p narrowing (only the rows that ask), then inverse-CDF sampling with one
        uniform per row from the sequence's own `rng` (one per sampled token, so a seeded
        sequence draws the same tokens whatever else is in the batch). This replaced one
        `torch.multinomial` call per row (docs/LOG.md, "Issue 16: rollout speed").
        """
        picked = logits.argmax(dim=-1).tolist()
        drawn = [(j, s) for j, s in enumerate(rows) if s is not None and s.params.temperature > 0]
        if not drawn:
            return picked
        seqs = [s for _, s in drawn]
        # A temperature under 1e-30 would overflow float32 logits to inf (and NaN after the
        # softmax); one that low picks the top token anyway.
        temps = torch.tensor([max(s.params.temperature, 1e-30) for s in seqs],
                             dtype=logits.dtype, device=logits.device)
        some = logits if len(drawn) == len(logits) else logits[[j for j, _ in drawn]]
        probs = torch.softmax(some / temps[:, None], dim=-1)
        for k, s in enumerate(seqs):
            if s.filters:
                probs[k] = _narrow(probs[k], s.params)
        uniforms = torch.tensor([s.rng.random() for s in seqs], dtype=torch.float64)
        for (j, _), tok in zip(drawn, _inverse_cdf(probs, uniforms).tolist(), strict=True):
            picked[j] = tok
        return picked

    def _advance(self, s: Sequence, tok: int, logprobs: torch.Tensor | None) -> str | None:
        """Record token `tok` for `s`; the finish reason if it ends the sequence."""
        p = s.params
        if p.constraint is not None:
            p.constraint.consume(tok)
        if tok in self.eos_ids:
            if p.prompt_logprobs is not None and logprobs is not None:
                # scoring reads the end token's logprob too: a reader of echo's logprobs (as
                # lm-evaluation-harness is) drops the last entry as the generated token
                s.pending_logprobs.append(TokenLogprob(tok, float(logprobs[tok]), _top(
                    logprobs, p.top_logprobs)))
            return "stop"
        s.out_ids.append(tok)
        s.pending_ids.append(tok)
        if logprobs is not None and p.logprobs:
            s.pending_logprobs.append(TokenLogprob(tok, float(logprobs[tok]),
                                                   _top(logprobs, p.top_logprobs)))
        if p.constraint is not None and p.constraint.is_done():
            return "stop"
        if len(s.out_ids) >= p.max_tokens:
            return "length"
        return None

    def _event(self, s: Sequence, reason: str | None) -> Event | None:
        """The text `s` may show now: held back while it could still turn into a stop string."""
        text = self._detokenize(s, final=reason is not None)
        end = len(text)
        for stop in s.params.stop:
            at = text.find(stop, max(0, s.emitted - len(stop) + 1))
            if at != -1 and at < end:
                end, reason = at, "stop"
        if reason is None:
            for stop in s.params.stop:
                for k in range(min(len(stop) - 1, end - s.emitted), 0, -1):
                    if text.endswith(stop[:k]):
                        end = min(end, len(text) - k)
                        break
        if end <= s.emitted and reason is None and not s.pending_logprobs:
            return None
        piece = text[s.emitted:end] if end > s.emitted else ""
        s.emitted = max(s.emitted, end)
        event = Event(s.index, piece, s.pending_ids, s.pending_logprobs, reason)
        s.pending_ids, s.pending_logprobs = [], []
        return event

    def _detokenize(self, s: Sequence, final: bool) -> str:
        """`s.text` with the new tokens added, decoding only a short window (vLLM's incremental
        detokenizer): the window's text with and without the new tokens differ by their text.
        A character split across tokens (a trailing U+FFFD) waits for its last byte, unless final.
        """
        if s.decoded == len(s.out_ids):
            return s.text
        window = s.out_ids[s.decode_from:s.decoded]
        before = self.tokenizer.decode(window, skip_special_tokens=True) if window else ""
        after = self.tokenizer.decode(s.out_ids[s.decode_from:], skip_special_tokens=True)
        if len(after) > len(before) and (final or not after.endswith("\ufffd")):
            s.text += after[len(before):]
            s.decode_from, s.decoded = s.decoded, len(s.out_ids)
        return s.text

    def _post(self, posts: list[tuple[Sequence, Event]]) -> None:
        if self.on_events is not None:
            live = [(s, e) for s, e in posts if not s.cancelled]
            if live:
                self.on_events(live)
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Event]]] = {}
        for s, e in posts:
            if not s.cancelled and s.loop is not None and s.queue is not None:
                by_loop.setdefault(s.loop, []).append((s.queue, e))
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening
                loop.call_soon_threadsafe(_deliver, items)

    def _reset_batch(self) -> None:
        self._slots, self._last = [], []
        self.runner.reset()


def _top(logprobs: torch.Tensor, k: int) -> list[tuple[int, float]]:
    """The k most likely tokens and their logprobs (none for k 0)."""
    if not k:
        return []
    vals, idx = logprobs.topk(k)
    return list(zip(idx.tolist(), vals.tolist(), strict=True))


def _adjust(logits: torch.Tensor, s: Sequence) -> None:
    """Change one row of logits, in place, as the sequence's parameters say: the repetition
    penalty (transformers' meaning: a seen token's positive logit is divided by it, a negative
    one multiplied), frequency and presence penalties over the output, the logit bias, then the
    constraint's mask."""
    p = s.params
    vocab = logits.shape[-1]
    if p.repetition_penalty != 1.0:
        if s.seen is None:
            s.seen = torch.zeros(vocab, dtype=torch.bool, device=logits.device)
            s.seen[torch.tensor(s.prompt_ids, device=logits.device)] = True
        if s.out_ids:  # each step adds one token (set again when unchanged: no harm)
            s.seen[s.out_ids[-1]] = True
        picked = logits[s.seen]
        logits[s.seen] = torch.where(picked > 0, picked / p.repetition_penalty,
                                     picked * p.repetition_penalty)
    if (p.presence_penalty or p.frequency_penalty) and s.out_ids:
        counts = torch.bincount(torch.tensor(s.out_ids), minlength=vocab)
        counts = counts[:vocab].to(logits.device, logits.dtype)
        logits -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0)
    if s.bias is not None:
        ids, values = s.bias
        logits[ids.to(logits.device)] += values.to(logits.device, logits.dtype)
    if p.constraint is not None:
        allowed = p.constraint.allowed_tokens(vocab)
        logits[~torch.from_numpy(allowed)] = float("-inf")


def _inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """For each row of `probs` (rows need not sum to 1), the token whose cumulative share holds
    that row's uniform in [0, 1): exact sampling from the row, in float64 so a large vocabulary's
    running sum loses nothing that matters. A token of probability 0 is never chosen."""
    cdf = probs.double().cumsum(dim=-1)
    targets = uniforms.to(cdf.device) * cdf[:, -1]
    picked = torch.searchsorted(cdf, targets[:, None], right=True)[:, 0]
    return picked.clamp_(max=probs.shape[-1] - 1)


def _tokens_event(s: Sequence, reason: str | None) -> Event:
    """The new tokens of a sequence that asked for no text (`SamplingParams.detokenize` off)."""
    event = Event(s.index, "", s.pending_ids, s.pending_logprobs, reason)
    s.pending_ids, s.pending_logprobs = [], []
    return event


def _narrow(probs: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    """The probabilities with the tokens top-k, min-p and top-p leave out set to 0 (in that
    order, as vLLM applies them; the top token always stays)."""
    if 0 < p.top_k < probs.shape[-1]:
        kth = probs.topk(p.top_k).values[-1]
        probs = torch.where(probs < kth, 0.0, probs)
        probs = probs / probs.sum()
    if p.min_p > 0:
        probs = torch.where(probs < p.min_p * probs.max(), 0.0, probs)
        probs = probs / probs.sum()
    if p.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < p.top_p
        keep[0] = True  # a top_p that float32 rounds to 0 still keeps the top token
        probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
    return probs


def _check_limits(**limits: int) -> None:
    """Refuse limits no engine can run with (no slot, a negative queue, no prefill budget)."""
    least = {"max_running": 1, "max_waiting": 0, "max_prefill_tokens": 1}
    for name, value in limits.items():
        if value < least[name]:
            raise ValueError(f"the engine's {name} must be at least {least[name]} (got {value})")


def _window(s: Sequence, context: int) -> list[int] | None:
    """The last `context` tokens before `s`'s next one (prompt tokens count); None while there
    are fewer."""
    out = s.out_ids
    if len(out) >= context:
        return out[-context:]
    need = context - len(out)
    if len(s.prompt_ids) < need:
        return None
    return s.prompt_ids[len(s.prompt_ids) - need:] + out


def _marking(watermark: Watermark | None) -> Watermark:
    """The engine's watermark, where only a watermarking engine gets."""
    if watermark is None:
        raise RuntimeError("engine: a watermark step on an engine without a watermark")
    return watermark


def _held(s: Sequence | None) -> Sequence:
    """The sequence in a slot the engine has just filled (so never a free one)."""
    if s is None:
        raise RuntimeError("engine: a prefill group names a free slot")
    return s


def _shares(runner: Any, s: Sequence) -> bool:
    """`s` may take a sibling's prefilled cache: the runner copies caches, nothing is prefilled
    yet and its prompt is not scored (scoring reads every position's logits)."""
    return runner.copies and s.prefilled == 0 and s.params.prompt_logprobs is None


def _ready(s: Sequence) -> bool:
    """The whole prompt is in the cache: the sequence decodes."""
    return s.prefilled == len(s.prompt_ids)


def _deliver(items: list[tuple[asyncio.Queue, Event]]) -> None:
    for q, e in items:
        q.put_nowait(e)

