"""The procedural teacher: reasoning-gym task generators with their verifiers.

A recipe names task families and their difficulty settings. This endpoint turns them into prompt
records (training and held-out evaluation, from seeds far apart, with every evaluation question
removed from training), answers those prompts with the generator's ground truth, and scores any
answer with the family's own verifier. It needs no network and no key, which is what lets the
quickstart run offline.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import lru_cache
from importlib.metadata import version
from typing import Any, Literal

import reasoning_gym
from reasoning_gym.factory import DATASETS

from seed.endpoints.base import Completion, EndpointDefaults
from seed.errors import UserError
from seed.recipe import TaskSpec
from seed.records import Provenance, Record, Source, Teacher

RG_VERSION = version("reasoning-gym")


def _check(spec: TaskSpec) -> None:
    if spec.name not in DATASETS:
        raise UserError(
            f"task family {spec.name!r} is not in reasoning-gym {RG_VERSION}; "
            f"pick one of its families, e.g. basic_arithmetic, chain_sum, spell_backward"
        )
    try:
        reasoning_gym.create_dataset(spec.name, size=1, seed=0, **spec.config)
    except (TypeError, ValueError, AssertionError) as e:
        raise UserError(f"task family {spec.name!r}: bad config {spec.config} ({e})") from None


def _dataset(spec: TaskSpec, size: int, seed: int) -> Any:
    return reasoning_gym.create_dataset(spec.name, size=max(size, 1), seed=seed, **spec.config)


def _split(n: int, specs: list[TaskSpec]) -> list[int]:
    """Share n items between families by weight; rounding goes to the first families."""
    total = sum(s.weight for s in specs)
    counts = [int(n * s.weight / total) for s in specs]
    for i in range(n - sum(counts)):
        counts[i % len(counts)] += 1
    return counts


class TasksEndpoint(EndpointDefaults):
    """reasoning-gym as a teacher: prompts from generators, answers from their ground truth."""

    def __init__(self, tasks: list[TaskSpec], what: str = "generate.teacher") -> None:
        if not tasks:
            raise UserError(f"the tasks teacher needs at least one [[{what}.tasks]] entry")
        for spec in tasks:
            _check(spec)
        self.tasks = tasks
        self._answers: dict[str, str] = {}

    def teacher(self) -> Teacher:
        return Teacher(route="tasks", host=None, model_requested="reasoning-gym",
                       model_returned=f"reasoning-gym=={RG_VERSION}")

    def _items(self, n: int, seed: int) -> Iterator[tuple[TaskSpec, int, dict[str, Any]]]:
        for k, (spec, count) in enumerate(zip(self.tasks, _split(n, self.tasks), strict=True)):
            family_seed = seed + 7919 * k
            for entry in _dataset(spec, count, family_seed) if count else ():
                yield spec, family_seed, entry

    def prompts(self, n: int, seed: int, purpose: Literal["train", "eval", "judge"] = "train",
                exclude: set[str] | None = None) -> Iterator[Record]:
        """Prompt records (one user turn each) with the generator's provenance.

        Questions in `exclude` are dropped, so a training set never holds an evaluation question;
        fewer than `n` records come back when the task space is too small to avoid them.
        """
        exclude = exclude or set()
        for spec, family_seed, entry in self._items(n, seed):
            q = entry["question"]
            if q in exclude:
                continue
            self._answers[q] = str(entry["answer"])
            source = Source(kind="tasks", name=spec.name, license="Apache-2.0",
                            version=RG_VERSION, config=spec.config, seed=family_seed,
                            index=entry["metadata"].get("source_index"))
            yield Record.new(
                [{"role": "user", "content": q}],
                provenance=Provenance(source=source, purpose=purpose),
                meta={"task": spec.name, "answer": str(entry["answer"]),
                      "entry": _jsonable(entry)},
            )

    async def complete(self, messages: list[dict[str, str]], **params: Any) -> list[Completion]:
        """Answer a prompt made by `prompts()` with the generator's ground truth."""
        question = messages[-1]["content"]
        if question not in self._answers:
            raise UserError("the tasks teacher can only answer prompts it generated itself")
        return [Completion(text=self._answers[question], model=f"reasoning-gym=={RG_VERSION}")]

    def answer(self, record: Record) -> Record:
        """The prompt record completed with the ground-truth answer and the teacher's provenance."""
        messages = [*record.chat(), {"role": "assistant", "content": record.meta["answer"]}]
        prov = record.provenance.model_copy(update={"teacher": self.teacher()})
        return Record.new(messages, provenance=prov, meta=record.meta)


def score(record: Record, answer: str) -> float:
    """The task family's own verifier on an answer to an evaluation record (1.0 is correct)."""
    src = record.provenance.source
    if src is None or src.kind != "tasks":
        raise UserError(f"record {record.id} has no task provenance; it cannot be verified")
    verifier = _verifier(src.name, src.seed or 0, json.dumps(src.config, sort_keys=True))
    return float(verifier.score_answer(answer, record.meta["entry"]))


@lru_cache(maxsize=64)
def _verifier(name: str, seed: int, config_json: str) -> Any:
    """One dataset object per family and config: every held-out record of it shares the scorer."""
    return reasoning_gym.create_dataset(name, size=1, seed=seed, **json.loads(config_json))


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    return x
