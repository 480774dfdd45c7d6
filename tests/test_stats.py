"""The statistics on small hand-made annotation sets whose right answers can be worked out."""

import json
import math

import numpy as np
import pytest

from helpers.cli import run_cli
from seed.evaluate.annotations import AnnotationSet, Comparison, combine_verdicts, load_annotations
from seed.evaluate.stats import (
    bradley_terry,
    bradley_terry_ci,
    category_win_rates,
    first_position_rate,
    instruction_difficulty,
    lc_win_rate,
    longer_wins_rate,
    order_flip_rate,
    summarize,
    win_rate,
)


def judgment(i: int, verdicts: list, category: str = "writing", out_len: int = 10) -> dict:
    return {"id": f"q{i}", "instruction": f"question {i}", "category": category,
            "model": "student", "baseline": "teacher", "output": "s" * out_len,
            "baseline_output": "t" * 10, "verdicts": verdicts, "reasons": ["r1", "r2"],
            "judge": "judge-model"}


def test_disagreeing_orders_count_as_a_tie():
    assert combine_verdicts(2, 1) == 1.0
    assert combine_verdicts(-1, -2) == 0.0
    assert combine_verdicts(1, -1) == 0.5
    assert combine_verdicts(1, 0) == 0.5
    assert combine_verdicts(0, 0) == 0.5
    assert combine_verdicts(None, 1) is None


def test_seed_judgments_file(tmp_path):
    lines = [judgment(0, [2, 1]), judgment(1, [1, -1]), judgment(2, [-2, -2], "math"),
             judgment(3, [None, 1]), judgment(4, [1, 1], "math")]
    path = tmp_path / "student-vs-teacher.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines))
    s = load_annotations(path)
    assert (s.name, s.model, s.baseline) == ("student-vs-teacher", "student", "teacher")
    assert s.unparseable == 1
    assert [c.preference for c in s.rows] == [1.0, 0.5, 0.0, 1.0]
    assert win_rate(s) == pytest.approx(62.5)
    assert category_win_rates(s) == {"math": {"n": 2, "win_rate": 50.0},
                                     "writing": {"n": 2, "win_rate": 75.0}}
    assert order_flip_rate(s) == pytest.approx(25.0)
    # decisive verdicts: q0 (model first, wins: first), q0 (model second, wins: second),
    # q1 first wins, q1 (-1 with model second: first wins), q2 second, q2 first, q4 first, q4 second
    assert first_position_rate(s) == pytest.approx(100 * 5 / 8)


def test_torn_last_line_is_skipped_and_a_bad_middle_line_is_an_error(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text(json.dumps(judgment(0, [1, 1])) + "\n" + '{"id": "q1", "instr')
    assert len(load_annotations(path).rows) == 1
    path.write_text('{"id": 1}\n' + json.dumps(judgment(0, [1, 1])) + "\n")
    with pytest.raises(Exception, match=r"j\.jsonl:1: not a Seed judgment line"):
        load_annotations(path)


def make_set(prefs: list[float], out_lens: list[int] | None = None, model: str = "m",
             instructions: list[str] | None = None) -> AnnotationSet:
    out_lens = out_lens or [10] * len(prefs)
    instructions = instructions or [f"i{k}" for k in range(len(prefs))]
    rows = [Comparison(instruction=q, output="x" * n, baseline_output="y" * 10, preference=p)
            for q, p, n in zip(instructions, prefs, out_lens, strict=True)]
    return AnnotationSet(model, model, "base", rows)


def test_lc_equals_raw_win_rate_when_lengths_are_equal():
    s = make_set([1, 1, 0, 0.5, 1, 0, 1, 1])
    assert lc_win_rate(s) == pytest.approx(win_rate(s), abs=0.05)


def test_lc_removes_a_pure_length_effect():
    # the judge picks whichever answer is longer: at equal length the model should be at ~50%
    rng = np.random.default_rng(0)
    lens = rng.integers(2, 19, size=400)
    prefs = [1.0 if n > 10 else 0.0 if n < 10 else 0.5 for n in lens]
    s = make_set(prefs, list(lens))
    lens_long = [n + 6 for n in lens]
    s_long = make_set([1.0 if n > 10 else 0.0 if n < 10 else 0.5 for n in lens_long], lens_long)
    assert win_rate(s_long) - win_rate(s) > 25
    assert abs(lc_win_rate(s_long) - lc_win_rate(s)) < 0.3 * (win_rate(s_long) - win_rate(s))


def test_instruction_difficulty_ranks_hard_instructions_low():
    qs = [f"i{k}" for k in range(6)]
    strong = make_set([1, 1, 1, 1, 0, 0.5], model="strong", instructions=qs)
    weak = make_set([1, 1, 0, 0, 0, 0], model="weak", instructions=qs)
    d = instruction_difficulty([strong, weak])
    assert d["i0"] > d["i2"] > d["i4"]
    assert instruction_difficulty([strong]) == {}


def test_bradley_terry_recovers_a_known_odds_ratio():
    # a beats base 3 times in 4: an odds of 3, i.e. 400 * log10(3) = 190.8 Elo points
    battles = [("a", "base", 1.0)] * 30 + [("a", "base", 0.0)] * 10
    battles += [("b", "base", 0.5)] * 20
    bt = bradley_terry(battles, anchor="base")
    assert bt["base"] == 1000.0
    assert bt["a"] == pytest.approx(1000 + 400 * math.log10(3), abs=1.0)
    assert bt["b"] == pytest.approx(1000.0, abs=1.0)
    ci = bradley_terry_ci(battles, anchor="base", rounds=50)
    assert ci["a"][0] < bt["a"] < ci["a"][1]
    assert ci["base"] == (1000.0, 1000.0)


def test_longer_wins_rate_counts_decided_pairs_of_unequal_length():
    s = make_set([1.0, 1.0, 0.0, 0.5, 0.0], out_lens=[20, 5, 5, 30, 10])
    # 20>10 won (longer wins), 5<10 won (shorter wins), 5<10 lost (longer wins);
    # the tie and the equal-length pair are left out
    assert longer_wins_rate(s) == pytest.approx(100 * 2 / 3)


def test_summarize_puts_the_baseline_at_1000_and_orders_models():
    good, bad = make_set([1, 1, 1, 0] * 5, model="good"), make_set([0, 0, 0, 1] * 5, model="bad")
    rows = {r["name"]: r for r in summarize([good, bad], bootstrap_rounds=200)}
    assert rows["good"]["win_rate"] == 75.0 and rows["bad"]["win_rate"] == 25.0
    assert rows["good"]["bt_score"] > 1000 > rows["bad"]["bt_score"]
    assert rows["good"]["ci_low"] < 75.0 < rows["good"]["ci_high"]
    low, high = rows["good"]["bt_ci"]
    assert low < rows["good"]["bt_score"] < high


@pytest.mark.parametrize("content, needle", [
    (None, "no such annotation file"),
    ("[{\"instruction\": \"x\"}]", "lacks one of instruction, output_1, output_2, preference"),
    ("[{\"instruction\": ", "not valid JSON"),
])
def test_bad_annotation_file_is_one_line_exit_2(tmp_path, content, needle):
    path = tmp_path / "ann.json"
    if content is not None:
        path.write_text(content)
    proc = run_cli("stats", str(path), "--json")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_seed_file_through_the_cli(tmp_path):
    path = tmp_path / "run1.jsonl"
    path.write_text("".join(json.dumps(judgment(i, v)) + "\n"
                            for i, v in enumerate([[1, 1], [1, 1], [-1, 1], [-2, -1]])))
    proc = run_cli("stats", str(path), "--json")
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads(proc.stdout)
    assert (row["name"], row["n"], row["win_rate"], row["avg_length"]) == ("run1", 4, 62.5, 10.0)


def test_a_file_of_unparseable_judgments_gives_nulls_not_nan(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text(json.dumps(judgment(0, [None, None])) + "\n")
    for args in ((str(path), "--json"), (str(path),)):
        proc = run_cli("stats", *args)
        assert proc.returncode == 0, proc.stderr
    [row] = json.loads(run_cli("stats", str(path), "--json").stdout)
    assert row == {"name": "broken", "n": 0, "win_rate": None, "lc_win_rate": None,
                   "ci_low": None, "ci_high": None, "avg_length": None}
    assert "broken: 1 judgments unparseable (left out)" in run_cli("stats", str(path)).stdout
