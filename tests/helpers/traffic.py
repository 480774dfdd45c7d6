"""Real prompts for the audit tests' clients, read in place from ../shared/data (see its README).

Self-Instruct seed tasks (what a distiller bootstraps from), MT-Bench questions and AlpacaEval
instructions (what people ask), short texts an app fills into its fixed template (the first
sentences of AlpacaEval answers), and whole answers (text a bigram teacher writes like). Tests
skip when the folder is missing.
"""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="../shared/data is not present")


def seed_tasks(n: int) -> list[str]:
    rows = [json.loads(line) for line in (DATA / "self_instruct/seed_tasks.jsonl").open()]
    return [r["instruction"] for r in rows[:n]]


def mt_bench(n: int) -> list[list[str]]:
    """The first `n` MT-Bench questions, each its two user turns."""
    rows = [json.loads(line) for line in (DATA / "mt_bench/question.jsonl").open()]
    return [r["turns"] for r in rows[:n]]


def _annotations() -> list[dict]:
    with gzip.open(DATA / "alpaca_eval/annotations/alpaca-7b.json.gz", "rt") as f:
        return json.load(f)


def alpaca_instructions(n: int, skip: int = 0) -> list[str]:
    return [a["instruction"] for a in _annotations()[skip:skip + n]]


def alpaca_answers(n: int, skip: int = 0) -> list[str]:
    """Whole AlpacaEval answers (alpaca-7b's, ~400 characters each): real text to write like."""
    return [a["output_2"] for a in _annotations()[skip:skip + n]]


def answer_sentences(n: int, skip: int = 400) -> list[str]:
    """First sentences (20-200 characters) of AlpacaEval answers: what users paste into an app."""
    out = []
    for a in _annotations()[skip:]:
        first = re.split(r"(?<=[.!?])\s", a["output_2"].strip())[0]
        if 20 <= len(first) <= 200 and '"' not in first:
            out.append(first)
        if len(out) == n:
            break
    return out
