"""Judge annotations on disk: Seed's JSONL and AlpacaEval's `annotations.json`, read as one shape.

Both become an `AnnotationSet`: one model compared with one baseline over many instructions, each
`Comparison` holding the probability that the model's answer is the better one (1 win, 0.5 tie,
0 loss). `seed stats` and the report compute everything from that shape, so an AlpacaEval user can
re-analyse annotations without paying a judge again.

Seed's line format (written by `seed.evaluate.judge`), one judged pair per line:
`{"id", "instruction", "category", "model", "baseline", "output", "baseline_output",
"verdicts": [model-first, model-second], "reasons": [..., ...], "judge"}` where each verdict is the
judge's 5-way call from the model's side (2 much better, 1 better, 0 tie, -1 worse, -2 much worse)
or null when the judge's reply could not be parsed.

This module reads and combines verdicts; it does no statistics and calls no judge.
"""

from __future__ import annotations

import gzip
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from seed.errors import UserError
from seed.files import read_jsonl


@dataclass
class Comparison:
    """One instruction: the model's answer against the baseline's, and the judge's preference."""

    instruction: str
    output: str
    baseline_output: str
    preference: float
    category: str = ""
    verdicts: tuple[int, int] | None = None
    reasons: tuple[str, ...] = ()


@dataclass
class AnnotationSet:
    """Every comparison of one model with one baseline; `unparseable` counts dropped judgments."""

    name: str
    model: str
    baseline: str
    rows: list[Comparison] = field(default_factory=list)
    unparseable: int = 0


def combine_verdicts(model_first: int | None, model_second: int | None) -> float | None:
    """The pair's preference from its two orders: agreeing orders decide, disagreeing ones tie.

    A verdict of 0 (tie) and a win disagree too, so they also count as a tie. None when either
    order's verdict is missing (the judge's reply was unparseable).
    """
    if model_first is None or model_second is None:
        return None
    if model_first > 0 and model_second > 0:
        return 1.0
    if model_first < 0 and model_second < 0:
        return 0.0
    return 0.5


def set_name(path: Path) -> str:
    """The file's stem without its data suffixes: `alpaca-7b.json.gz` -> `alpaca-7b`."""
    name = path.name
    for suffix in (".gz", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return name


def load_annotations(path: str | Path) -> AnnotationSet:
    """Read one annotation file, Seed's JSONL or AlpacaEval's JSON list (optionally gzipped)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such annotation file; pass a Seed judgments.jsonl or an "
                        "AlpacaEval annotations.json")
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot be read as text ({e}); pass an annotation file") from e
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            items = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e.msg} at line {e.lineno}); "
                            "pass an AlpacaEval annotations.json") from e
        found = _from_alpaca_eval(path, items)
    else:
        found = _from_seed_lines(path)
    if not found.rows and not found.unparseable:
        raise UserError(f"{path}: holds no judgments; pass a judgments.jsonl written by `seed "
                        "judge` or an AlpacaEval annotations.json")
    return found


def _from_alpaca_eval(path: Path, items: list[Any]) -> AnnotationSet:
    need = ("instruction", "output_1", "output_2", "preference")
    rows, dropped, models, baselines = [], 0, set(), set()
    for n, item in enumerate(items):
        if not isinstance(item, dict) or any(k not in item for k in need):
            raise UserError(f"{path}: item {n} lacks one of {', '.join(need)}; "
                            "pass an AlpacaEval annotations.json")
        try:
            pref = _alpaca_preference(item["preference"])
        except (TypeError, ValueError):
            raise UserError(f"{path}: item {n}: preference {item['preference']!r} is not a "
                            "number in [1, 2], 0 or null; pass an AlpacaEval annotations.json"
                            ) from None
        models.add(item.get("generator_2", "model"))
        baselines.add(item.get("generator_1", "baseline"))
        if pref is None:
            dropped += 1
            continue
        rows.append(Comparison(instruction=item["instruction"], output=item["output_2"] or "",
                               baseline_output=item["output_1"] or "", preference=pref,
                               category=item.get("dataset") or ""))
    return AnnotationSet(set_name(path), _one(models), _one(baselines), rows, dropped)


def _alpaca_preference(value: Any) -> float | None:
    """AlpacaEval's preference: in [1, 2] (2 = output_2 wins), 0 a tie, null no verdict."""
    if value is None or value == "":
        return None
    p = float(value)
    if math.isnan(p):
        return None
    return 0.5 if p == 0 else min(max(p - 1.0, 0.0), 1.0)


def _from_seed_lines(path: Path) -> AnnotationSet:
    rows, dropped, models, baselines = [], 0, set(), set()
    # A torn last line from a crash mid-write is skipped by read_jsonl; the judge redoes it.
    for lineno, item in read_jsonl(path):
        try:
            verdicts = item["verdicts"]
            models.add(item["model"])
            baselines.add(item["baseline"])
            pref = combine_verdicts(*verdicts)
        except (KeyError, TypeError) as e:
            raise UserError(f"{path}:{lineno}: not a Seed judgment line ({e}); pass a "
                            "judgments.jsonl written by `seed judge` or `seed run`") from e
        if pref is None:
            dropped += 1
            continue
        rows.append(Comparison(instruction=item["instruction"], output=item["output"],
                               baseline_output=item["baseline_output"], preference=pref,
                               category=item.get("category") or "",
                               verdicts=(verdicts[0], verdicts[1]),
                               reasons=tuple(item.get("reasons") or ())))
    return AnnotationSet(set_name(path), _one(models), _one(baselines), rows, dropped)


def _one(names: set[str]) -> str:
    return next(iter(names)) if len(names) == 1 else " + ".join(sorted(names)) or "unknown"
