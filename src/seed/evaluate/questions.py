"""Evaluation questions for judging: one or more user turns, a category, maybe a reference answer.

Reads Seed's record format (the user turns of `messages`; `meta.category` or `meta.task`,
`meta.reference` or a task's ground-truth `meta.answer`) and
MT-Bench's `question.jsonl` (`question_id`, `category`, `turns`) with its reference answers file.
It does not answer or judge anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from seed.errors import UserError
from seed.files import read_jsonl


@dataclass
class Question:
    """One conversation to answer: its user turns, in order, and what graders may know."""

    id: str
    turns: list[str]
    category: str = ""
    reference: list[str] | None = None


def load_questions(path: str | Path, references: str | Path | None = None,
                   limit: int | None = None) -> list[Question]:
    """Questions from a records or MT-Bench file; `references` adds MT-Bench reference answers."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such questions file; give a records JSONL or an MT-Bench "
                        "question.jsonl")
    out: list[Question] = []
    for lineno, item in read_jsonl(path):
        try:
            out.append(_question(item))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{path}:{lineno}: not a question ({e}); each line needs `turns` "
                            "(MT-Bench) or `messages` with a user turn (a Seed record)") from e
        if limit is not None and len(out) >= limit:
            break
    if references is not None:
        refs = _references(Path(references))
        for q in out:
            q.reference = refs.get(q.id, q.reference)
    return out


def _question(item: dict) -> Question:
    if "turns" in item:
        turns = [str(t) for t in item["turns"]]
        qid = str(item.get("question_id", item.get("id")))
        return Question(qid, turns, item.get("category") or "")
    turns = [m["content"] for m in item["messages"] if m["role"] == "user"]
    if not turns:
        raise ValueError("no user turn")
    meta = item.get("meta") or {}
    ref = meta.get("reference", meta.get("answer"))  # `answer`: a task's ground truth
    ref_turns = [ref] if isinstance(ref, str) else ref
    return Question(str(item["id"]), turns, meta.get("category") or meta.get("task") or "",
                    ref_turns)


def _references(path: Path) -> dict[str, list[str]]:
    """MT-Bench reference answers: question_id -> the first choice's turns."""
    if not path.is_file():
        raise UserError(f"{path}: no such reference answers file; give an MT-Bench "
                        "reference_answer/*.jsonl")
    refs = {}
    for lineno, item in read_jsonl(path):
        try:
            refs[str(item["question_id"])] = [str(t) for t in item["choices"][0]["turns"]]
        except (KeyError, IndexError, TypeError) as e:
            raise UserError(f"{path}:{lineno}: not a reference answer ({e!r}); each line needs "
                            "`question_id` and `choices[0].turns` (MT-Bench)") from e
    return refs
