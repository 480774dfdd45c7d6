"""The pieces of Seed's HTML reports: page shell, CSS, cards, tables, preformatted text, figures.

Both the run report (report.py) and the judge section (judge_report.py) are built from these, so
the two look alike and escape alike. Text is escaped wherever it goes in; a piece that is already
HTML is an `Html` value and goes in as it is, so a table cell can hold markup and a header or a
plain cell can never inject any. Figures are matplotlib plots inlined as SVG, so a report stays one
self-contained file (no scripts, no network). This module knows nothing about runs or results.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterable
from html import escape
from typing import Any

CSS = """
body{font:15px/1.5 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1b1f24;
background:#f6f7f9}
main{max-width:1000px;margin:0 auto;padding:24px}
h1{margin:0 0 4px}h2{margin-top:32px;border-bottom:1px solid #d8dde3;padding-bottom:4px}
.sub{color:#57606a}.cards{display:flex;gap:12px;flex-wrap:wrap;margin:16px 0}
.card{background:#fff;border:1px solid #d8dde3;border-radius:8px;padding:12px 16px;min-width:150px}
.card b{display:block;font-size:26px}.card span{color:#57606a;font-size:13px}
table{border-collapse:collapse;width:100%;background:#fff}
td,th{border:1px solid #d8dde3;padding:6px 8px;text-align:left;vertical-align:top}
th{background:#eef1f4}.ok{color:#1a7f37;font-weight:600}.bad{color:#cf222e;font-weight:600}
.plots{display:flex;gap:16px;flex-wrap:wrap}.plots figure{margin:0;background:#fff;
border:1px solid #d8dde3;border-radius:8px;padding:8px}pre{white-space:pre-wrap;margin:0}
.warn{background:#fff8c5;border:1px solid #d4a72c;padding:8px 12px;border-radius:6px}
"""


class Html(str):
    """A string that is already HTML: the builders here put it in unescaped."""


def text(value: object) -> Html:
    """`value` as HTML: escaped, unless it already is `Html`."""
    return value if isinstance(value, Html) else Html(escape(str(value)))


def join(pieces: Iterable[object]) -> Html:
    """Pieces one after another, each escaped unless it is `Html`."""
    return Html("".join(text(p) for p in pieces))


def page(title: str, body: Iterable[object]) -> str:
    """A whole HTML document: the shared CSS, `title`, and `body` inside `<main>`."""
    return ('<!doctype html><html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width,initial-scale=1">'
            f"<title>{text(title)}</title><style>{CSS}</style>"
            f"</head><body><main>{join(body)}</main></body></html>\n")


def card(value: str, label: str) -> Html:
    """One headline number with what it measures underneath."""
    return Html(f'<div class="card"><b>{text(value)}</b><span>{text(label)}</span></div>')


def cards(items: Iterable[Html]) -> Html:
    """A row of cards."""
    return Html(f'<div class="cards">{join(items)}</div>')


def table(head: Iterable[str], rows: Iterable[Iterable[object]]) -> Html:
    """A table with a header row; every header and cell is escaped unless it is `Html`."""
    th = "".join(f"<th>{text(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{text(c)}</td>" for c in r) + "</tr>" for r in rows)
    return Html(f"<table><tr>{th}</tr>{trs}</table>")


def pre(value: str, limit: int | None = None) -> Html:
    """Preformatted text (answers keep their line breaks), cut to `limit` characters with ` …`."""
    if limit is not None and len(value) > limit:
        value = value[:limit] + " …"
    return Html(f"<pre>{text(value)}</pre>")


def span(css_class: str, value: str) -> Html:
    """Text in a styled span (`ok`, `bad`, `sub`)."""
    return Html(f'<span class="{text(css_class)}">{text(value)}</span>')


def figure(draw: Callable[[Any], None], caption: str, size: tuple[float, float] = (5.2, 3.2),
           grid: bool = True) -> Html:
    """A matplotlib plot drawn by `draw(ax)` on one axes, inlined as SVG, with its caption."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=size)
    draw(ax)
    if grid:
        ax.grid(alpha=0.3)
    buf = io.StringIO()
    # No date in the metadata, so the same data gives the same file.
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    plt.close(fig)
    svg = buf.getvalue()
    return Html(f"<figure>{svg[svg.index('<svg'):]}<figcaption>{text(caption)}</figcaption>"
                "</figure>")


def plots(figures: Iterable[Html]) -> Html:
    """Figures side by side, wrapping; nothing when there are none."""
    inner = join(figures)
    return Html(f'<div class="plots">{inner}</div>') if inner else Html("")
