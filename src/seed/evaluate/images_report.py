"""The run report's image section: accuracies per attribute and a grid of held-out samples.

Reads what seed.evaluate.images left in the eval directory (results.json, samples.jsonl and the
PNGs they name) and inlines the images as data URIs, so the report stays one self-contained file.
Each cell shows a held-out caption with the teacher's image, the student's and the untrained
student's, and the verifier's verdict under each. It computes no results.
"""

from __future__ import annotations

import base64
from html import escape
from pathlib import Path
from typing import Any

from seed.evaluate.html import Html, table, text

GRID_CSS = ("<style>.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(230px,1fr));"
            "gap:10px}.cell{background:#fff;border:1px solid #d8dde3;border-radius:8px;"
            "padding:8px;font-size:13px}.cell img{width:64px;height:64px;"
            "image-rendering:pixelated;border:1px solid #d8dde3}.cell figure{display:inline-block;"
            "margin:2px;text-align:center}.cell figcaption{font-size:11px}</style>")


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{value:.1%}"


def _img(path: Path, label: str, verdict: bool | None) -> Html:
    """One image inlined as a data URI, with its label and verdict under it."""
    if not path.is_file():
        return Html(f"<figure><figcaption>{text(label)}: missing</figcaption></figure>")
    data = base64.b64encode(path.read_bytes()).decode()
    mark = "" if verdict is None else (' <span class="ok">✓</span>' if verdict
                                       else ' <span class="bad">✗</span>')
    return Html(f'<figure><img alt="{escape(label)}" src="data:image/png;base64,{data}">'
                f"<figcaption>{text(label)}{mark}</figcaption></figure>")


def _attributes(results: dict[str, Any]) -> Html:
    student, base = results.get("attributes", {}), results.get("baseline_attributes") or {}
    rows: list[list[object]] = [["exact (both objects right)", _pct(results["accuracy"]),
                                 _pct(results.get("baseline_accuracy"))]]
    rows += [[name.replace("_", " "), _pct(value), _pct(base.get(name))]
             for name, value in student.items()]
    rows += [[f"exact, sampling seed {s}", _pct(v), _pct((results.get("baseline_per_seed")
                                                           or {}).get(s))]
             for s, v in results.get("per_seed", {}).items()]
    if "train_compositions" in results:
        rows.append(["exact, training compositions",
                     _pct(results["train_compositions"]["accuracy"]), "–"])
    return table(["held-out compositions", "student", "untrained"], rows)


def _grid(eval_dir: Path, samples: list[dict[str, Any]]) -> Html:
    cells = []
    for s in samples:
        figures = [_img(eval_dir / s["teacher"], "teacher", None),
                   _img(eval_dir / s["student"], "student", s["correct"])]
        if "baseline" in s:
            figures.append(_img(eval_dir / s["baseline"], "untrained", s["baseline_correct"]))
        cells.append(f'<div class="cell"><div>{text(s["prompt"])}</div>{"".join(figures)}</div>')
    return Html(GRID_CSS + '<div class="grid">' + "".join(cells) + "</div>")


def image_section(eval_dir: Path, results: dict[str, Any] | None,
                  samples: list[dict[str, Any]]) -> list[Html]:
    """The section's pieces; none when the eval graded no images."""
    images = [s for s in samples if s.get("kind") == "image"]
    if not results or "attributes" not in results:
        return []
    interval = f"95% interval {_pct(results['ci_low'])}–{_pct(results['ci_high'])}"
    body = [Html("<h2>Held-out images</h2>"),
            Html(f'<p class="sub">{results["n"]} images: {results["prompts"]} captions whose '
                 f"compositions never appeared in training, each drawn under sampling seeds "
                 f"{text(', '.join(map(str, results['seeds'])))}, {results['steps']} steps, "
                 f"guidance {results['guidance']}; graded by the shapes verifier "
                 f"(exact: {interval}).</p>"),
            _attributes(results)]
    skipped = results.get("skipped", {})
    if skipped:
        body.append(Html("".join(f'<p class="sub">{text(k)}: {text(v)}</p>'
                                 for k, v in skipped.items())))
    if images:
        body += [Html("<h3>Samples</h3>"), _grid(eval_dir, images)]
    return body
