"""GRPO's rollouts: completions sampled by Seed's own batching engine, in process, from the
current weights.

`Rollouts` runs `seed.serve.engine.Engine` (the code `seed serve` runs) on its own thread over a
copy of the student. The copy is needed because the engine's fast Llama runner fuses q/k/v and
gate/up into single matrices and turns the model's own weights into frozen views of them, which a
model being trained cannot have; before every rollout the copy takes the policy's current weights
(a copy in place, tensor by tensor: the fused matrices see it), the way vLLM's colocated mode syncs
a trainer's weights. Every completion has its own sampling seed, so the same weights and seeds give
the same completions (a resumed run rolls out what the uninterrupted one did). The engine runs them
without text (`SamplingParams.detokenize` off: no incremental detokenisation per token); each
completion's text is decoded once, at the end. This module knows nothing about rewards, advantages
or the loop.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from seed.serve.engine import Engine, Sequence
from seed.serve.engine_types import Event, SamplingParams
from seed.serve.model_files import end_of_sequence_ids


@dataclass
class Completion:
    """One sampled completion: its tokens (the end token included when it stopped) and text."""

    ids: list[int] = field(default_factory=list)
    text: str = ""
    finish_reason: str | None = None


class Rollouts:
    """Sample completions of prompts from a policy's current weights with the serving engine."""

    def __init__(self, policy: torch.nn.Module, tokenizer: PreTrainedTokenizerBase,
                 max_running: int):
        self.model = copy.deepcopy(policy).eval().requires_grad_(False)
        self.tokenizer = tokenizer
        generation = getattr(policy, "generation_config", None)
        self.eos_ids = end_of_sequence_ids(tokenizer,
                                           generation.to_dict() if generation is not None else {})
        eos = tokenizer.eos_token_id
        self.eos = int(eos) if eos in self.eos_ids else min(self.eos_ids)
        sink = weakref.WeakMethod(self._on_events)  # the engine's thread must not keep us alive
        self.engine = Engine(self.model, tokenizer, eos_ids=self.eos_ids, max_running=max_running,
                             max_waiting=max_running,
                             on_events=lambda events: _call(sink, events))
        self.engine.start()
        weakref.finalize(self, self.engine.stop)  # a finished run's engine thread ends with it
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._out: dict[tuple[int, int], Completion] = {}
        self._open = 0
        self._synced: torch.nn.Module | None = None
        self._pairs: list[tuple[torch.Tensor, torch.Tensor]] = []

    def sample(self, policy: torch.nn.Module, prompts: list[list[int]],
               params: list[list[SamplingParams]]) -> list[list[Completion]]:
        """For each prompt, one completion per SamplingParams (none with stop strings), from
        `policy`'s weights now."""
        self._sync(policy)
        self._out = {(p, g): Completion() for p, ps in enumerate(params) for g in range(len(ps))}
        self._open = len(self._out)
        self._done.clear()
        if not self._open:
            return [[] for _ in prompts]
        for p, (ids, ps) in enumerate(zip(prompts, params, strict=True)):
            self.engine.submit(ids, [dataclasses.replace(q, detokenize=False) for q in ps], tag=p)
        self._done.wait()
        failed = [c.finish_reason for c in self._out.values()
                  if c.finish_reason and c.finish_reason.startswith("error")]
        if failed:
            raise RuntimeError(f"a rollout failed in the engine ({failed[0]})")
        done = list(self._out.values())
        texts = self.tokenizer.batch_decode([c.ids for c in done], skip_special_tokens=True)
        for c, text in zip(done, texts, strict=True):
            c.text = text
            if c.finish_reason == "stop":
                c.ids.append(self.eos)
        return [[self._out[p, g] for g in range(len(ps))] for p, ps in enumerate(params)]

    @torch.no_grad()
    def _sync(self, policy: torch.nn.Module) -> None:
        """The copy takes the policy's weights now, tensor by tensor in place (the fused matrices
        see it); the pairs are found once per policy (its tensors are trained in place)."""
        if self._synced is not policy:
            copy_state = self.model.state_dict()
            self._pairs = [(copy_state[name], tensor)
                           for name, tensor in policy.state_dict().items()]
            self._synced = policy
        for target, source in self._pairs:
            target.copy_(source)

    def _on_events(self, events: list[tuple[Sequence, Event]]) -> None:
        """The engine thread's sink: collect each completion, wake `sample` when all are done."""
        with self._lock:
            for seq, ev in events:
                c = self._out[seq.tag, ev.index]
                c.ids += ev.token_ids
                if ev.finish_reason:
                    c.finish_reason = ev.finish_reason
                    self._open -= 1
            if self._open <= 0:
                self._done.set()

    def stop(self) -> None:
        self.engine.stop()


def _call(sink: weakref.WeakMethod[Any], events: list[tuple[Sequence, Event]]) -> None:
    """Hand the engine's events to the Rollouts, while it exists."""
    method = sink()
    if method is not None:
        method(events)
