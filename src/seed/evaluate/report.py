"""The run report: one self-contained HTML file (inline SVG plots, no scripts, no network).

It reads only what the stages left in the run directory (manifest, metrics, eval results, samples,
records) and shows the loss curve, accuracy before and after training, sample conversations with
their verdicts, where the data came from, and how long each stage took. It computes no results.
"""

from __future__ import annotations

import io
import json
from html import escape
from pathlib import Path
from typing import Any

from seed.errors import UserError
from seed.files import write_text_atomic

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


_VERDICT_CLASS = {"allow": "ok", "warn": "sub", "block": "bad"}


def _svg(fig: Any) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    text = buf.getvalue()
    return text[text.index("<svg"):]


def _plots(metrics: list[dict[str, Any]], results: dict[str, Any] | None) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = []
    if metrics:
        fig, ax = plt.subplots(figsize=(5.2, 3.2))
        ax.plot([m["step"] for m in metrics], [m["loss"] for m in metrics], color="#0969da")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss (assistant tokens)")
        ax.grid(alpha=0.3)
        out.append(f"<figure>{_svg(fig)}<figcaption>Loss curve</figcaption></figure>")
        plt.close(fig)
    if results and results.get("baseline_accuracy") is not None:
        fig, ax = plt.subplots(figsize=(3.6, 3.2))
        vals = [results["baseline_accuracy"] * 100, results["accuracy"] * 100]
        bars = ax.bar(["untrained", "trained"], vals, color=["#8c959f", "#1a7f37"])
        ax.bar_label(bars, fmt="%.1f%%")
        ax.set_ylim(0, 105)
        ax.set_ylabel("held-out accuracy (%)")
        out.append(f"<figure>{_svg(fig)}<figcaption>Accuracy before and after</figcaption>"
                   "</figure>")
        plt.close(fig)
    return f'<div class="plots">{"".join(out)}</div>' if out else ""


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{trs}</table>"


def _samples(samples: list[dict[str, Any]], k: int) -> str:
    # Show the misses first: they say more than a page of correct answers.
    wrong = [s for s in samples if not s["correct"]]
    right = [s for s in samples if s["correct"]]
    shown_wrong = wrong[: max(k // 2, k - len(right))]
    picked = shown_wrong + right[: k - len(shown_wrong)]
    rows = []
    for s in picked:
        verdict = ('<span class="ok">correct</span>' if s["correct"]
                   else '<span class="bad">wrong</span>')
        rows.append([f"<pre>{escape(s[k] if k != 'teacher' else str(s[k]))}</pre>"
                     for k in ("prompt", "teacher", "student")] + [verdict])
    return _table(["prompt", "teacher answer", "student answer", "verdict"], rows)


def _provenance(run_dir: Path) -> str:
    """Per teacher and source: records, the terms verdict for this use, and the obligations."""
    if not (run_dir / "data" / "train.jsonl").exists():
        return "<p>No training records.</p>"
    from seed.policy.gate import summarize_run

    decision = summarize_run(run_dir)
    rows = [[escape(f["teacher"]), escape(f["source"]), str(f["records"]),
             f'<span class="{_VERDICT_CLASS[f["verdict"]]}">{escape(f["verdict"])}</span>',
             escape("; ".join(f["obligations"]) or "none")]
            for f in decision["findings"]]
    note = ""
    if decision.get("accepted_risk"):
        note = (f'<p class="warn">Trained on forbidden records at the user\'s risk: '
                f'{escape(decision["accepted_risk"])}</p>')
    return note + _table(["teacher", "prompt source", "records", "terms verdict", "obligations"],
                         rows)


def _timings(manifest: dict[str, Any]) -> str:
    rows = [[escape(name), escape(st.get("status", "")), f"{st.get('seconds', 0):.1f}"]
            for name, st in manifest.get("stages", {}).items() if name != "report"]
    versions = ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items())
    return _table(["stage", "status", "seconds"], rows) + f'<p class="sub">{escape(versions)}</p>'


def _card(value: str, label: str) -> str:
    return f'<div class="card"><b>{escape(value)}</b><span>{escape(label)}</span></div>'


def render_report(run_dir: Path) -> str:
    """The report's HTML for a run directory."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    results_path = run_dir / "eval" / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else None
    metrics = _read_jsonl(run_dir / "train" / "metrics.jsonl")
    samples = _read_jsonl(run_dir / "eval" / "samples.jsonl")
    train_info = manifest.get("stages", {}).get("train", {}).get("info", {})
    gen_info = manifest.get("stages", {}).get("generate", {}).get("info", {})

    cards = []
    if results:
        cards.append(_card(f"{results['accuracy']:.1%}", f"held-out accuracy (n={results['n']})"))
        if results.get("baseline_accuracy") is not None:
            cards.append(_card(f"{results['baseline_accuracy']:.1%}", "untrained student"))
    if gen_info:
        cards.append(_card(str(gen_info.get("train_records", "?")), "training records"))
    if train_info:
        cards.append(_card(f"{train_info.get('params', 0) / 1e6:.2f}M", "student parameters"))
        cards.append(_card(str(train_info.get("steps", "?")), "optimizer steps"))
        cards.append(_card(f"{train_info.get('tokens_per_s', 0):,.0f}", "training tokens/s"))
    total = sum(st.get("seconds", 0) for st in manifest.get("stages", {}).values())
    cards.append(_card(f"{total:.0f} s", "total stage time"))

    eval_cfg = manifest.get("config", {}).get("eval", {})
    body = [
        f"<h1>Seed report: {escape(manifest.get('name', run_dir.name))}</h1>",
        f'<p class="sub">Updated {escape(manifest.get("updated_at", ""))} · seed '
        f'{manifest.get("seed")}</p>',
        f'<div class="cards">{"".join(cards)}</div>',
        "<h2>Training and accuracy</h2>",
        _plots(metrics, results),
    ]
    if samples:
        body += ["<h2>Sample conversations</h2>", _samples(samples, eval_cfg.get("samples", 12))]
    from seed.evaluate.judge_report import judge_section

    body += judge_section(run_dir / "judge")  # the judged evaluation, when the recipe asks for it
    body += [
        "<h2>Where the data came from</h2>",
        _provenance(run_dir),
        "<h2>Timings</h2>",
        _timings(manifest),
    ]
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>Seed report: {escape(manifest.get('name', ''))}</title><style>{CSS}</style>"
        f"</head><body><main>{''.join(body)}</main></body></html>\n"
    )


def write_report(run_dir: str | Path) -> Path:
    """Write `report.html` into the run directory and return its path."""
    run_dir = Path(run_dir)
    if not (run_dir / "manifest.json").is_file():
        raise UserError(f"{run_dir}: not a run directory (no manifest.json); give runs/<name>")
    path = run_dir / "report.html"
    write_text_atomic(path, render_report(run_dir))
    return path
