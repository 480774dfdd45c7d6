"""The judge section of the report, from judgments and grades written by hand."""

import json
from pathlib import Path

from seed.evaluate.judge_report import judge_section, write_judge_report
from seed.evaluate.judge_run import summarize_judgments


def write_lines(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def pair(i: int, verdicts: list, category: str, output: str, reasons: list[str]) -> dict:
    return {"id": str(i), "instruction": f"question {i} <b>", "category": category,
            "model": "student", "baseline": "teacher", "output": output,
            "baseline_output": "a teacher answer", "verdicts": verdicts, "reasons": reasons,
            "judge": "judge-x"}


def pairwise_dir(tmp_path: Path, self_preference: bool) -> Path:
    write_lines(tmp_path / "judgments.jsonl", [
        pair(0, [-2, -2], "math", "wrong", ["A is wrong", "B is wrong"]),
        pair(1, [-1, -1], "math", "meh", ["A is thin", "B is thin"]),
        pair(2, [1, 1], "writing", "a fine longer answer here", ["A is good", "B is good"]),
        pair(3, [1, -1], "writing", "same", ["first", "first"]),
    ])
    results = {"mode": "pairwise", "student": "student", "baseline": "teacher",
               "judge": "judge-x", "self_preference": self_preference,
               "stats": summarize_judgments(tmp_path, "pairwise")}
    (tmp_path / "judge_results.json").write_text(json.dumps(results))
    return tmp_path


def test_pairwise_section_shows_rates_categories_and_worst_losses(tmp_path):
    html = "".join(judge_section(pairwise_dir(tmp_path, self_preference=False)))
    assert "Judged by judge-x: student vs teacher" in html
    assert "37.5%" in html  # (0 + 0 + 1 + 0.5) / 4
    assert "25.0%" in html  # one of four pairs flipped with the order
    assert html.count("<svg") == 2  # categories, length
    worst = html.split("Where the student lost worst", 1)[1]
    # the much-worse loss comes first, with both reasons; the ties and wins are not listed
    assert worst.index("question 0 &lt;b&gt;") < worst.index("question 1 &lt;b&gt;")
    assert "A is wrong" in worst and "B is wrong" in worst and "question 2" not in worst
    assert "Self-preference" not in html


def test_self_preference_warning(tmp_path):
    html = "".join(judge_section(pairwise_dir(tmp_path, self_preference=True)))
    assert "<b>Self-preference:</b> the judge is the teacher's own model" in html


def test_single_section_compares_mean_scores(tmp_path):
    grades = []
    for model, scores in (("student", [2, 6]), ("teacher", [9, 6])):
        for i, score in enumerate(scores):
            grades.append({"id": str(i), "instruction": f"q{i}", "category": ["math", "writing"][i],
                           "model": model, "output": f"{model} answer {i}", "score": score,
                           "reason": f"{model} reason {i}", "judge": "judge-x"})
    write_lines(tmp_path / "grades.jsonl", grades)
    stats = summarize_judgments(tmp_path, "single")
    assert stats["scores"]["student"]["mean"] == 4.0 and stats["scores"]["teacher"]["mean"] == 7.5
    assert stats["scores"]["student"]["categories"] == {"math": 2.0, "writing": 6.0}
    results = {"mode": "single", "student": "student", "baseline": "teacher", "judge": "judge-x",
               "self_preference": False, "stats": stats}
    (tmp_path / "judge_results.json").write_text(json.dumps(results))
    html = write_judge_report(tmp_path).read_text()
    assert "4.00" in html and "7.50" in html and html.count("<svg") == 1
    worst = html.split("fell furthest below the teacher", 1)[1]
    assert "student reason 0" in worst and "teacher reason 0" in worst and "q1" not in worst


def test_no_judge_results_no_section(tmp_path):
    assert judge_section(tmp_path) == []
