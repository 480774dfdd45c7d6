"""Where prompts come from: files, Self-Instruct, Evol-Instruct, and multi-turn follow-ups.

- `read_prompts(spec)` streams a prompt file: JSONL with `messages` or `prompt` per line, CSV with a
  named column, or plain text (one prompt per line); with `reference`, each prompt carries its
  reference answer (a JSONL key or CSV column) for generate.verify. `check_prompts(spec)` reads it
  once first so a broken line is reported (file and line) before anything is paid for.
- `self_instruct(...)` bootstraps new instructions from seed tasks (Wang et al. 2023): the teacher
  sees eight sampled tasks as a numbered list and continues it; new ones are deduplicated.
- `evol_instruct(...)` rewrites instructions (Xu et al. 2023) with the in-depth operations (add
  constraints, deepen, concretize, more reasoning steps) and the in-breadth one (a new, rarer task
  of the same domain), then the elimination step drops failed evolutions.
- `follow_up_messages(...)` asks the teacher to play the user and write the next turn.
- `task_prompts(config, seed)` draws `generate.tasks`' reasoning-gym prompts (and the held-out
  evaluation records) for an HTTP teacher to answer.

Generative sources take an `ask(prompts) -> answers` coroutine (the engine with its cache behind
it) and a seed, so a rerun sends the same requests and is answered from the cache. This module
knows nothing about HTTP, limits or records files.
"""

from __future__ import annotations

import csv
import random
import re
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seed.errors import UserError
from seed.files import read_jsonl
from seed.generate.filters import NearDuplicates, is_refusal, similarity
from seed.recipe import GenerateConfig
from seed.records import Record, Source, record_id

_SURROGATE = re.compile("[\ud800-\udfff]")
Ask = Callable[[list[list[dict[str, str]]]], Awaitable[list[str | None]]]


@dataclass
class Prompt:
    """The messages to send (ending with a user turn), where they came from, and what a verifier
    reads besides the answer (`meta`: the reference `answer`, a reasoning-gym task's entry)."""

    messages: list[dict[str, str]]
    source: Source
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        return record_id(self.messages)


def _kind(path: Path, kind: str) -> str:
    if kind != "auto":
        return kind
    return {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}.get(path.suffix.lower(), "text")


def _jsonl_messages(row: Any, where: str) -> list[dict[str, str]]:
    msgs = _row_messages(row, where)
    if any(_SURROGATE.search(m["content"]) for m in msgs):
        raise UserError(f"{where}: holds half of a UTF-16 surrogate pair (a lone \\ud800-"
                        "\\udfff escape), which is not text; fix or remove that line")
    return msgs


def _row_messages(row: Any, where: str) -> list[dict[str, str]]:
    if isinstance(row, dict) and isinstance(row.get("prompt"), str):
        return [{"role": "user", "content": row["prompt"]}]
    msgs = row.get("messages") if isinstance(row, dict) else None
    if (not isinstance(msgs, list) or not msgs
            or not all(isinstance(m, dict) and isinstance(m.get("content"), str)
                       and m.get("role") in ("system", "user", "assistant") for m in msgs)):
        raise UserError(f"{where}: needs a \"prompt\" string or a \"messages\" list of "
                        "{role, content}; fix or remove that line")
    if msgs[-1]["role"] != "user":
        raise UserError(f"{where}: the last message must be the user's turn to answer")
    return [{"role": m["role"], "content": m["content"]} for m in msgs]


def _reference(row: Any, key: str | None, where: str) -> dict[str, Any]:
    """The prompt's `meta`: its reference answer from the row's `key`, when one is asked for."""
    if key is None:
        return {}
    value = row.get(key) if isinstance(row, dict) else None
    if isinstance(value, bool) or not isinstance(value, str | int | float) or not str(value):
        raise UserError(f"{where}: no reference answer {key!r} (generate.verify.reference); "
                        "add it to that line or name the field that holds it")
    return {"answer": str(value)}


def read_prompts(path: str | Path, kind: str = "auto", column: str | None = None,
                 license: str | None = None, name: str | None = None,
                 reference: str | None = None) -> Iterator[Prompt]:
    """Stream the prompts of one file (see the module docstring for the formats); with
    `reference`, each prompt's reference answer from that JSONL key or CSV column."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such prompts file; check generate.prompts path")
    source = Source(kind="file", name=name or path.name, license=license)
    fmt = _kind(path, kind)
    if fmt == "jsonl":
        for lineno, row in read_jsonl(path):
            where = f"{path}:{lineno}"
            yield Prompt(_jsonl_messages(row, where), source, _reference(row, reference, where))
        return
    if fmt == "text" and reference is not None:
        raise UserError(f"{path}: a text prompts file holds no reference answers; give the "
                        f"prompts as JSONL or CSV with a {reference!r} field")
    try:
        yield from _text_prompts(path, fmt, column, source, reference)
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; save it as UTF-8 (or point generate.prompts "
                        "at the prompts file)") from None
    except csv.Error as e:
        raise UserError(f"{path}: not a CSV file Seed can read ({e}); fix the file or set "
                        "generate.prompts format") from None


def _text_prompts(path: Path, fmt: str, column: str | None, source: Source,
                  reference: str | None = None) -> Iterator[Prompt]:
    """The prompts of a CSV file (a named column, the reference answer in another) or a text file
    (one per line)."""
    with path.open(encoding="utf-8", newline="") as f:
        if fmt == "csv":
            reader = csv.DictReader(f)
            col = column or "prompt"
            if col not in (reader.fieldnames or []):
                raise UserError(f"{path}: no column {col!r} (columns: "
                                f"{', '.join(reader.fieldnames or [])}); set generate.prompts "
                                "column")
            for row in reader:
                if (text := (row[col] or "").strip()):
                    yield Prompt([{"role": "user", "content": text}], source,
                                 _reference(row, reference, f"{path}:{reader.line_num}"))
            return
        for line in f:
            if line.strip():
                yield Prompt([{"role": "user", "content": line.strip()}], source)


def task_prompts(config: GenerateConfig, seed: int) -> tuple[list[Record], list[Prompt]]:
    """`generate.tasks`: the held-out evaluation records and the training prompts from those
    reasoning-gym families, each with its task entry and reference answer in `meta`."""
    if not config.tasks:
        return [], []
    from seed.endpoints.tasks import TasksEndpoint
    from seed.generate.from_tasks import held_out_split

    held_out, train = held_out_split(TasksEndpoint(config.tasks, "generate"), config, seed)
    prompts = []
    for r in train:
        assert r.provenance.source is not None  # every task prompt names its generator
        prompts.append(Prompt(r.chat(), r.provenance.source, r.meta))
    return held_out, prompts


def check_prompts(path: str | Path, **kw: Any) -> int:
    """Read a whole prompt file once: how many prompts it holds, or its first bad line."""
    return sum(1 for _ in read_prompts(path, **kw))


def _numbered(text: str) -> list[str]:
    """The items of a numbered list (`1. ...`, `2) ...`), in order."""
    items = re.split(r"(?m)^\s*\d+\s*[.)]\s*", text)
    return [re.sub(r"\s+", " ", i).strip() for i in items[1:] if i.strip()]


def seed_tasks(path: str | Path) -> list[str]:
    """The instructions of a Self-Instruct seed file (JSONL with `instruction`) or a prompt file."""
    path = Path(path)
    if path.suffix.lower() != ".jsonl":
        return [p.messages[-1]["content"] for p in read_prompts(path)]
    if not path.is_file():
        raise UserError(f"{path}: no such seed tasks file; check generate.self_instruct.seed_tasks")
    out = []
    for lineno, row in read_jsonl(path):
        text = row.get("instruction") or row.get("prompt") if isinstance(row, dict) else None
        if not isinstance(text, str):
            raise UserError(f"{path}:{lineno}: a seed task needs an \"instruction\" string")
        out.append(text)
    return out


SELF_INSTRUCT = ("Come up with a series of tasks for an AI assistant. Make them diverse in topic "
                 "and kind (open questions, writing, classification, editing, reasoning, coding). "
                 "Write each on one line of a numbered list and continue the list to item {end}.")


async def self_instruct(seeds: list[str], n: int, ask: Ask, seed: int = 0,
                        per_request: int = 8, max_rounds: int = 50) -> list[str]:
    """Up to `n` new instructions bootstrapped from the seed tasks, none near a seed or another."""
    rng = random.Random(seed)
    seen = NearDuplicates(threshold=0.7)
    for s in seeds:
        seen.add(s)
    pool: list[str] = []
    for _ in range(max_rounds):
        if len(pool) >= n:
            break
        prompts, shown_counts = [], []
        for _ in range(max(1, (n - len(pool)) // per_request + 1)):
            k = min(per_request, len(seeds))
            shown = rng.sample(seeds, k - min(2, len(pool))) + rng.sample(pool, min(2, len(pool)))
            listing = "\n".join(f"{i}. {t}" for i, t in enumerate(shown, 1))
            prompts.append([{"role": "user", "content":
                             SELF_INSTRUCT.format(end=len(shown) + per_request) + "\n\n" +
                             listing + f"\n{len(shown) + 1}."}])
            shown_counts.append(len(shown))
        for answer, k in zip(await ask(prompts), shown_counts, strict=True):
            # The teacher continues the list after "k+1.", so its reply starts mid-item.
            for text in _numbered(f"{k + 1}. " + (answer or "")):
                if 10 <= len(text) <= 1000 and not is_refusal(text) and seen.add(text):
                    pool.append(text)
    return pool[:n]


DEPTH = {
    "constraints": "Add one more constraint or requirement to it.",
    "deepen": "Make the questions it asks deeper and broader.",
    "concretize": "Replace general concepts with more specific ones.",
    "reasoning": "If it can be solved with a few simple thinking steps, rewrite it to explicitly "
                 "require multiple-step reasoning.",
}
EVOL_DEPTH = ("I want you to act as a Prompt Rewriter. Rewrite the given prompt into a more "
              "complex version that famous AI systems would find harder to handle, but that stays "
              "reasonable, understandable and answerable by humans. {op} The rewritten prompt may "
              "add at most 10 to 20 words. Reply with the rewritten prompt only.\n\n"
              "#Given Prompt#:\n{prompt}")
EVOL_BREADTH = ("I want you to act as a Prompt Creator. Draw inspiration from the given prompt "
                "to create a brand new prompt in the same domain but rarer and more unusual, of "
                "similar length and difficulty. Reply with the created prompt only.\n\n"
                "#Given Prompt#:\n{prompt}")
_TEMPLATE_LEAK = re.compile(r"given prompt|rewritten prompt|created prompt|#\w+ prompt#", re.I)


def eliminated(original: str, evolved: str | None) -> str | None:
    """Why an evolution failed (Evol-Instruct's elimination step), or None if it is kept.

    The paper's rules: no information gain (here: near-identical to the original by MinHash), a
    reply the teacher could not answer (a refusal), a reply of only punctuation or stop words (too
    short), and a reply that copies words of the evolving prompt (the template's markers).
    """
    if not evolved or len(evolved.split()) < 3:
        return "too short"
    if is_refusal(evolved):
        return "refusal"
    if _TEMPLATE_LEAK.search(evolved):
        return "copies the template"
    if similarity(original, evolved) >= 0.8:
        return "no information gain"
    return None


async def evol_instruct(instructions: list[str], rounds: int, ask: Ask, seed: int = 0,
                        breadth_share: float = 0.25) -> list[tuple[str, str, int]]:
    """Evolve each instruction `rounds` times; return (evolved, operation, round) kept in all."""
    rng = random.Random(seed)
    current = list(instructions)
    kept: list[tuple[str, str, int]] = []
    for r in range(1, rounds + 1):
        ops = [("breadth" if rng.random() < breadth_share else rng.choice(sorted(DEPTH)))
               for _ in current]
        prompts = [[{"role": "user", "content": EVOL_BREADTH.format(prompt=text) if op == "breadth"
                     else EVOL_DEPTH.format(op=DEPTH[op], prompt=text)}]
                   for text, op in zip(current, ops, strict=True)]
        answers = await ask(prompts)
        nxt = []
        for text, op, ans in zip(current, ops, answers, strict=True):
            evolved = (ans or "").strip()
            if eliminated(text, evolved) is None:
                kept.append((evolved, op, r))
                nxt.append(evolved)
            else:
                nxt.append(text)  # a failed evolution restarts from its parent next round
        current = nxt
    return kept


FOLLOW_UP = ("You are the user in the conversation below, talking to an AI assistant. Write your "
             "next message: a natural follow-up question or request that builds on the "
             "assistant's last answer. Reply with that message only.\n\n{transcript}")


def follow_up_messages(messages: list[dict[str, str]]) -> list[dict[str, str]]:
    """The request that asks the teacher to write the user's next turn of a conversation."""
    transcript = "\n\n".join(f"{m['role'].upper()}: {m['content']}" for m in messages
                             if m["role"] != "system")
    return [{"role": "user", "content": FOLLOW_UP.format(transcript=transcript)}]
