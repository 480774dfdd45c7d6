"""The run report's "Watermark" section: the teacher's watermark in the training data and in the
student, as the watermark stage (`watermark_run.py`) left them in `watermark/watermark.json`.

It shows the key's id and the settings, one row per test (texts, distinct tokens scored, green
rate against gamma, z, p-value; for the student also its rank among the decoy keys and the
tuples still needed for p < 1e-5), each test's verdict as the stage worded it, and the limits in
plain words. It computes nothing and never sees a key.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from seed.evaluate.html import Html, span, table, text

LIMITS = ("A small p-value is evidence consistent with training on outputs watermarked with this "
          "key, never proof; a large one proves nothing: short or low-entropy answers carry little "
          "signal, paraphrase removes it, and a student at this scale may not learn a window "
          "of more than one token.")


def _needed(student: dict[str, Any]) -> str:
    needed = student.get("tokens_needed")
    if needed == 0:
        return "none (already below 1e-5)"
    return "never at this green rate" if needed is None else f"{needed:,} more"


def _row(what: str, r: dict[str, Any], gamma: float) -> list[object]:
    css = "bad" if r["evidence"] else "sub"
    return [what, str(r["texts"]), f"{r['tokens_scored']:,}",
            f"{r['green_rate']:.3f} (gamma {gamma:g})", f"{r['z']:.2f}", f"{r['p_value']:.3g}",
            span(css, "evidence" if r["evidence"] else "no evidence")]


def watermark_section(path: Path) -> list[Html]:
    """The section's pieces, or nothing when the run has no watermark result."""
    if not path.is_file():
        return []
    r = json.loads(path.read_text())
    data, student = r["data"], r["student"]
    head = (f"<p>The teacher watermarked its replies with key id <b>{text(r['key_id'])}</b> "
            f"(gamma {r['gamma']:g}, a window of {r['context']} token"
            f"{'s' if r['context'] != 1 else ''}); results under p {r['threshold']:g} count as "
            "evidence.</p>")
    rows = [_row("training data (detect)", data, r["gamma"])]
    if "skipped" not in student:
        rows.append(_row("student (radioactivity, reading mode)", student, r["gamma"]))
    out = [Html("<h2>Watermark</h2>"), Html(head),
           table(["tested", "texts", "distinct tokens", "green rate", "z", "p-value", "result"],
                 rows),
           Html(f"<p>Training data: {text(data['verdict'])}.</p>")]
    if "skipped" in student:
        out.append(Html(f"<p>Student: not tested: {text(student['skipped'])}.</p>"))
    else:
        out.append(Html(f"<p>Student: {text(student['verdict'])}. Among {student['decoys']} "
                        f"decoy keys the real key ranks {student['decoy_rank']}; tuples still "
                        f"needed for p &lt; 1e-5: {text(_needed(student))}.</p>"))
    return [*out, Html(f'<p class="sub">{text(LIMITS)}</p>')]
