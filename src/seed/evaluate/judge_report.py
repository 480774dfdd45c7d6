"""The judge section of the HTML report: win rates with intervals, categories, length, worst losses.

`judge_section(judge_dir)` reads what `run_judge` left there (`judge_results.json` and the
judgments or grades) and returns HTML: headline cards (win rate with its 95% interval, the
length-controlled win rate, Bradley-Terry score, order flips, unparseable verdicts), a warning when
the judge is the teacher's own model, per-category bars for student and teacher, the judge's
preference against the length difference, and the examples the student lost worst, with the judge's
reasons. Plots are inline SVG, so the report stays one self-contained file. It computes no
statistics beyond grouping what is on disk for the plots.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Callable
from html import escape
from pathlib import Path
from typing import Any

from seed.evaluate.annotations import AnnotationSet, load_annotations
from seed.evaluate.html import Html, card, cards, figure, join, page, plots, pre, table, text
from seed.files import load_jsonl, write_text_atomic

STUDENT_COLOR, TEACHER_COLOR = "#0969da", "#bf8700"


def _pct(x: float | None) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1f}%"


def _category_bars(labels: list[str], student: list[float], teacher: list[float], ylabel: str,
                   names: tuple[str, str]) -> Html:
    def draw(ax: Any) -> None:
        xs = range(len(labels))
        ax.bar([x - 0.2 for x in xs], student, 0.4, label=names[0], color=STUDENT_COLOR)
        ax.bar([x + 0.2 for x in xs], teacher, 0.4, label=names[1], color=TEACHER_COLOR)
        ax.set_xticks(list(xs), labels, rotation=30, ha="right")
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=8)

    return figure(draw, "By category: student and teacher")


def _length_plot(s: AnnotationSet) -> Html:
    """Preference against log2(student length / teacher length), with binned means."""
    pts = sorted((math.log2((len(c.output) + 1) / (len(c.baseline_output) + 1)), c.preference)
                 for c in s.rows)

    def draw(ax: Any) -> None:
        ax.scatter([x for x, _ in pts], [100 * y for _, y in pts], s=10, alpha=0.4,
                   color=STUDENT_COLOR, label="one question")
        k = max(1, len(pts) // 5)
        bins = [pts[i:i + k] for i in range(0, len(pts), k)]
        ax.plot([sum(x for x, _ in b) / len(b) for b in bins],
                [100 * sum(y for _, y in b) / len(b) for b in bins], color="#cf222e",
                marker="o", label="binned win rate")
        ax.set_xlabel("log2(student length / teacher length)")
        ax.set_ylabel("student preferred (%)")
        ax.set_ylim(-5, 105)
        ax.legend(fontsize=8)

    return figure(draw, "Length against the judge's preference")


def _answer(value: str) -> Html:
    """An answer or question in a table cell, cut at 1200 characters."""
    return pre(value, limit=1200)


def _image(judge_dir: Path) -> Callable[[str], Html]:
    """An image judgment's answer (its PNG's path under the judge directory) as an inline image."""
    def show(rel: str) -> Html:
        path = judge_dir / rel
        if not path.is_file():
            return text(f"{rel} (missing)")
        data = base64.b64encode(path.read_bytes()).decode()
        return Html(f'<img alt="{escape(rel)}" src="data:image/png;base64,{data}" width="96" '
                    'height="96" style="image-rendering:pixelated">')
    return show


def _worst_pairwise(s: AnnotationSet, k: int, answer: Callable[[str], Html] = _answer) -> Html:
    lost = sorted((c for c in s.rows if c.preference < 0.5), key=lambda c: sum(c.verdicts or (0,)))
    rows = [[_answer(c.instruction), answer(c.output), answer(c.baseline_output),
             Html("<br>".join(f"<b>{o}:</b> {text(r)}" for o, r in
                              zip(("student shown first", "student shown second"), c.reasons,
                                  strict=False)))]
            for c in lost[:k]]
    if not rows:
        return Html("<p>The student lost no comparison.</p>")
    return table(["question", "student", "teacher", "the judge's reasons"], rows)


def _pairwise(judge_dir: Path, results: dict[str, Any], k: int) -> list[Html]:
    st = results["stats"]
    s = load_annotations(judge_dir / "judgments.jsonl")
    bt_low, bt_high = st.get("bt_ci") or (None, None)
    bt = "-" if st.get("bt_score") is None else f"{st['bt_score']:.0f}"
    bt_ci = "" if bt_low is None else f" [{bt_low:.0f}, {bt_high:.0f}]"
    flips = st.get("order_flip_rate")
    images = results.get("kind") == "image"
    headline = [
        card(f"{_pct(st['win_rate'])}", f"student win rate vs teacher (n={st['n']}), ties half"),
        card(f"{st['ci_low']:.1f}-{st['ci_high']:.1f}%", "95% bootstrap interval"),
        *([] if images else [card(_pct(st["lc_win_rate"]), "length-controlled win rate")]),
        card(bt + bt_ci, "Bradley-Terry score (teacher = 1000)"),
        card(_pct(flips), "order flips (position bias)"),
        card(str(st.get("unparseable", 0)), "pairs with an unparseable verdict"),
    ]
    cats = st.get("categories", {})
    labels = list(cats)
    figures = [_category_bars(labels, [cats[c]["win_rate"] for c in labels],
                              [100 - cats[c]["win_rate"] for c in labels], "win rate (%)",
                              ("student", "teacher"))] if labels else []
    if s.rows and not images:  # an image has no length
        figures.append(_length_plot(s))
    longer = st.get("longer_wins_rate")
    length = ("" if images else "No comparison of unequal lengths was decided." if longer is None
              else f"The longer answer won {_pct(longer)} of decided comparisons.")
    first = st.get("first_position_rate")
    if first is not None:
        length += f" The answer shown first won {_pct(first)} of decisive verdicts (50% = no bias)."
    return [cards(headline), plots(figures),
            Html(f"<p>Each question was judged twice, the answers swapped; orders that disagree "
                 f"count as a tie. {text(length)}</p>"),
            Html("<h3>Where the student lost worst</h3>"),
            _worst_pairwise(s, k, _image(judge_dir) if images else _answer)]


def _single(judge_dir: Path, results: dict[str, Any], k: int) -> list[Html]:
    scores = results["stats"]["scores"]
    student, teacher = results["student"], results["baseline"]
    mine, theirs = scores.get(student, {}), scores.get(teacher, {})
    headline = [card(f"{m['mean']:.2f}" if m.get("mean") is not None else "-",
                     f"{name}: mean score 1-10 [{m.get('ci_low', 0):.2f}, "
                     f"{m.get('ci_high', 0):.2f}]")
                for name, m in ((student, mine), (teacher, theirs))]
    labels = sorted(set(mine.get("categories", {})) | set(theirs.get("categories", {})))
    figures = [_category_bars(labels, [mine.get("categories", {}).get(c, 0) for c in labels],
                              [theirs.get("categories", {}).get(c, 0) for c in labels],
                              "mean score (1-10)", ("student", "teacher"))] if labels else []
    by = {(r["model"], r["id"]): r for r in load_jsonl(judge_dir / "grades.jsonl")}
    gaps = sorted(((by[(teacher, i)]["score"] or 0) - (by[(student, i)]["score"] or 0), i)
                  for (m, i) in by if m == student and (teacher, i) in by)

    def graded(row: dict[str, Any]) -> Html:
        return join([_answer(row["output"]), Html(f"<b>{text(row['score'])}</b>: "),
                     row["reason"]])

    worst = [[_answer(by[(student, i)]["instruction"]), graded(by[(student, i)]),
              graded(by[(teacher, i)])]
             for gap, i in reversed(gaps[-k:]) if gap > 0]
    shown = (table(["question", "student (score: reason)", "teacher (score: reason)"], worst)
             if worst else Html("<p>The student scored below the teacher nowhere.</p>"))
    return [cards(headline), plots(figures),
            Html("<h3>Where the student fell furthest below the teacher</h3>"), shown]


def judge_section(judge_dir: str | Path, examples: int = 5) -> list[Html]:
    """The section's HTML pieces; empty when the run has no judged evaluation."""
    judge_dir = Path(judge_dir)
    path = judge_dir / "judge_results.json"
    if not path.is_file():
        return []
    results = json.loads(path.read_text())
    head = [Html(f"<h2>Judged by {text(results.get('judge'))}: student vs "
                 f"{text(results.get('baseline'))}</h2>")]
    if results.get("self_preference"):
        head.append(Html('<p class="warn"><b>Self-preference:</b> the judge is the teacher\'s own '
                         "model. Judges tend to favour answers in their own style, so the "
                         "teacher's side is likely flattered; confirm with a different "
                         "judge.</p>"))
    body = (_pairwise if results["mode"] == "pairwise" else _single)(judge_dir, results, examples)
    return head + body


def write_judge_report(judge_dir: str | Path) -> Path:
    """A stand-alone `report.html` in `judge_dir` holding just the judge section (`seed judge`)."""
    judge_dir = Path(judge_dir)
    path = judge_dir / "report.html"
    write_text_atomic(path, page("Seed judged evaluation", judge_section(judge_dir)))
    return path
