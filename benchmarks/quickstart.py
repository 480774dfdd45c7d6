"""The quickstart's claim: `seed run recipes/quickstart.toml` teaches a from-scratch student
held-out arithmetic in minutes on a 2-core CPU, where the untrained student gets ~0%.

Runs the recipe in a fresh temporary directory (so nothing is skipped), with the same interpreter,
and reports wall time per stage from the run manifest and the held-out accuracy of the trained
student next to the untrained one (the competitor, graded on the same 200 prompts in the same run).
`--clone` instead times `make quickstart` on a fresh `git clone` of this repository (install
included), which is the figure the issue asks for.

    HF_HUB_OFFLINE=1 PYTHONPATH=src .venv/bin/python benchmarks/quickstart.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "quickstart.toml")
    parser.add_argument("--clone", action="store_true",
                        help="time `make quickstart` on a fresh git clone, install included")
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    with tempfile.TemporaryDirectory(prefix="seed-quickstart-") as tmp:
        if args.clone:
            work = Path(tmp) / "seed"
            subprocess.run(["git", "clone", "--quiet", str(ROOT), str(work)], check=True)
            cmd = ["make", "quickstart"]
        else:
            work = Path(tmp)
            env["PYTHONPATH"] = str(ROOT / "src")
            cmd = [sys.executable, "-m", "seed", "run", str(args.recipe.resolve())]
        t0 = time.perf_counter()
        subprocess.run(cmd, cwd=work, env=env, check=True)
        wall = time.perf_counter() - t0
        recipe_name = "quickstart"
        run_dir = next((work / "runs").iterdir()) if (work / "runs").is_dir() else work
        manifest = json.loads((run_dir / "manifest.json").read_text())
        results = json.loads((run_dir / "eval" / "results.json").read_text())
        train = manifest["stages"]["train"]["info"]
        stages = {name: s.get("seconds", 0.0) for name, s in manifest["stages"].items()}
    load = os.getloadavg()[0]
    print(f"recipe {recipe_name}: wall {wall:.1f}s; stages " +
          ", ".join(f"{k} {v:.1f}s" for k, v in stages.items()))
    print(f"student: {train['params']:,} params, {train['steps']} steps, "
          f"{train['tokens_per_s']:,.0f} tokens/s, final loss {train['final_loss']:.4f}")
    print(f"held-out accuracy: trained {results['accuracy']:.1%} vs untrained "
          f"{results['baseline_accuracy']:.1%} (n={results['n']}); load average {load:.1f}")
    print(f"RESULT wall_s={wall:.1f} train_s={stages.get('train', 0):.1f} "
          f"accuracy={results['accuracy']:.3f} "
          f"baseline_accuracy={results['baseline_accuracy']:.3f} "
          f"gain={results['accuracy'] - results['baseline_accuracy']:.3f} n={results['n']} "
          f"tokens_per_s={train['tokens_per_s']:.0f} clone={int(args.clone)} load={load:.1f}")


if __name__ == "__main__":
    main()
