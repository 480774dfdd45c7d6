"""`seed eval MODEL --identity`: the 40 probes, k samples each, on a model directory and on a
suspect's OpenAI-compatible endpoint, through the real command line.

The tiny model's weights are noise and the endpoint (the suite's fault server) echoes each probe
back, so neither claims an identity ("echo: Are you ChatGPT?" asks, it does not claim): what is
pinned down here is that every probe is asked k times, every answer scored, and the rate reported
with its interval. Claims themselves are scored on real model outputs in test_protect_identity.py.
"""

from __future__ import annotations

import json

import pytest

from helpers.cli import assert_one_line_error, run_cli
from helpers.servers import fault_server
from seed.evaluate.report import render_report
from seed.protect.identity import PROBES, wilson_interval

SAMPLES = 2
FLAGS = ("--identity", "--samples", str(SAMPLES), "--max-tokens", "4")


def check_result(result: dict, model: str) -> None:
    n = len(PROBES) * SAMPLES
    assert (result["model"], result["probes"], result["samples"]) == (model, 40, SAMPLES)
    assert (result["n"], result["failed_probes"], result["claims"]) == (n, 0, 0)
    assert (result["ci_low"], result["ci_high"]) == pytest.approx(wilson_interval(0, n))
    assert result["languages"]["en"] == {"n": 14 * SAMPLES, "claims": 0}
    assert result["languages"]["zh"] == {"n": 10 * SAMPLES, "claims": 0}
    assert result["worst"] == [] and result["vendors"] == {}


def test_identity_probes_of_a_model_directory_and_the_report_section(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    res = run_cli("eval", tiny_model_dir, *FLAGS, "--out", run / "identity")
    assert res.returncode == 0, res.stderr
    assert "0 of 80 answers claim another model's identity" in res.stdout
    check_result(json.loads((run / "identity" / "identity.json").read_text()),
                 str(tiny_model_dir))
    (run / "manifest.json").write_text(json.dumps({"name": "demo", "stages": {}}))
    section = render_report(run).split("<h2>Identity</h2>", 1)[1]
    assert section.startswith("<p>0 of 80 answers to 40 who-are-you probes (2 samples each")


def test_identity_probes_of_a_suspect_endpoint(tmp_path):
    with fault_server(tmp_path, model="suspect") as s:
        res = run_cli("eval", s.base_url, *FLAGS, "--served-model", "suspect",
                      "--out", tmp_path / "out")
        asked = s.requests()
    assert res.returncode == 0, res.stderr
    check_result(json.loads((tmp_path / "out" / "identity.json").read_text()), s.base_url)
    assert sorted(r["user"] for r in asked) == sorted(p.text for p in PROBES)  # each once,
    assert {r["n"] for r in asked} == {SAMPLES}  # for k answers (the server 404s another model)


def test_an_endpoint_without_its_model_name_is_one_clear_line(tmp_path):
    res = run_cli("eval", "http://127.0.0.1:9/v1", "--identity")
    assert_one_line_error(res, "--served-model")
