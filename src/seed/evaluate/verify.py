"""Verifiable tasks: the student answers held-out prompts and each task's own scorer grades them.

Only a score of exactly 1.0 counts as correct (reasoning-gym gives partial credit for near misses).
The untrained student, graded the same way, is the baseline that shows what training taught.
Writes `results.json` (top-level `accuracy` and `baseline_accuracy`, as fractions) and
`samples.jsonl` (prompt, teacher's answer, student's answer, verdict) into the output directory.

A student that thinks (its template writes `<think>`) is graded on its answer after `</think>`;
its trace is kept in the sample with its length in tokens, and `results.json` gains
`by_trace_length`: accuracy per bucket of trace length (powers of two), which the report shows.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from seed.endpoints.local import LocalModel, check_model_dir
from seed.endpoints.tasks import score
from seed.files import write_json_atomic, write_text_atomic
from seed.recipe import EvalConfig
from seed.records import Record, read_records


@dataclass
class Answers:
    """A model's answers to the prompts, and each one's trace and its length in tokens (None
    where the model does not think)."""

    texts: list[str]
    traces: list[str | None]
    trace_tokens: list[int | None]


def _answers(model_dir: Path, records: list[Record], config: EvalConfig) -> Answers:
    model = LocalModel(model_dir)
    prompts = [[m for m in r.chat() if m["role"] != "assistant"] for r in records]
    replies = model.generate(prompts, max_new_tokens=config.max_new_tokens,
                             batch_size=config.batch_size)
    out = Answers([], [], [])
    thinks = model.thinks(prompts[0]) is not None if prompts else False
    for prompt, reply in zip(prompts, replies, strict=True):
        trace, answer = model.split_reply(prompt, reply)
        out.texts.append(answer)
        out.traces.append(trace)
        out.trace_tokens.append(len(model.tokenizer(trace or "", add_special_tokens=False)[
            "input_ids"]) if thinks else None)
    return out


def trace_buckets(lengths: list[int | None], correct: list[bool]) -> list[dict[str, Any]]:
    """Accuracy per bucket of trace length in tokens: 0 (no trace), 1-31, 32-63, 64-127, ...
    (doubling); only buckets that hold answers, shortest first. Answers of a model that does not
    think (None) are left out."""
    buckets: dict[int, list[bool]] = defaultdict(list)
    for n, ok in zip(lengths, correct, strict=True):
        if n is not None:
            buckets[0 if n == 0 else max(16, 1 << (n.bit_length() - 1))].append(ok)
    out = []
    for low, oks in sorted(buckets.items()):
        label = "0" if low == 0 else ("1-31" if low == 16 else f"{low}-{2 * low - 1}")
        out.append({"tokens": label, "n": len(oks), "accuracy": sum(oks) / len(oks)})
    return out


def _grade(records: list[Record], answers: list[str]) -> list[bool]:
    return [score(r, a) == 1.0 for r, a in zip(records, answers, strict=True)]


def evaluate_tasks(model_dir: Path, eval_records: Path, out_dir: Path, config: EvalConfig,
                   baseline_dir: Path | None = None) -> dict[str, Any]:
    """Grade a student (and optionally a baseline model) on held-out verifiable prompts."""
    check_model_dir(model_dir)
    if baseline_dir is not None:
        check_model_dir(baseline_dir)
    records = list(read_records(eval_records))
    student = _answers(model_dir, records, config)
    answers = student.texts
    correct = _grade(records, answers)
    base_answers: list[str | None] = [None] * len(records)
    base_correct: list[bool | None] = [None] * len(records)
    if baseline_dir is not None:
        base_answers = list(_answers(baseline_dir, records, config).texts)
        base_correct = list(_grade(records, base_answers))  # type: ignore[arg-type]

    per_task: dict[str, list[bool]] = defaultdict(list)
    for r, ok in zip(records, correct, strict=True):
        per_task[r.meta.get("task", "unknown")].append(ok)
    n = len(records)
    results: dict[str, Any] = {
        "accuracy": sum(correct) / n if n else 0.0,
        "baseline_accuracy": (sum(bool(c) for c in base_correct) / n
                              if n and baseline_dir is not None else None),
        "n": n,
        "correct": sum(correct),
        "model": str(model_dir),
        "baseline": str(baseline_dir) if baseline_dir else None,
        "per_task": {t: {"n": len(v), "accuracy": sum(v) / len(v)} for t, v in per_task.items()},
        "max_new_tokens": config.max_new_tokens,
    }
    if any(n is not None for n in student.trace_tokens):
        results["by_trace_length"] = trace_buckets(student.trace_tokens, correct)
    samples = [
        {"id": r.id, "task": r.meta.get("task"), "prompt": r.messages[-1].content,
         "teacher": r.meta.get("answer"), "student": a, "correct": ok,
         "baseline": b, "baseline_correct": bc}
        for r, a, ok, b, bc in zip(records, answers, correct, base_answers, base_correct,
                                   strict=True)
    ]
    for sample, trace, length in zip(samples, student.traces, student.trace_tokens, strict=True):
        if length is not None:
            sample.update(reasoning=trace, reasoning_tokens=length)
    write_text_atomic(out_dir / "samples.jsonl",
                      "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    write_json_atomic(out_dir / "results.json", results)
    return {k: results[k] for k in ("accuracy", "baseline_accuracy", "n", "correct")}
