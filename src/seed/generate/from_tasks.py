"""Training and held-out evaluation records from the procedural (reasoning-gym) teacher.

The evaluation prompts are drawn first, from a seed far from the training seed, and every training
item whose question is among them is dropped, so the held-out set never leaks into training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from seed.endpoints.tasks import TasksEndpoint
from seed.errors import UserError
from seed.recipe import GenerateConfig, TasksEndpointConfig
from seed.records import write_records


def generate_from_tasks(config: GenerateConfig, seed: int, out_dir: Path) -> dict[str, Any]:
    """Write `train.jsonl` (answered) and `eval.jsonl` (prompts with reference answers)."""
    if not isinstance(config.teacher, TasksEndpointConfig):
        raise UserError(f"generate.teacher.kind = \"{config.teacher.kind}\": procedural "
                        "generation takes kind = \"tasks\"")
    teacher = TasksEndpoint(config.teacher.tasks)
    eval_prompts = list(
        teacher.prompts(config.eval_prompts, seed + config.eval_seed_offset, purpose="eval")
    )
    held_out = {r.messages[-1].content for r in eval_prompts}
    train = (teacher.answer(r) for r in teacher.prompts(config.num_records, seed, exclude=held_out))
    n_train = write_records(out_dir / "train.jsonl", train)
    n_eval = write_records(out_dir / "eval.jsonl", eval_prompts)
    return {"train_records": n_train, "eval_records": n_eval,
            "dropped_overlap": config.num_records - n_train}
