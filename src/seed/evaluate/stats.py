"""Statistics over judge annotations: win rates, bootstrap intervals, Bradley-Terry, length control.

Everything takes `AnnotationSet`s (see annotations.py) and returns plain numbers, in percent where
it is a rate. The pieces, each short enough to check by eye:

- win rate with ties: the mean preference (a tie is half a win), with a bootstrap 95% interval;
- Bradley-Terry scores (arena-hard style, Elo scale, the baseline anchored at 1000) with bootstrap
  intervals, from every (model, baseline, preference) battle;
- the length-controlled win rate in the AlpacaEval-LC way (Dubois et al. 2024): per model, a
  logistic model of the preference on tanh(normalized length difference), instruction difficulty
  and a baseline term, predicted at zero length difference. AlpacaEval ships a difficulty table
  fitted on its whole leaderboard; here difficulty is fitted from the annotation sets at hand
  (a joint logistic model: one term per instruction, an ability and a length slope per model), so
  it needs at least two sets over the same instructions and is zero otherwise;
- per-category win rates, the order-flip rate (how often swapping the answers changes the judge's
  winner: position bias) and the judge's preference for the longer answer.

It knows nothing about judges, files or reports.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from seed.evaluate.annotations import AnnotationSet

ELO_SCALE = 400 / math.log(10)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


def fit_logistic(x: np.ndarray, y: np.ndarray, offset: np.ndarray | float = 0.0,
                 start: np.ndarray | None = None, l2: float = 1e-4, steps: int = 50) -> np.ndarray:
    """Coefficients of a logistic model with soft labels y in [0, 1], by Newton's method."""
    beta = np.zeros(x.shape[1]) if start is None else start.copy()
    for _ in range(steps):
        s = _sigmoid(x @ beta + offset)
        grad = x.T @ (s - y) + l2 * beta
        hess = (x * (s * (1 - s))[:, None]).T @ x + l2 * np.eye(x.shape[1])
        step = np.linalg.solve(hess, grad)
        beta -= step
        if np.abs(step).max() < 1e-10:
            break
    return beta


def preferences(s: AnnotationSet) -> np.ndarray:
    return np.array([c.preference for c in s.rows], dtype=float)


def win_rate(s: AnnotationSet) -> float:
    """Percent of comparisons the model wins, a tie counting half."""
    return 100.0 * float(preferences(s).mean()) if s.rows else float("nan")


def bootstrap_ci(values: np.ndarray, rounds: int = 1000, seed: int = 0,
                 scale: float = 100.0) -> tuple[float, float]:
    """95% percentile interval of the mean of `values` (times `scale`: percent) over resamples."""
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(rounds, len(values)))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return scale * float(low), scale * float(high)


def _length_feature(s: AnnotationSet) -> np.ndarray:
    """tanh of the (model - baseline) length difference in characters, divided by its std."""
    delta = np.array([len(c.output) - len(c.baseline_output) for c in s.rows], dtype=float)
    std = delta.std()
    return np.tanh(delta / std) if std > 0 else np.zeros_like(delta)


def instruction_difficulty(sets: list[AnnotationSet], iters: int = 1000) -> dict[str, float]:
    """Per-instruction difficulty from a joint fit over the sets: logit p = a_m + b_m * len + d_i.

    Alternates a few Newton steps on each model's (a_m, b_m) with a damped Newton step on every
    d_i (mean fixed at 0) until the steps vanish. Empty with fewer than two comparable sets, where
    difficulty cannot be told apart from the one model's own preferences.
    """
    sets = [s for s in sets if s.model != s.baseline and s.rows]
    if len(sets) < 2:
        return {}
    index: dict[str, int] = {}
    data = []
    for s in sets:
        ii = np.array([index.setdefault(c.instruction, len(index)) for c in s.rows])
        x = np.column_stack([np.ones(len(s.rows)), _length_feature(s)])
        data.append((ii, x, preferences(s)))
    d = np.zeros(len(index))
    coefs = [np.zeros(2) for _ in data]
    for _ in range(iters):
        grad, hess = np.zeros(len(index)), np.zeros(len(index))
        for k, (ii, x, p) in enumerate(data):
            coefs[k] = fit_logistic(x, p, offset=d[ii], start=coefs[k], steps=3)
            prob = _sigmoid(x @ coefs[k] + d[ii])
            np.add.at(grad, ii, prob - p)
            np.add.at(hess, ii, prob * (1 - prob))
        step = (grad + 1e-3 * d) / (hess + 1.0)
        d -= step
        d -= d.mean()
        if np.abs(step).max() < 1e-6:
            break
    return {instr: float(d[i]) for instr, i in index.items()}


def lc_win_rate(s: AnnotationSet, difficulty: dict[str, float] | None = None) -> float:
    """Length-controlled win rate: the fitted win rate had both answers been the same length."""
    if not s.rows:
        return float("nan")
    if s.model == s.baseline:
        return 50.0
    diff = np.array([(difficulty or {}).get(c.instruction, 0.0) for c in s.rows])
    x = np.column_stack([_length_feature(s), diff, np.ones(len(s.rows))])
    beta = fit_logistic(x, preferences(s))
    return 100.0 * float(_sigmoid(beta[1] * diff + beta[2]).mean())


def bradley_terry(battles: list[tuple[str, str, float]], anchor: str) -> dict[str, float]:
    """Elo-scale Bradley-Terry scores from (a, b, P(a beats b)) battles; `anchor` stays at 1000."""
    names = sorted({a for a, _, _ in battles} | {b for _, b, _ in battles})
    free = [n for n in names if n != anchor]
    col = {n: i for i, n in enumerate(free)}
    x = np.zeros((len(battles), len(free)))
    for row, (a, b, _) in enumerate(battles):
        if a in col:
            x[row, col[a]] += 1.0
        if b in col:
            x[row, col[b]] -= 1.0
    y = np.array([p for _, _, p in battles], dtype=float)
    beta = fit_logistic(x, y, l2=1e-3) if free else np.zeros(0)
    scores = {n: 1000.0 + ELO_SCALE * float(beta[col[n]]) for n in free}
    scores[anchor] = 1000.0
    return scores


def bradley_terry_ci(battles: list[tuple[str, str, float]], anchor: str, rounds: int = 100,
                     seed: int = 0) -> dict[str, tuple[float, float]]:
    """Bootstrap 95% intervals of the Bradley-Terry scores (battles resampled with replacement)."""
    rng = np.random.default_rng(seed)
    samples = defaultdict(list)
    for _ in range(rounds):
        pick = rng.integers(0, len(battles), size=len(battles))
        for name, score in bradley_terry([battles[i] for i in pick], anchor).items():
            samples[name].append(score)
    return {n: (float(np.percentile(v, 2.5)), float(np.percentile(v, 97.5)))
            for n, v in samples.items()}


def category_win_rates(s: AnnotationSet) -> dict[str, dict[str, float]]:
    """Win rate and count per category (the empty category is named `all`)."""
    groups = defaultdict(list)
    for c in s.rows:
        groups[c.category or "all"].append(c.preference)
    return {cat: {"n": len(v), "win_rate": 100.0 * float(np.mean(v))}
            for cat, v in sorted(groups.items())}


def order_flip_rate(s: AnnotationSet) -> float | None:
    """Percent of pairs whose winner changes when the answers swap places (None: one order only)."""
    pairs = [c.verdicts for c in s.rows if c.verdicts is not None]
    if not pairs:
        return None
    return 100.0 * sum(np.sign(a) != np.sign(b) for a, b in pairs) / len(pairs)


def first_position_rate(s: AnnotationSet) -> float | None:
    """Percent of decisive verdicts that favour whichever answer was shown first (50 = no bias)."""
    firsts = []
    for c in s.rows:
        if c.verdicts is not None:
            model_first, model_second = c.verdicts
            firsts += [model_first > 0] if model_first else []
            firsts += [model_second < 0] if model_second else []
    return 100.0 * float(np.mean(firsts)) if firsts else None


def longer_wins_rate(s: AnnotationSet) -> float | None:
    """Percent of decided comparisons of unequal length won by the longer answer (50 = no bias)."""
    wins = [(c.preference > 0.5) == (len(c.output) > len(c.baseline_output))
            for c in s.rows if c.preference != 0.5 and len(c.output) != len(c.baseline_output)]
    return 100.0 * float(np.mean(wins)) if wins else None


def summarize(sets: list[AnnotationSet], bootstrap_rounds: int = 1000) -> list[dict[str, Any]]:
    """Every statistic for every set; difficulty for LC is fitted jointly over all the sets."""
    difficulty = instruction_difficulty(sets)
    battles = [(s.model, s.baseline, c.preference) for s in sets if s.model != s.baseline
               for c in s.rows]
    anchor = sets[0].baseline if sets else ""
    bt = bradley_terry(battles, anchor) if battles else {}
    bt_ci = bradley_terry_ci(battles, anchor) if battles else {}
    out = []
    for s in sets:
        if not s.rows:  # every judgment unparseable: nothing to estimate (JSON has no NaN)
            out.append({"name": s.name, "model": s.model, "baseline": s.baseline, "n": 0,
                        "unparseable": s.unparseable, "win_rate": None, "lc_win_rate": None,
                        "ci_low": None, "ci_high": None, "avg_length": None, "bt_score": None,
                        "bt_ci": [None, None],
                        "categories": {}, "order_flip_rate": None, "first_position_rate": None,
                        "longer_wins_rate": None})
            continue
        low, high = bootstrap_ci(preferences(s), rounds=bootstrap_rounds)
        out.append({
            "name": s.name, "model": s.model, "baseline": s.baseline, "n": len(s.rows),
            "unparseable": s.unparseable, "win_rate": win_rate(s),
            "lc_win_rate": lc_win_rate(s, difficulty), "ci_low": low, "ci_high": high,
            "avg_length": float(np.mean([len(c.output) for c in s.rows])),
            "bt_score": bt.get(s.model), "bt_ci": list(bt_ci.get(s.model, (None, None))),
            "categories": category_win_rates(s),
            "order_flip_rate": order_flip_rate(s), "first_position_rate": first_position_rate(s),
            "longer_wins_rate": longer_wins_rate(s),
        })
    return out


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of a binomial proportion (95% at z = 1.96); (0, 1) for n = 0."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)
