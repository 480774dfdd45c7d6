"""How close Seed's length-controlled win rate gets to AlpacaEval 2.0's published LC values.

Reads the real AlpacaEval annotations in ../shared/data/alpaca_eval/ and compares, against the
leaderboard's `length_controlled_winrate`, for the leaderboard models present:

- the raw win rate (what you get without length control),
- an LC win rate whose instruction difficulty is the naive per-instruction mean preference
  (normalized) across the files, the obvious few-line alternative,
- Seed's LC win rate (`seed.evaluate.stats`: difficulty from a joint logistic fit).

AlpacaEval's own implementation cannot run here: it downloads its difficulty table and its
length-gamed baselines from the Hugging Face hub. Also prints the concise/verbose spread (relative
to the standard prompt's value) under each metric, and the time `summarize` takes for 12 files.

    HF_HUB_OFFLINE=1 PYTHONPATH=src .venv/bin/python benchmarks/lc_winrate.py
"""

from __future__ import annotations

import csv
import sys
import time
from pathlib import Path

import numpy as np

from seed.evaluate.annotations import load_annotations
from seed.evaluate.stats import lc_win_rate, summarize, win_rate

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca_eval"


def leaderboard() -> dict[str, float]:
    out = {}
    with (DATA / "weighted_alpaca_eval_gpt4_turbo_leaderboard.csv").open() as f:
        for r in csv.DictReader(f):
            if "/results/" in r["samples"]:
                out[r["samples"].split("/results/")[1].split("/")[0]] = float(
                    r["length_controlled_winrate"])
    return out


def naive_difficulty(sets: list) -> dict[str, float]:
    """Per-instruction mean preference over the files, standardized: the few-line alternative."""
    sums: dict[str, list[float]] = {}
    for s in sets:
        if s.model != s.baseline:
            for c in s.rows:
                sums.setdefault(c.instruction, []).append(c.preference)
    means = {k: float(np.mean(v)) for k, v in sums.items()}
    mu, sd = np.mean(list(means.values())), np.std(list(means.values()))
    return {k: (v - mu) / sd for k, v in means.items()}


def main() -> None:
    if not DATA.is_dir():
        sys.exit(f"reference data missing: {DATA}")
    sets = [load_annotations(p) for p in sorted((DATA / "annotations").glob("*.json.gz"))]
    lb = leaderboard()
    start = time.perf_counter()
    rows = {r["name"]: r for r in summarize(sets)}
    seconds = time.perf_counter() - start
    naive = naive_difficulty(sets)
    by_name = {s.name: s for s in sets}
    metrics = {
        "raw": {n: win_rate(s) for n, s in by_name.items()},
        "lc_naive_difficulty": {n: lc_win_rate(s, naive) for n, s in by_name.items()},
        "lc_seed": {n: rows[n]["lc_win_rate"] for n in by_name},
    }
    present = [n for n in by_name if n in lb and by_name[n].model != by_name[n].baseline]
    print(f"{'model':22s} {'leaderboard LC':>14s} " + " ".join(f"{m:>20s}" for m in metrics))
    for n in present:
        print(f"{n:22s} {lb[n]:14.2f} " + " ".join(f"{metrics[m][n]:20.2f}" for m in metrics))
    mae = {m: float(np.mean([abs(v[n] - lb[n]) for n in present])) for m, v in metrics.items()}
    print("MAE vs leaderboard LC: " + ", ".join(f"{m} {v:.2f}" for m, v in mae.items()))
    spreads = {}
    for m, v in metrics.items():
        spreads[m] = [abs(v[f"{b}_verbose"] - v[f"{b}_concise"]) / v[b]
                      for b in ("alpaca-7b", "gpt-3.5-turbo-1106")]
        print(f"concise/verbose relative spread, {m}: "
              + ", ".join(f"{x:.2f}" for x in spreads[m]))
    print(f"summarize() over {len(sets)} files x ~805 instructions: {seconds:.2f} s")
    print(f"RESULT models={len(present)} mae_raw={mae['raw']:.2f} "
          f"mae_lc_naive={mae['lc_naive_difficulty']:.2f} mae_lc_seed={mae['lc_seed']:.2f} "
          f"raw_over_seed={mae['raw'] / mae['lc_seed']:.2f} "
          f"naive_over_seed={mae['lc_naive_difficulty'] / mae['lc_seed']:.2f} "
          f"spread_raw={np.mean(spreads['raw']):.2f} "
          f"spread_lc_seed={np.mean(spreads['lc_seed']):.2f} summarize_s={seconds:.2f}")


if __name__ == "__main__":
    main()
