"""Continuous batching over a `transformers` causal LM: many sequences share one forward pass.

One thread owns the model. Each step it admits waiting sequences (prefilled together, left-padded),
merges their key/value cache into the running batch, runs one decode step for every running
sequence, samples per sequence (its own temperature, top-p, seed and JSON-schema constraint), and
hands each sequence's new text to the asyncio side. Finished or cancelled sequences leave the batch
at once, so a short reply never waits for a long one.

Why our own scheduler: transformers' `generate_batch` / ContinuousBatchingManager reached 2.6x a
sequential loop on this CPU (docs/LOG.md) but takes no per-request logits processor, seed or
logprobs, which the OpenAI API needs. This module knows nothing about HTTP or the OpenAI wire
format; it supports models whose cache is plain per-layer key/value tensors (Llama-like).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from seed.serve.grammar import Constraint

log = logging.getLogger(__name__)


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
    constraint: Constraint | None = None


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


@dataclass
class Sequence:
    """One sequence being generated; `queue` receives its Events on the caller's event loop
    (or the engine's `on_events` sink gets them, with `tag` to route them by)."""

    index: int
    prompt_ids: list[int]
    params: SamplingParams
    queue: asyncio.Queue | None = None
    loop: asyncio.AbstractEventLoop | None = None
    tag: Any = None
    out_ids: list[int] = field(default_factory=list)
    emitted: int = 0  # characters of decoded text already handed out
    pending_ids: list[int] = field(default_factory=list)
    pending_logprobs: list[TokenLogprob] = field(default_factory=list)
    cancelled: bool = False
    finished: bool = False  # done, but its row may stay in the batch until the next compaction
    generator: torch.Generator | None = None
    submitted_at: float = field(default_factory=time.monotonic)


class Engine:
    """Runs sequences for a model and tokenizer with at most `max_running` in one batch."""

    def __init__(self, model: Any, tokenizer: Any, *, eos_ids: set[int], max_running: int = 32,
                 max_waiting: int = 256, max_prefill_tokens: int = 8192,
                 on_events: Callable[[list[tuple[Sequence, Event]]], None] | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.eos_ids = eos_ids
        self.max_running = max_running
        self.max_waiting = max_waiting
        self.max_prefill_tokens = max_prefill_tokens
        self.on_events = on_events  # called on the engine thread with each step's events
        self.device = next(model.parameters()).device
        self.vocab_size = model.config.get_text_config().vocab_size
        self._waiting: collections.deque[Sequence] = collections.deque()
        self._running: list[Sequence] = []
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [batch, cached length]; 0 marks left padding
        self._positions: list[int] = []
        self._last: list[int] = []
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
        return sum(not s.finished for s in self._running)

    def submit(self, prompt_ids: list[int], params: list[SamplingParams],
               queue: asyncio.Queue | None = None, tag: Any = None) -> list[Sequence]:
        """Queue one sequence per params (n > 1 gives several); raises QueueFull at the bound.

        Events go to `queue` on the calling event loop, or to `on_events` when there is no queue.
        """
        loop = asyncio.get_running_loop() if queue is not None else None
        seqs = []
        for i, p in enumerate(params):
            gen = None
            if p.seed is not None:
                gen = torch.Generator(device="cpu").manual_seed(p.seed)
            seqs.append(Sequence(index=i, prompt_ids=prompt_ids, params=p, queue=queue, loop=loop,
                                 tag=tag, generator=gen))
        with self._cond:
            if len(self._waiting) + len(seqs) > self.max_waiting:
                raise QueueFull
            self._waiting.extend(seqs)
            self._cond.notify()
        return seqs

    @staticmethod
    def cancel(seqs: list[Sequence]) -> None:
        """Stop generating for these sequences (the client went away); safe from any thread."""
        for s in seqs:
            s.cancelled = True

    # -- the engine thread -------------------------------------------------------------------

    def _run(self) -> None:
        torch.set_grad_enabled(False)
        torch.set_num_threads(self.threads)
        while True:
            with self._cond:
                while not self._stopping and not self._waiting and not self._running:
                    self._cond.wait()
                if self._stopping:
                    return
                admitted = self._take_waiting()
            with torch.inference_mode():
                try:
                    if admitted:
                        dead = [i for i, s in enumerate(self._running) if s.finished]
                        if dead:  # the merge rebuilds the cache anyway: drop finished rows first
                            self._drop(dead)
                        self._prefill(admitted)
                    if self._running:
                        self._decode()
                except Exception as e:  # a bug must not hang the clients: fail their sequences
                    log.exception("generation step failed")
                    self._post([(s, Event(s.index, "", [], [], f"error: {e}"))
                                for s in {id(s): s for s in admitted + self._running}.values()])
                    self._reset_batch()

    def _take_waiting(self) -> list[Sequence]:
        taken: list[Sequence] = []
        width = 0
        while self._waiting and self.running + len(taken) < self.max_running:
            s = self._waiting[0]
            if s.cancelled:
                self._waiting.popleft()
                continue
            w = max(width, len(s.prompt_ids))
            if taken and w * (len(taken) + 1) > self.max_prefill_tokens:
                break
            width = w
            taken.append(self._waiting.popleft())
        return taken

    def _prefill(self, seqs: list[Sequence]) -> None:
        """Prefill new sequences in groups of similar length, so padding stays a small share."""
        group: list[Sequence] = []
        for s in sorted(seqs, key=lambda s: len(s.prompt_ids)):
            real = sum(len(g.prompt_ids) for g in group) + len(s.prompt_ids)
            if group and len(s.prompt_ids) * (len(group) + 1) > 1.25 * real:
                self._prefill_group(group)
                group = []
            group.append(s)
        self._prefill_group(group)

    def _prefill_group(self, seqs: list[Sequence]) -> None:
        width = max(len(s.prompt_ids) for s in seqs)
        pad = self.tokenizer.pad_token_id or 0
        ids = torch.tensor([[pad] * (width - len(s.prompt_ids)) + s.prompt_ids for s in seqs])
        mask = torch.tensor([[0] * (width - len(s.prompt_ids)) + [1] * len(s.prompt_ids)
                             for s in seqs])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                         position_ids=positions.to(self.device), use_cache=True,
                         past_key_values=self._new_cache([]), logits_to_keep=1)
        self._merge(seqs, out.past_key_values, mask.to(self.device))
        self._sample_and_emit(out.logits[:, -1, :], first_row=len(self._running) - len(seqs))

    def _merge(self, seqs: list[Sequence], cache: DynamicCache, mask: torch.Tensor) -> None:
        """Append freshly prefilled rows to the running batch, left-padding the shorter side."""
        self._positions += [len(s.prompt_ids) for s in seqs]
        self._last += [0] * len(seqs)
        self._running += seqs
        if self._cache is None:
            self._cache, self._mask = cache, mask
            return
        old_len, new_len = self._mask.shape[1], mask.shape[1]
        width = max(old_len, new_len)
        layers = []
        for old, new in zip(self._cache.layers, cache.layers, strict=True):
            keys = torch.cat([_pad_left(old.keys, width), _pad_left(new.keys, width)])
            values = torch.cat([_pad_left(old.values, width), _pad_left(new.values, width)])
            layers.append((keys, values))
        self._cache = self._new_cache(layers)
        self._mask = torch.cat([torch.nn.functional.pad(self._mask, (width - old_len, 0)),
                                torch.nn.functional.pad(mask, (width - new_len, 0))])

    def _decode(self) -> None:
        ids = torch.tensor(self._last, device=self.device)[:, None]
        self._mask = torch.nn.functional.pad(self._mask, (0, 1), value=1)
        positions = torch.tensor(self._positions, device=self.device)[:, None]
        out = self.model(input_ids=ids, attention_mask=self._mask, position_ids=positions,
                         past_key_values=self._cache, use_cache=True)
        self._cache = out.past_key_values
        self._positions = [p + 1 for p in self._positions]
        self.steps += 1
        self._sample_and_emit(out.logits[:, -1, :], first_row=0)

    def _sample_and_emit(self, logits: torch.Tensor, first_row: int) -> None:
        """Pick a token for rows first_row.. of the batch, hand out text, drop finished rows."""
        logits = logits.float()
        rows = self._running[first_row:]
        raw_logprobs = None
        if any(s.params.logprobs for s in rows):
            raw_logprobs = torch.log_softmax(logits, dim=-1)
        for j, s in enumerate(rows):
            if s.finished:
                continue
            p = s.params
            if (p.presence_penalty or p.frequency_penalty) and s.out_ids:
                counts = torch.bincount(torch.tensor(s.out_ids), minlength=logits.shape[-1])
                counts = counts[:logits.shape[-1]].to(logits.device, logits.dtype)
                logits[j] -= p.frequency_penalty * counts + p.presence_penalty * (counts > 0)
            if s.params.constraint is not None:
                allowed = s.params.constraint.allowed_tokens(logits.shape[-1])
                logits[j, ~torch.from_numpy(allowed)] = float("-inf")
        tokens = self._pick(logits, rows)
        posts = []
        finished = []
        for j, (s, tok) in enumerate(zip(rows, tokens, strict=True)):
            if s.finished:
                continue
            self._last[first_row + j] = tok
            reason = self._advance(s, tok, raw_logprobs[j] if raw_logprobs is not None else None)
            event = self._event(s, reason)
            if event is not None:
                posts.append((s, event))
            if reason is not None or s.cancelled:
                finished.append(first_row + j)
        self._post(posts)
        for i in finished:
            self._running[i].finished = True
        dead = sum(s.finished for s in self._running)
        # Compacting copies the whole cache, so finished rows ride along (their compute is nearly
        # free at these batch sizes) until they are a quarter of the batch.
        if dead and dead * 4 >= len(self._running):
            self._drop([i for i, s in enumerate(self._running) if s.finished])

    def _pick(self, logits: torch.Tensor, rows: list[Sequence]) -> list[int]:
        greedy = logits.argmax(dim=-1).tolist()
        picked = []
        for j, s in enumerate(rows):
            t = s.params.temperature
            if t <= 0 or s.finished:
                picked.append(greedy[j])
                continue
            probs = torch.softmax(logits[j] / t, dim=-1)
            if s.params.top_p < 1.0:
                sorted_p, order = probs.sort(descending=True)
                keep = sorted_p.cumsum(0) - sorted_p < s.params.top_p
                probs = torch.zeros_like(probs).scatter(0, order[keep], sorted_p[keep])
            picked.append(int(torch.multinomial(probs, 1, generator=s.generator)))
        return picked

    def _advance(self, s: Sequence, tok: int, logprobs: torch.Tensor | None) -> str | None:
        """Record token `tok` for `s`; the finish reason if it ends the sequence."""
        p = s.params
        if p.constraint is not None:
            p.constraint.consume(tok)
        if tok in self.eos_ids:
            return "stop"
        s.out_ids.append(tok)
        s.pending_ids.append(tok)
        if logprobs is not None and p.logprobs:
            top: list[tuple[int, float]] = []
            if p.top_logprobs:
                vals, idx = logprobs.topk(p.top_logprobs)
                top = list(zip(idx.tolist(), vals.tolist(), strict=True))
            s.pending_logprobs.append(TokenLogprob(tok, float(logprobs[tok]), top))
        if p.constraint is not None and p.constraint.is_done():
            return "stop"
        if len(s.out_ids) >= p.max_tokens:
            return "length"
        return None

    def _event(self, s: Sequence, reason: str | None) -> Event | None:
        """The text `s` may show now: held back while it could still turn into a stop string."""
        text = self.tokenizer.decode(s.out_ids, skip_special_tokens=True)
        end = len(text)
        for stop in s.params.stop:
            at = text.find(stop, max(0, s.emitted - len(stop) + 1))
            if at != -1 and at < end:
                end, reason = at, "stop"
        if reason is None:
            if text.endswith("\ufffd"):  # a multi-byte character split across tokens
                return None
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

    def _post(self, posts: list[tuple[Sequence, Event]]) -> None:
        if self.on_events is not None:
            live = [(s, e) for s, e in posts if not s.cancelled]
            if live:
                self.on_events(live)
            return
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Queue, Event]]] = {}
        for s, e in posts:
            if not s.cancelled:
                by_loop.setdefault(s.loop, []).append((s.queue, e))
        for loop, items in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is listening
                loop.call_soon_threadsafe(_deliver, items)

    def _drop(self, rows: list[int]) -> None:
        gone = set(rows)
        keep = [i for i in range(len(self._running)) if i not in gone]
        self._running = [self._running[i] for i in keep]
        self._positions = [self._positions[i] for i in keep]
        self._last = [self._last[i] for i in keep]
        if not keep:
            self._reset_batch()
            return
        index = torch.tensor(keep, device=self.device)
        mask = self._mask[index]
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if len(used) else 0  # columns that are padding in every row left
        self._mask = mask[:, start:]
        layers = [(layer.keys[index, :, start:], layer.values[index, :, start:])
                  for layer in self._cache.layers]
        self._cache = self._new_cache(layers)

    def _new_cache(self, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
        cache = DynamicCache(config=self.model.config)
        cache.layers = [_GrowingLayer() for _ in cache.layers]
        for layer, (keys, values) in zip(cache.layers, layers, strict=False):
            layer.update(keys, values)
        return cache

    def _reset_batch(self) -> None:
        self._running, self._positions, self._last = [], [], []
        self._cache = self._mask = None


class _GrowingLayer(DynamicLayer):
    """A key/value cache layer that writes each step into spare room instead of re-concatenating.

    transformers' DynamicLayer copies the whole cache on every decode step (torch.cat); for a batch
    of 32 that copy costs as much as the step's matmuls on a CPU. Room doubles when it runs out.
    """

    def __init__(self) -> None:
        super().__init__()
        self._length = 0
        self._room_keys: torch.Tensor | None = None
        self._room_values: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        end = self._length + n
        if self._room_keys is None or end > self._room_keys.shape[-2]:
            shape = (*key_states.shape[:-2], max(64, 2 * end), key_states.shape[-1])
            keys = key_states.new_empty(shape)
            values = value_states.new_empty((*shape[:-1], value_states.shape[-1]))
            if self._length:
                keys[..., :self._length, :] = self._room_keys[..., :self._length, :]
                values[..., :self._length, :] = self._room_values[..., :self._length, :]
            self._room_keys, self._room_values = keys, values
        self._room_keys[..., self._length:end, :] = key_states
        self._room_values[..., self._length:end, :] = value_states
        self._length = end
        self.keys = self._room_keys[..., :end, :]
        self.values = self._room_values[..., :end, :]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self._length


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    return torch.nn.functional.pad(t, (0, 0, width - t.shape[-2], 0))


def _deliver(items: list[tuple[asyncio.Queue, Event]]) -> None:
    for q, e in items:
        q.put_nowait(e)

