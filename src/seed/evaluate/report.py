"""The run report: one self-contained HTML file (inline SVG plots, no scripts, no network).

It reads only what the stages left in the run directory (manifest, metrics, eval results, samples,
records) and shows the loss curve, accuracy before and after training (and by the length of a
thinking student's trace), sample conversations with
their verdicts, the judged evaluation (judge_report.py's section, when there is one), the
identity probes (`seed eval runs/NAME/train/model --identity --out runs/NAME/identity`, when run),
the teacher's watermark in the data and the student (watermark_report.py's section, when the
recipe has [eval.watermark]), an image student's grid of held-out samples (images_report.py),
where the data came from, and how long each stage took. The page is built from html.py's pieces.
It computes no results.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from seed.errors import UserError
from seed.evaluate.html import Html, card, cards, figure, page, plots, pre, span, table, text
from seed.evaluate.images_report import image_section
from seed.evaluate.judge_report import judge_section
from seed.evaluate.watermark_report import watermark_section
from seed.files import load_jsonl, write_text_atomic

_VERDICT_CLASS = {"allow": "ok", "warn": "sub", "block": "bad"}


def _plots(metrics: list[dict[str, Any]], results: dict[str, Any] | None,
           loss_label: str = "training loss (assistant tokens)") -> Html:
    out = []
    if metrics:
        def loss(ax: Any) -> None:
            ax.plot([m["step"] for m in metrics], [m["loss"] for m in metrics], color="#0969da")
            ax.set_xlabel("optimizer step")
            ax.set_ylabel(loss_label)

        out.append(figure(loss, "Loss curve"))
    if results and results.get("baseline_accuracy") is not None:
        def accuracy(ax: Any) -> None:
            vals = [results["baseline_accuracy"] * 100, results["accuracy"] * 100]
            bars = ax.bar(["untrained", "trained"], vals, color=["#8c959f", "#1a7f37"])
            ax.bar_label(bars, fmt="%.1f%%")
            ax.set_ylim(0, 105)
            ax.set_ylabel("held-out accuracy (%)")

        out.append(figure(accuracy, "Accuracy before and after", size=(3.6, 3.2), grid=False))
    return plots(out)


def _trace_lengths(results: dict[str, Any] | None) -> list[Html]:
    """Accuracy by the student's trace length (seed.evaluate.verify.trace_buckets), when it
    thinks."""
    buckets = (results or {}).get("by_trace_length")
    if not buckets:
        return []
    rows = [[b["tokens"], str(b["n"]), f"{b['accuracy']:.1%}"] for b in buckets]
    return [Html("<h2>Accuracy by trace length</h2>"),
            Html('<p class="sub">Held-out answers grouped by the length of the student\'s '
                 "thinking trace (tokens inside &lt;think&gt;), graded on the answer after "
                 "it.</p>"),
            table(["trace tokens", "answers", "accuracy"], rows)]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return load_jsonl(path) if path.exists() else []


def _samples(samples: list[dict[str, Any]], k: int) -> Html:
    # Show the misses first: they say more than a page of correct answers.
    wrong = [s for s in samples if not s["correct"]]
    right = [s for s in samples if s["correct"]]
    shown_wrong = wrong[: max(k // 2, k - len(right))]
    picked = shown_wrong + right[: k - len(shown_wrong)]
    rows = [[pre(str(s[key])) for key in ("prompt", "teacher", "student")]
            + [span("ok", "correct") if s["correct"] else span("bad", "wrong")] for s in picked]
    return table(["prompt", "teacher answer", "student answer", "verdict"], rows)


def _provenance(run_dir: Path) -> Html:
    """Per teacher and source: records, the terms verdict for this use, and the obligations."""
    if not (run_dir / "data" / "train.jsonl").exists():
        return Html("<p>No training records.</p>")
    from seed.policy.gate import summarize_run

    decision = summarize_run(run_dir)
    rows = [[f["teacher"], f["source"], str(f["records"]),
             span(_VERDICT_CLASS[f["verdict"]], f["verdict"]),
             "; ".join(f["obligations"]) or "none"]
            for f in decision["findings"]]
    note = ""
    if decision.get("accepted_risk"):
        note = (f'<p class="warn">Trained on forbidden records at the user\'s risk: '
                f'{text(decision["accepted_risk"])}</p>')
    return Html(note + table(["teacher", "prompt source", "records", "terms verdict",
                              "obligations"], rows))


def _identity(path: Path) -> list[Html]:
    """The identity probes' claim rate and worst answers (seed.protect.identity_eval)."""
    if not path.is_file():
        return []
    r = json.loads(path.read_text())
    head = (f"<p>{r['claims']} of {r['n']} answers to {r['probes']} who-are-you probes "
            f"({r['samples']} samples each, temperature {r['temperature']}) claim another "
            f"model's identity: <b>{r['rate']:.1%}</b> (95% CI {r['ci_low']:.1%} to "
            f"{r['ci_high']:.1%}).</p>")
    vendors = ", ".join(f"{v} ({n})" for v, n in r["vendors"].items())
    rows = [[w["language"], pre(w["probe"]), pre(w["answer"]), ", ".join(w["claims"])]
            for w in r["worst"]]
    return [Html("<h2>Identity</h2>"), Html(head),
            Html(f"<p>Vendors claimed: {text(vendors)}</p>") if vendors else Html(""),
            table(["language", "probe", "answer", "claims"], rows) if rows else Html("")]


def _timings(manifest: dict[str, Any]) -> Html:
    rows = [[name, st.get("status", ""), f"{st.get('seconds', 0):.1f}"]
            for name, st in manifest.get("stages", {}).items() if name != "report"]
    versions = ", ".join(f"{k} {v}" for k, v in manifest.get("versions", {}).items())
    return Html(table(["stage", "status", "seconds"], rows)
                + f'<p class="sub">{text(versions)}</p>')


def _train_mode(manifest: dict[str, Any]) -> str | None:
    mode: str | None = manifest.get("stages", {}).get("train", {}).get("info", {}).get("mode")
    return mode


def _cards(manifest: dict[str, Any], results: dict[str, Any] | None) -> Html:
    train_info = manifest.get("stages", {}).get("train", {}).get("info", {})
    gen_info = manifest.get("stages", {}).get("generate", {}).get("info", {})
    out = []
    if results:
        out.append(card(f"{results['accuracy']:.1%}", f"held-out accuracy (n={results['n']})"))
        if results.get("baseline_accuracy") is not None:
            out.append(card(f"{results['baseline_accuracy']:.1%}", "untrained student"))
    if gen_info:
        out.append(card(str(gen_info.get("train_records", "?")), "training records"))
    if verified := gen_info.get("verify"):  # verified generation's yield (seed.generate.verify)
        out.append(card(f"{verified['yield']:.1%}", f"teacher answers verified "
                        f"({verified['correct']:,} of {verified['samples']:,})"))
    if train_info:
        out.append(card(f"{train_info.get('params', 0) / 1e6:.2f}M", "student parameters"))
        out.append(card(str(train_info.get("steps", "?")), "optimizer steps"))
        images = train_info.get("mode") == "diffusion"  # its "tokens" are images seen
        out.append(card(f"{train_info.get('tokens_per_s', 0):,.0f}",
                        "training images/s" if images else "training tokens/s"))
    total = sum(st.get("seconds", 0) for st in manifest.get("stages", {}).values())
    out.append(card(f"{total:.0f} s", "total stage time"))
    return cards(out)


def render_report(run_dir: Path) -> str:
    """The report's HTML for a run directory."""
    manifest = json.loads((run_dir / "manifest.json").read_text())
    results_path = run_dir / "eval" / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else None
    metrics = _read_jsonl(run_dir / "train" / "metrics.jsonl")
    samples = _read_jsonl(run_dir / "eval" / "samples.jsonl")
    eval_cfg = manifest.get("config", {}).get("eval", {})
    body = [
        Html(f"<h1>Seed report: {text(manifest.get('name', run_dir.name))}</h1>"),
        Html(f'<p class="sub">Updated {text(manifest.get("updated_at", ""))} · seed '
             f'{text(manifest.get("seed"))}</p>'),
        _cards(manifest, results),
        Html("<h2>Training and accuracy</h2>"),
        _plots(metrics, results, *(["training loss (rectified flow, per image)"]
                                   if _train_mode(manifest) == "diffusion" else [])),
    ]
    body += _trace_lengths(results)
    body += image_section(run_dir / "eval", results, samples)  # an image student's eval
    conversations = [s for s in samples if s.get("kind") != "image"]
    if conversations:
        body += [Html("<h2>Sample conversations</h2>"),
                 _samples(conversations, eval_cfg.get("samples", 12))]
    body += judge_section(run_dir / "judge")  # the judged evaluation, when the recipe asks for it
    body += _identity(run_dir / "identity" / "identity.json")
    body += watermark_section(run_dir / "watermark" / "watermark.json")
    body += [
        Html("<h2>Where the data came from</h2>"),
        _provenance(run_dir),
        Html("<h2>Timings</h2>"),
        _timings(manifest),
    ]
    return page(f"Seed report: {manifest.get('name', '')}", body)


def write_report(run_dir: str | Path) -> Path:
    """Write `report.html` into the run directory and return its path."""
    run_dir = Path(run_dir)
    if not (run_dir / "manifest.json").is_file():
        raise UserError(f"{run_dir}: not a run directory (no manifest.json); give runs/<name>")
    path = run_dir / "report.html"
    write_text_atomic(path, render_report(run_dir))
    return path
