"""The generate stage: prompts in, teacher-answered records out (`train.jsonl`, `eval.jsonl`).

`generate_from_tasks` (the procedural teacher) and `generate_from_teacher` (an HTTP teacher through
the engine) are imported on first use, so the HTTP path never loads reasoning-gym and back.
"""

from __future__ import annotations

from typing import Any

__all__ = ["generate_from_tasks", "generate_from_teacher"]


def __getattr__(name: str) -> Any:
    if name == "generate_from_tasks":
        from seed.generate.from_tasks import generate_from_tasks

        return generate_from_tasks
    if name == "generate_from_teacher":
        from seed.generate.teacher import generate_from_teacher

        return generate_from_teacher
    raise AttributeError(name)
