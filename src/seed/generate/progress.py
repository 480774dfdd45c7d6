"""The live view of a generation: done/total, requests/s, tokens/s, retries, failures, cost.

`live(stats, budget, console)` is a context manager that redraws a one-panel `rich` display from the
engine's counters a few times a second (on a terminal; elsewhere it prints nothing until the end).
`summary(...)` is the closing report as plain lines. It reads counters and never changes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.live import Live
from rich.table import Table

from seed.generate.budget import Budget
from seed.generate.engine import Stats


def _money(x: float | None) -> str:
    return "n/a" if x is None else f"${x:,.4f}"


def figures(stats: Stats, budget: Budget | None) -> dict[str, str]:
    """The displayed figures as labelled strings (also what the summary prints)."""
    t = max(stats.elapsed(), 1e-9)
    total = "?" if stats.total is None else f"{stats.total:,}"
    out = {
        "done": f"{stats.done:,} / {total}",
        "requests/s": f"{stats.paid / t:,.1f}",
        "tokens/s": f"{stats.completion_tokens / t:,.0f}",
        "cached": f"{stats.cached:,}",
        "in flight": f"{stats.in_flight}",
        "retries": f"{stats.retries:,}",
        "failures": f"{stats.failed:,}",
    }
    if stats.phase:
        out["batch"] = stats.phase
    if budget is not None:
        # Counted by Seed where the teacher sent no usable usage: say the figures are bounds.
        bound = f" (upper bound: {budget.estimated_requests:,} replies counted by Seed)" \
            if budget.estimated_requests else ""
        out["tokens"] = f"{budget.tokens:,}{bound}"
        if budget.reasoning_tokens:
            out["reasoning tokens"] = f"{budget.reasoning_tokens:,}"
        out["cost"] = _money(budget.cost) + bound
        remaining = None if stats.total is None else stats.total - stats.cached
        out["projected"] = _money(budget.projected(stats.paid, remaining))
    return out


class _View:
    def __init__(self, stats: Stats, budget: Budget | None) -> None:
        self.stats, self.budget = stats, budget

    def __rich__(self) -> Table:
        table = Table.grid(padding=(0, 2))
        f = figures(self.stats, self.budget)
        table.add_row(*(f"[bold]{k}[/bold] {v}" for k, v in f.items()))
        return table


@contextmanager
def live(stats: Stats, budget: Budget | None, console: Console) -> Iterator[None]:
    """Show the counters while the block runs (only on a terminal)."""
    if not console.is_terminal:
        yield
        return
    with Live(_View(stats, budget), console=console, refresh_per_second=4, transient=True):
        yield


def summary(stats: Stats, budget: Budget | None) -> list[str]:
    """The end-of-run report, one fact per line."""
    f = figures(stats, budget)
    lines = [f"{k}: {v}" for k, v in f.items() if k not in ("in flight", "projected")]
    lines.append(f"elapsed: {stats.elapsed():.1f}s")
    if stats.stopped:
        lines.append(f"stopped early: {stats.stopped}; rerun with a higher cap to finish")
    return lines
