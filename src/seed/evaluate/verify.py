"""Verifiable tasks: the student answers held-out prompts and each task's own scorer grades them.

Only a score of exactly 1.0 counts as correct (reasoning-gym gives partial credit for near misses).
The untrained student, graded the same way, is the baseline that shows what training taught.
Writes `results.json` (top-level `accuracy` and `baseline_accuracy`, as fractions) and
`samples.jsonl` (prompt, teacher's answer, student's answer, verdict) into the output directory.
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path
from typing import Any

from seed.endpoints.local import LocalModel, check_model_dir
from seed.endpoints.tasks import score
from seed.files import write_json_atomic, write_text_atomic
from seed.recipe import EvalConfig
from seed.records import Record, read_records


def _answers(model_dir: Path, records: list[Record], config: EvalConfig) -> list[str]:
    model = LocalModel(model_dir)
    prompts = [[m for m in r.chat() if m["role"] != "assistant"] for r in records]
    return model.generate(prompts, max_new_tokens=config.max_new_tokens,
                          batch_size=config.batch_size)


def _grade(records: list[Record], answers: list[str]) -> list[bool]:
    return [score(r, a) == 1.0 for r, a in zip(records, answers, strict=True)]


def evaluate_tasks(model_dir: Path, eval_records: Path, out_dir: Path, config: EvalConfig,
                   baseline_dir: Path | None = None) -> dict[str, Any]:
    """Grade a student (and optionally a baseline model) on held-out verifiable prompts."""
    check_model_dir(model_dir)
    if baseline_dir is not None:
        check_model_dir(baseline_dir)
    records = list(read_records(eval_records))
    answers = _answers(model_dir, records, config)
    correct = _grade(records, answers)
    base_answers: list[str | None] = [None] * len(records)
    base_correct: list[bool | None] = [None] * len(records)
    if baseline_dir is not None:
        base_answers = list(_answers(baseline_dir, records, config))
        base_correct = list(_grade(records, base_answers))  # type: ignore[arg-type]

    per_task: dict[str, list[bool]] = defaultdict(list)
    for r, ok in zip(records, correct, strict=True):
        per_task[r.meta.get("task", "unknown")].append(ok)
    n = len(records)
    results = {
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
    samples = [
        {"id": r.id, "task": r.meta.get("task"), "prompt": r.messages[-1].content,
         "teacher": r.meta.get("answer"), "student": a, "correct": ok,
         "baseline": b, "baseline_correct": bc}
        for r, a, ok, b, bc in zip(records, answers, correct, base_answers, base_correct,
                                   strict=True)
    ]
    write_text_atomic(out_dir / "samples.jsonl",
                      "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples))
    write_json_atomic(out_dir / "results.json", results)
    return {k: results[k] for k in ("accuracy", "baseline_accuracy", "n", "correct")}
