"""The generate stage: prompts in, teacher-answered records out (`data/train.jsonl`, `data/eval.jsonl`)."""

from seed.generate.from_tasks import generate_from_tasks

__all__ = ["generate_from_tasks"]
