"""Digit-split BPE vs plain BPE (and characters) for the quickstart's arithmetic, in one run.

Generates the quickstart's data once, then trains the quickstart's student with each tokenizer
kind and the same [train] settings (same steps, rows, learning rate), and grades each on the same
held-out prompts with reasoning-gym's scorer. Plain BPE is the competitor: it is what a tokenizer
trained on the data gives by default. Prints accuracy, tokens per example and training seconds.

    HF_HUB_OFFLINE=1 PYTHONPATH=src .venv/bin/python benchmarks/tokenizer_arithmetic.py
"""

from __future__ import annotations

import argparse
import io
import os
import tempfile
from pathlib import Path

from rich.console import Console

from seed.evaluate.verify import evaluate_tasks
from seed.generate import generate_from_tasks
from seed.recipe import load_recipe

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "quickstart.toml")
    parser.add_argument("--kinds", default="digits,bpe", help="comma-separated tokenizer kinds")
    args = parser.parse_args()
    from seed.train import train_student

    recipe, _ = load_recipe(args.recipe)
    results = {}
    with tempfile.TemporaryDirectory(prefix="seed-tok-") as tmp:
        data = Path(tmp) / "data"
        generate_from_tasks(recipe.generate, recipe.seed, data)
        for kind in args.kinds.split(","):
            cfg = recipe.train.model_copy(
                update={"tokenizer": recipe.train.tokenizer.model_copy(update={"kind": kind})})
            out = Path(tmp) / kind
            info = train_student(data / "train.jsonl", out / "train", cfg, recipe.seed,
                                 console=Console(file=io.StringIO()))
            ev = evaluate_tasks(out / "train" / "model", data / "eval.jsonl", out / "eval",
                                recipe.eval)
            results[kind] = (ev["accuracy"], info["tokens"] / max(info["steps"], 1),
                             info["seconds"], info["vocab_size"])
            print(f"{kind:>6}: accuracy {ev['accuracy']:.1%}, vocabulary {info['vocab_size']}, "
                  f"{info['steps']} steps, {info['seconds']:.1f}s training", flush=True)
    load = os.getloadavg()[0]
    base = results.get("bpe", next(iter(results.values())))[0]
    parts = [f"{k}_accuracy={v[0]:.3f}" for k, v in results.items()]
    parts += [f"{k}_train_s={v[2]:.1f}" for k, v in results.items()]
    if "digits" in results and base > 0:
        parts.append(f"digits_over_bpe={results['digits'][0] / base:.2f}")
    print("RESULT " + " ".join(parts) + f" load={load:.1f}")


if __name__ == "__main__":
    main()
