"""Training and held-out evaluation records from the procedural (reasoning-gym) teacher.

The evaluation prompts are drawn first, from a seed far from the training seed, and every training
item whose question is among them is dropped, so the held-out set never leaks into training.
`held_out_split` is that split alone, which an HTTP teacher's generation answers (`generate.tasks`).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from seed.endpoints.tasks import TasksEndpoint
from seed.errors import UserError
from seed.recipe import GenerateConfig, TasksEndpointConfig
from seed.records import Record, write_records


def held_out_split(teacher: TasksEndpoint, config: GenerateConfig,
                 seed: int) -> tuple[list[Record], Iterator[Record]]:
    """The held-out evaluation prompts, and the training prompts (`num_records` drawn) with every
    evaluation question removed."""
    eval_prompts = list(
        teacher.prompts(config.eval_prompts, seed + config.eval_seed_offset, purpose="eval")
    )
    held_out = {r.messages[-1].content for r in eval_prompts}
    return eval_prompts, teacher.prompts(config.num_records, seed, exclude=held_out)


def generate_from_tasks(config: GenerateConfig, seed: int, out_dir: Path) -> dict[str, Any]:
    """Write `train.jsonl` (answered) and `eval.jsonl` (prompts with reference answers)."""
    if not isinstance(config.teacher, TasksEndpointConfig):
        raise UserError(f"generate.teacher.kind = \"{config.teacher.kind}\": procedural "
                        "generation takes kind = \"tasks\"")
    teacher = TasksEndpoint(config.teacher.tasks)
    eval_prompts, prompts = held_out_split(teacher, config, seed)
    train = (teacher.answer(r) for r in prompts)
    n_train = write_records(out_dir / "train.jsonl", train)
    n_eval = write_records(out_dir / "eval.jsonl", eval_prompts)
    return {"train_records": n_train, "eval_records": n_eval,
            "dropped_overlap": config.num_records - n_train}
