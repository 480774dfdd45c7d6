"""GRPO's claim: RL with the task's verifier raises a quickstart-size SFT student's held-out
accuracy by >= 15 points within 10 minutes of 2-core CPU, where SFT alone stops short.

Runs recipes/reasoning_rl.toml's stages in one process, as `seed run` does them: reasoning-gym
2-digit addition and subtraction (the quickstart's task with "-", which SFT does not master in the
quickstart's budget) -> SFT of the quickstart's `nano` student -> GRPO from it (`[rl]`, the task's
verifier as reward) -> both graded greedily by `seed eval`'s verifier on the same 200 held-out
prompts. The competitor is the SFT student of the same run. `minutes` is the GRPO stage's wall
time, start-up (reading records, rendering prompts) included. `--steps` and `--lr` override the
recipe's `rl.max_steps` and `rl.lr`; `--reuse DIR` keeps the data and SFT student in DIR and
reuses them on a rerun (for trying GRPO settings). `--sft-control` also trains the SFT student on
with SFT (ground-truth answers, the recipe's SFT settings at its final learning rate) for as many
steps as fit GRPO's wall time at SFT's measured speed, and grades it too: the control that tells
what RL adds over simply training longer.

    OMP_NUM_THREADS=1 HF_HUB_OFFLINE=1 PYTHONPATH=src .venv/bin/python benchmarks/grpo.py
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from rich.console import Console

from seed.evaluate.verify import evaluate_tasks
from seed.generate import generate_from_tasks
from seed.recipe import Recipe, load_recipe
from seed.train.loop import train_student

ROOT = Path(__file__).resolve().parents[1]


def sft_control(recipe: Recipe, work: Path, steps: int, console: Console) -> float:
    """Held-out accuracy of the SFT student trained on for `steps` more SFT steps, at the
    constant learning rate its cosine schedule ended on."""
    train = recipe.train
    more = train.model_copy(update={
        "max_steps": steps, "warmup_steps": 0, "lr": train.lr * train.min_lr_ratio,
        "min_lr_ratio": 1.0, "student": train.student.model_copy(
            update={"checkpoint": str(work / "sft" / "model")})})
    train_student(work / "data" / "train.jsonl", work / "sft_more", more, recipe.seed, console)
    graded = evaluate_tasks(work / "sft_more" / "model", work / "data" / "eval.jsonl",
                            work / "eval_sft_more", recipe.eval)
    return float(graded["accuracy"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "reasoning_rl.toml")
    parser.add_argument("--steps", type=int, help="GRPO steps (default: the recipe's)")
    parser.add_argument("--lr", type=float, help="GRPO learning rate (default: the recipe's)")
    parser.add_argument("--reuse", type=Path, help="keep data and the SFT student here")
    parser.add_argument("--sft-control", action="store_true",
                        help="also train SFT on for GRPO's wall time and grade it")
    args = parser.parse_args()
    recipe, _ = load_recipe(args.recipe)
    assert recipe.rl is not None, "the recipe has no [rl] stage"
    console = Console(stderr=True)
    rl = recipe.rl.model_copy(update={k: v for k, v in
                                      {"max_steps": args.steps, "lr": args.lr}.items() if v})
    with tempfile.TemporaryDirectory(prefix="seed-grpo-") as tmp:
        work = args.reuse or Path(tmp)
        data = work / "data"
        if not (data / "eval.jsonl").is_file():
            generate_from_tasks(recipe.generate, recipe.seed, data)
        t0 = time.perf_counter()
        sft = train_student(data / "train.jsonl", work / "sft", recipe.train, recipe.seed,
                            console)
        sft_s = time.perf_counter() - t0
        start = rl.model_copy(update={"student": rl.student.model_copy(
            update={"checkpoint": str(work / "sft" / "model")})})
        out = Path(tmp) / "grpo"
        t0 = time.perf_counter()
        grpo = train_student(data / "train.jsonl", out, start, recipe.seed, console)
        grpo_s = time.perf_counter() - t0
        graded = evaluate_tasks(out / "model", data / "eval.jsonl", Path(tmp) / "eval",
                                recipe.eval, baseline_dir=work / "sft" / "model")
        lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        control = ""
        if args.sft_control:
            steps = max(1, round(sft["steps"] * grpo_s / max(sft_s, 1e-9)))
            control = f" acc_sft_more={sft_control(recipe, work, steps, console):.3f}"
    acc_grpo, acc_sft = graded["accuracy"], graded["baseline_accuracy"]
    load = os.getloadavg()
    first, last = lines[0], lines[-1]
    mean = {k: sum(m[k] for m in lines) / len(lines) for k in ("rollout_s", "update_s")}
    print(f"SFT: {sft['steps']} steps in {sft_s:.0f}s, held-out accuracy {acc_sft:.1%}")
    print(f"GRPO: {grpo['steps']} steps of {rl.grpo.prompts_per_step} prompts x "
          f"{rl.grpo.group} in {grpo_s:.0f}s (rollout {mean['rollout_s']:.2f}s + update "
          f"{mean['update_s']:.2f}s a step); train reward {first['reward']:.3f} (step "
          f"{first['step']}) -> {last['reward']:.3f}; held-out accuracy {acc_grpo:.1%} "
          f"(n={graded['n']})")
    print(f"load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f} (2 cores)")
    print(f"RESULT acc_sft={acc_sft:.3f} acc_grpo={acc_grpo:.3f} minutes={grpo_s / 60:.2f} "
          f"gain_points={100 * (acc_grpo - acc_sft):.1f} grpo_steps={grpo['steps']} "
          f"sft_s={sft_s:.0f}{control}")


if __name__ == "__main__":
    main()
