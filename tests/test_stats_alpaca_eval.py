"""Golden tests: `seed stats` on AlpacaEval 2.0's real annotations against its leaderboard.

Reads ../shared/data/alpaca_eval/ in place (see its README). Instruction difficulty for the
length-controlled win rate is fitted from these twelve files alone, not AlpacaEval's own table.
"""

import csv
import json
from pathlib import Path

import pytest

from helpers.cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "alpaca_eval"

pytestmark = pytest.mark.skipif(not DATA.is_dir(), reason=f"reference data missing: {DATA}")


@pytest.fixture(scope="module")
def stats() -> dict[str, dict]:
    files = sorted(str(p) for p in (DATA / "annotations").glob("*.json.gz"))
    proc = run_cli("stats", *files, "--json")
    assert proc.returncode == 0, proc.stderr
    rows = json.loads(proc.stdout)
    assert [r["name"] for r in rows] == [Path(f).name.removesuffix(".json.gz") for f in files]
    return {r["name"]: r for r in rows}


@pytest.fixture(scope="module")
def leaderboard() -> dict[str, dict[str, float]]:
    rows = {}
    with (DATA / "weighted_alpaca_eval_gpt4_turbo_leaderboard.csv").open() as f:
        for r in csv.DictReader(f):
            if "/results/" in r["samples"]:
                folder = r["samples"].split("/results/")[1].split("/")[0]
                rows[folder] = {k: float(r[k]) for k in
                                ("win_rate", "length_controlled_winrate", "avg_length")}
    return rows


def test_json_rows_have_the_documented_keys(stats):
    for row in stats.values():
        assert set(row) == {"name", "n", "win_rate", "lc_win_rate", "ci_low", "ci_high",
                            "avg_length"}
    assert stats["alpaca-7b"]["n"] == 805
    assert stats["alpaca-7b_verbose"]["n"] == 802


def test_raw_win_rate_equals_the_leaderboard(stats, leaderboard):
    present = [m for m in stats if m in leaderboard]
    assert len(present) == 6
    for m in present:
        assert stats[m]["win_rate"] == pytest.approx(leaderboard[m]["win_rate"], abs=0.01), m
        assert stats[m]["avg_length"] == pytest.approx(leaderboard[m]["avg_length"], abs=1), m
    assert stats["alpaca-7b"]["win_rate"] == pytest.approx(2.59, abs=0.01)
    assert stats["NullModel"]["win_rate"] == pytest.approx(76.92, abs=0.01)


def test_length_controlled_win_rate_is_within_two_points_of_the_leaderboard(stats, leaderboard):
    # the baseline against itself is 50 by construction; judge the five real comparisons
    present = [m for m in stats if m in leaderboard and m != "gpt4_1106_preview"]
    assert len(present) == 5
    lc_err = [abs(stats[m]["lc_win_rate"] - leaderboard[m]["length_controlled_winrate"])
              for m in present]
    raw_err = [abs(stats[m]["win_rate"] - leaderboard[m]["length_controlled_winrate"])
               for m in present]
    assert sum(lc_err) / len(lc_err) < 2.0, lc_err
    assert sum(raw_err) / len(raw_err) > 5.0, raw_err
    assert stats["gpt4_1106_preview"]["lc_win_rate"] == 50.0


@pytest.mark.parametrize("model", ["alpaca-7b", "gpt-3.5-turbo-1106"])
def test_concise_verbose_spread_is_smaller_under_length_control(stats, model):
    def spread(key: str) -> float:
        concise, verbose = stats[f"{model}_concise"][key], stats[f"{model}_verbose"][key]
        return abs(verbose - concise) / stats[model][key]

    assert stats[f"{model}_verbose"]["avg_length"] > stats[f"{model}_concise"]["avg_length"]
    assert spread("lc_win_rate") < spread("win_rate")


def test_bootstrap_interval_covers_the_estimate(stats):
    for name, row in stats.items():
        assert row["ci_low"] <= row["win_rate"] <= row["ci_high"], name
    assert stats["claude-2.1"]["ci_high"] - stats["claude-2.1"]["ci_low"] > 2.0


def test_bootstrap_interval_shrinks_as_the_sample_grows(tmp_path):
    from seed.evaluate.annotations import load_annotations
    from seed.evaluate.stats import bootstrap_ci, preferences

    prefs = preferences(load_annotations(DATA / "annotations" / "claude-2.1.json.gz"))
    widths = []
    for n in (100, 400, 805):
        low, high = bootstrap_ci(prefs[:n])
        assert low <= 100 * prefs[:n].mean() <= high
        widths.append(high - low)
    assert widths[0] > widths[1] > widths[2]
    # ~1/sqrt(n): a sample 8x larger gives an interval about 2.8x narrower
    assert 2.0 < widths[0] / widths[2] < 4.0


def test_table_output_names_every_file():
    files = [DATA / "annotations" / f"{m}.json.gz" for m in ("alpaca-7b", "claude-2.1")]
    proc = run_cli("stats", *map(str, files))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].split()[:3] == ["name", "n", "win%"]
    assert lines[1].split()[:3] == ["alpaca-7b", "805", "2.6"]
    assert lines[2].split()[:3] == ["claude-2.1", "805", "15.7"]
    assert "claude-2.1 by category: helpful_base 12.9 (n=129)," in proc.stdout
