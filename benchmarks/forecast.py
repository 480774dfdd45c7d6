"""`seed generate --forecast` against the full run: predicted vs actual cost and records kept.

The prompts are real text read in place: the 175 Self-Instruct seed instructions and the first
turns of the 80 MT-Bench questions (../shared/data), with 43 of them repeated (exact duplicates the
filters drop), 298 lines in all. The teacher (tests/helpers/priced_teacher.py, in a thread) has
known token counts (usage in words, a 40-word system prefix reported as cached), refuses 15% of
the prompts (fixed by a hash of each prompt's text) and answers the rest with 5-64 words after a
20 ms delay.

For each recipe seed: forecast on a sample (`--sample`, default 100 of the 255 prompts to send),
then the full run on the same output directory (which reuses the sample from the cache). Actual
cost = the sample's cost + the full run's; actual kept = the records the full run wrote.
Relative errors are |predicted - actual| / actual. The first seed is the headline; the others show
the spread (a different sample each).

Run: `.venv/bin/python benchmarks/forecast.py [--sample 100] [--seeds 7 11 13 17 19] [--copies K]`
(`--copies 4`: each prompt four times under other headings, 1,190 lines of which 170 repeat, to
see that the error depends on the sample, not on the stream's length)
Ends with `RESULT cost_error=E yield_error=E sample=N max_cost_error=E max_yield_error=E`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from rich.console import Console  # noqa: E402

from helpers.priced_teacher import priced_teacher  # noqa: E402
from helpers.recipes import teacher_recipe, write_recipe  # noqa: E402
from helpers.thread_server import app_in_thread  # noqa: E402
from seed.generate.forecast import forecast  # noqa: E402
from seed.generate.teacher import generate_from_teacher  # noqa: E402
from seed.recipe import load_recipe  # noqa: E402

DATA = ROOT.parent / "shared" / "data"
PRICE = {"input": 1.25, "output": 10.0, "cached_input": 0.125}  # gpt-5's, $/1M tokens


def prompts(path: Path, copies: int = 1) -> int:
    seeds = [json.loads(line)["instruction"]
             for line in (DATA / "self_instruct" / "seed_tasks.jsonl").read_text().splitlines()]
    mt = [json.loads(line)["turns"][0]
          for line in (DATA / "mt_bench" / "question.jsonl").read_text().splitlines()]
    texts = seeds + mt
    if copies > 1:  # a longer stream: each prompt again under another heading (distinct text)
        texts = [t if j == 0 else f"Variant {j}. {t}" for j in range(copies) for t in texts]
    texts += texts[::6]  # 43 exact duplicates, spread over the file
    path.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in texts))
    return len(texts)


def one(tmp: Path, seed: int, sample: int) -> dict[str, float]:
    app = priced_teacher(refusal_share=0.15, system_words=40, latency=0.02)
    with app_in_thread(app) as base:
        recipe = write_recipe(tmp / f"r{seed}.toml", teacher_recipe(
            base, tmp / "p.jsonl", model="priced-model"), {
            "seed": seed, "generate.prices": {"priced-model": PRICE},
            "generate.limits.concurrency": 8})
        r, _ = load_recipe(recipe)
        out = tmp / f"out{seed}"
        quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115
        fc = forecast(r.generate, r.seed, out, sample, console=quiet)
        t0 = time.monotonic()
        full = generate_from_teacher(r.generate, r.seed, out, console=quiet)
        elapsed = time.monotonic() - t0
        sent = sum(app.state.sent.values())
        twice = sum(v > 1 for v in app.state.sent.values())
    cost = fc["sample_cost"] + full["cost"]
    kept = full["records_written"]
    return {"seed": seed, "predicted_cost": fc["cost_online"], "actual_cost": cost,
            "cost_error": abs(fc["cost_online"] - cost) / cost,
            "cost_in_interval": fc["cost_online_interval"][0] <= cost
            <= fc["cost_online_interval"][1],
            "predicted_kept": fc["records_expected"], "actual_kept": kept,
            "yield_error": abs(fc["records_expected"] - kept) / kept,
            "kept_in_interval": fc["records_interval"][0] <= kept <= fc["records_interval"][1],
            "predicted_batch": fc["cost_batch"], "sample": fc["sample"],
            "to_send": fc["prompts_to_send"], "dropped": sum(fc["prompts_dropped"].values()),
            "predicted_wall_s": fc["wall_time_s"] or 0.0, "actual_wall_s": elapsed,
            "requests": sent, "asked_twice": twice}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sample", type=int, default=100)
    ap.add_argument("--seeds", type=int, nargs="+", default=[7, 11, 13, 17, 19])
    ap.add_argument("--copies", type=int, default=1,
                    help="each prompt this many times under other headings (a longer stream)")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        lines = prompts(tmp / "p.jsonl", args.copies)
        print(f"{lines} prompt lines (real text), sample {args.sample}, load "
              f"{os.getloadavg()[0]:.1f}")
        for seed in args.seeds:
            row = one(tmp, seed, args.sample)
            rows.append(row)
            print(f"seed {seed}: cost predicted ${row['predicted_cost']:.5f} actual "
                  f"${row['actual_cost']:.5f} (error {row['cost_error']:.1%}, in 95% interval: "
                  f"{row['cost_in_interval']}); kept predicted {row['predicted_kept']:.1f} "
                  f"actual {row['actual_kept']} (error {row['yield_error']:.1%}, in interval: "
                  f"{row['kept_in_interval']}); batch ${row['predicted_batch']:.5f}; "
                  f"{row['to_send']} to send, {row['dropped']} dropped; wall predicted "
                  f"{row['predicted_wall_s']:.2f}s actual {row['actual_wall_s']:.2f}s; "
                  f"{row['requests']} requests, {row['asked_twice']} asked twice")
    head = rows[0]
    print(f"RESULT cost_error={head['cost_error']:.4f} yield_error={head['yield_error']:.4f} "
          f"sample={head['sample']} max_cost_error={max(r['cost_error'] for r in rows):.4f} "
          f"max_yield_error={max(r['yield_error'] for r in rows):.4f}")


if __name__ == "__main__":
    main()
