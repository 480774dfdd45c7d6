"""The terminal view of `seed stats`: one line per annotation set, then per-category win rates.

It formats the dicts from `stats.summarize`; it computes nothing. Plain fixed-width text, so it
stays readable in a narrow terminal and in a log file.
"""

from __future__ import annotations

from typing import Any

from rich.console import Console


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def print_stats(rows: list[dict[str, Any]], console: Console) -> None:
    """Print the summary lines and, for sets with several categories, their win rates."""
    width = max([len(r["name"]) for r in rows] + [4])
    console.print(f"{'name':<{width}} {'n':>5} {'win%':>5} {'95% CI':>11} {'LC%':>5} {'BT':>5} "
                  f"{'BT 95% CI':>11} "
                  f"{'len':>5} {'flip%':>5} {'longer%':>7}", highlight=False, soft_wrap=True)
    for r in rows:
        bt = "-" if r["bt_score"] is None else f"{r['bt_score']:.0f}"
        low, high = r["bt_ci"]
        bt_ci = "-" if low is None else f"{low:.0f}-{high:.0f}"
        ci = "-" if r["ci_low"] is None else f"{r['ci_low']:.1f}-{r['ci_high']:.1f}"
        length = "-" if r["avg_length"] is None else f"{r['avg_length']:.0f}"
        console.print(f"{r['name']:<{width}} {r['n']:>5} {_pct(r['win_rate']):>5} {ci:>11} "
                      f"{_pct(r['lc_win_rate']):>5} {bt:>5} {bt_ci:>11} {length:>5} "
                      f"{_pct(r['order_flip_rate']):>5} {_pct(r['longer_wins_rate']):>7}",
                      highlight=False, soft_wrap=True)
    for r in rows:
        if r["unparseable"]:
            console.print(f"{r['name']}: {r['unparseable']} judgments unparseable (left out)")
        if len(r["categories"]) > 1:
            cats = ", ".join(f"{c} {v['win_rate']:.1f} (n={v['n']})"
                             for c, v in r["categories"].items())
            console.print(f"{r['name']} by category: {cats}", highlight=False, soft_wrap=True)
