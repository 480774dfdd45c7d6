"""The training loop before and after a change, side by side: same records, same recipe, ABBA.

Issue 11 merged two loops (`train/loop.py`, fast from-scratch SFT, and `train/finetune.py`, every
other mode) into one. This script checks that the merged loop is no slower: it unpacks an older
commit's `src/` (`--old-ref`, default the last commit with two loops) beside this tree, writes the
quickstart's records once with this tree's `seed generate`, and runs `seed train` with each tree's
code on them in the order old, new, new, old (`--rounds` times), so a drift in the shared machine's
load favours neither. Both use this venv (the dependencies did not change). Two recipes:

- `quickstart`: the quickstart's [train] section (the path the CPU speed was tuned for), capped at
  `--steps` steps;
- `held_out`: the same with `train.eval_fraction = 0.05`, which the old code sent to finetune.py.

tokens/s is the loop's own figure (real tokens over the summed step times, summary.json); the
final losses must agree (the same data order and initial weights), and the script says if not.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train_loop_ab.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from old_tree import unpack_src  # noqa: E402

SEED = [sys.executable, "-c", "from seed.cli import main; main()"]
OLD_REF = "6422fa7"  # the last commit with loop.py + finetune.py


def recipe_text(steps: int, eval_fraction: float, threads: int) -> str:
    """The quickstart recipe with its train section capped and one thread count."""
    text = (ROOT / "recipes" / "quickstart.toml").read_text()
    tomllib.loads(text)  # fail early if the quickstart stops being TOML
    extra = f"max_steps = {steps}\nthreads = {threads}\ncheckpoint_every = 100000\n"
    if eval_fraction:
        extra += f"eval_fraction = {eval_fraction}\neval_every = 100000\n"
    return text.replace("[train]\n", "[train]\n" + extra, 1)


def seed_cmd(src: Path, args: list[str], cwd: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(src), "HF_HUB_OFFLINE": "1",
           "OMP_WAIT_POLICY": "PASSIVE"}
    done = subprocess.run([*SEED, *args], cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode:
        sys.exit(f"seed {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}")
    return done.stdout


def train_once(src: Path, recipe: Path, records: Path, out: Path) -> dict:
    seed_cmd(src, ["train", str(records), "--out", str(out), "--recipe", str(recipe)], out.parent)
    return json.loads((out / "summary.json").read_text())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--old-ref", default=OLD_REF)
    ap.add_argument("--steps", type=int, default=600)
    ap.add_argument("--rounds", type=int, default=2, help="ABBA rounds per recipe")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        trees = {"old": unpack_src(args.old_ref, work / "old"), "new": ROOT / "src"}
        gen = work / "gen.toml"
        gen.write_text(recipe_text(args.steps, 0.0, args.threads))
        seed_cmd(trees["new"], ["generate", str(gen), "--out", str(work / "data")], work)
        records = work / "data" / "train.jsonl"
        results: dict[str, dict[str, list[dict]]] = {}
        for name, fraction in (("quickstart", 0.0), ("held_out", 0.05)):
            recipe = work / f"{name}.toml"
            recipe.write_text(recipe_text(args.steps, fraction, args.threads))
            runs: dict[str, list[dict]] = {"old": [], "new": []}
            for r in range(args.rounds):
                for which in ("old", "new", "new", "old"):
                    out = work / f"{name}-{which}-{r}-{len(runs[which])}"
                    runs[which].append(train_once(trees[which], recipe, records, out))
            results[name] = runs

    ratios = {}
    for name, runs in results.items():
        tps = {w: sum(s["tokens"] for s in rs) / sum(s["seconds"] for s in rs)
               for w, rs in runs.items()}
        loss = {w: rs[0]["final_loss"] for w, rs in runs.items()}
        ratios[name] = tps["new"] / tps["old"]
        each = {w: ", ".join(f"{s['tokens_per_s']:.0f}" for s in rs) for w, rs in runs.items()}
        print(f"{name}: old {tps['old']:.0f} tok/s ({each['old']}), new {tps['new']:.0f} tok/s "
              f"({each['new']}), new/old {ratios[name]:.3f}; final loss old {loss['old']:.6f} "
              f"new {loss['new']:.6f}")
        if abs(loss["old"] - loss["new"]) > 1e-4 * max(1.0, abs(loss["old"])):
            print(f"  {name}: the final losses differ: the loops do not train the same way")
    print(f"RESULT new_vs_old_quickstart={ratios['quickstart']:.3f} "
          f"new_vs_old_held_out={ratios['held_out']:.3f}")


if __name__ == "__main__":
    main()
