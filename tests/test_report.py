"""The run report and its HTML pieces, from run directories written by hand."""

import json
from pathlib import Path

from seed.evaluate.html import CSS, Html, page, pre, table
from seed.evaluate.judge_report import write_judge_report
from seed.evaluate.report import render_report


def test_a_table_escapes_every_header_and_plain_cell_and_keeps_html_cells():
    html = table(["the judge's <reasons>"], [["a < b & c", Html("<b>bold</b>"), 3]])
    assert "<th>the judge&#x27;s &lt;reasons&gt;</th>" in html
    assert "<td>a &lt; b &amp; c</td><td><b>bold</b></td><td>3</td>" in html


def test_preformatted_text_is_escaped_and_cut_at_its_limit():
    assert pre("<i>" + "x" * 10, limit=5) == "<pre>&lt;i&gt;xx …</pre>"
    assert pre("two\nlines") == "<pre>two\nlines</pre>"


def test_a_page_escapes_plain_pieces_and_keeps_html_ones():
    html = page("a <title>", [Html("<h1>head</h1>"), "<script>"])
    assert "<title>a &lt;title&gt;</title>" in html and f"<style>{CSS}</style>" in html
    assert "<main><h1>head</h1>&lt;script&gt;</main>" in html


def hand_run(tmp_path: Path) -> Path:
    run = tmp_path / "run"
    (run / "train").mkdir(parents=True)
    (run / "eval").mkdir()
    (run / "manifest.json").write_text(json.dumps({
        "name": "demo <x>", "seed": 7, "updated_at": "2026-12-01T00:00:00",
        "config": {"eval": {"samples": 2}},
        "stages": {"train": {"status": "done", "seconds": 30.0,
                             "info": {"params": 512000, "steps": 100, "tokens_per_s": 43000}},
                   "eval": {"status": "done", "seconds": 4.0}}}))
    # a torn last metrics line, as when the report is drawn while training was killed
    (run / "train" / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 3.0 - s / 50}) + "\n" for s in range(0, 100, 10))
        + '{"step": 100, "lo')
    (run / "eval" / "results.json").write_text(
        json.dumps({"accuracy": 0.75, "baseline_accuracy": 0.05, "n": 4}))
    (run / "eval" / "samples.jsonl").write_text("".join(
        json.dumps({"prompt": f"What is {i} + <{i}>?", "teacher": str(2 * i),
                    "student": str(2 * i if i % 2 else i), "correct": bool(i % 2)}) + "\n"
        for i in range(4)))
    return run


def test_the_run_report_shows_cards_plots_and_the_misses_first(tmp_path):
    html = render_report(hand_run(tmp_path))
    assert "<h1>Seed report: demo &lt;x&gt;</h1>" in html
    assert "<b>75.0%</b><span>held-out accuracy (n=4)</span>" in html
    assert "<b>5.0%</b><span>untrained student</span>" in html
    assert "<b>0.51M</b>" in html and "<b>34 s</b><span>total stage time</span>" in html
    assert html.count("<svg") == 2  # loss curve, accuracy before and after
    samples = html.split("Sample conversations", 1)[1]
    # two samples shown: one miss and one hit, the miss first
    assert samples.index("What is 0 + &lt;0&gt;?") < samples.index("What is 1 + &lt;1&gt;?")
    assert "What is 2 +" not in samples.split("Where the data came from")[0]
    assert "Judged by" not in html and "No training records." in html


def test_both_reports_share_one_page_shell(tmp_path):
    run = render_report(hand_run(tmp_path))
    (tmp_path / "judge").mkdir()
    judge = write_judge_report(tmp_path / "judge").read_text()
    head = run[:run.index("<title>")]
    assert judge.startswith(head) and f"<style>{CSS}</style>" in judge
