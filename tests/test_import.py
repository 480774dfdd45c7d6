"""`seed import`: instruction datasets become records with the provenance the user declares."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from helpers.cli import cli_env, run_cli
from seed.errors import UserError
from seed.policy.gate import Use, check_file
from seed.policy.importers import import_dataset
from seed.records import read_records

ROOT = Path(__file__).resolve().parents[1]
DPI = ROOT.parent / "shared" / "data" / "provenance"
needs_dpi = pytest.mark.skipif(not (DPI / "Alpaca.json").is_file(),
                               reason="../shared/data/provenance (DPI summaries) is not present")

# Alpaca-format items written for this test (instruction, optional input, output).
ALPACA_ITEMS = [
    {"instruction": "Name three primary colors.", "input": "",
     "output": "Red, blue and yellow."},
    {"instruction": "Rewrite the sentence in the passive voice.",
     "input": "The cat chased the mouse.", "output": "The mouse was chased by the cat."},
    {"instruction": "What is the capital of France?", "input": "", "output": "Paris."},
]


def seed_cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """`seed ARGS` in a terminal wide enough that the check table does not wrap."""
    return run_cli(*args, env=cli_env(COLUMNS="200"))


@pytest.fixture
def alpaca_file(tmp_path: Path) -> Path:
    path = tmp_path / "alpaca_data.json"
    path.write_text(json.dumps(ALPACA_ITEMS))
    return path


@needs_dpi
def test_dpi_alpaca_import_is_openai_generated_and_cc_by_nc(alpaca_file: Path,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "alpaca.jsonl"
    info = import_dataset(alpaca_file, "alpaca", out, dpi=DPI / "Alpaca.json")
    assert info["records"] == 3
    recs = list(read_records(out))
    t, s = recs[0].provenance.teacher, recs[0].provenance.source
    assert t is not None and s is not None
    assert t.route == "declared"
    assert t.model_requested == "OpenAI GPT-3"
    assert s.license == "CC BY-NC 4.0"
    assert s.kind == "import"
    assert recs[1].messages[0].content == ("Rewrite the sentence in the passive voice.\n\n"
                                           "The cat chased the mouse.")
    assert recs[1].messages[1].role == "assistant"


@needs_dpi
def test_seed_check_blocks_imported_alpaca_for_distribution_with_the_reason(
        alpaca_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "alpaca.jsonl"
    imp = seed_cli("import", alpaca_file, "--format", "alpaca", "--out", out,
                   "--dpi", DPI / "Alpaca.json")
    assert imp.returncode == 0, imp.stderr
    assert "3 records (OpenAI GPT-3; license CC BY-NC 4.0)" in imp.stdout
    chk = seed_cli("check", out, "--distribute", "--json")
    assert chk.returncode == 1
    report = json.loads(chk.stdout)
    assert report["verdict"] == "block"
    assert report["blocked_records"] == 3
    [finding] = report["findings"]
    assert finding["entry"] == "openai-api"
    assert any("compete" in r for r in finding["reasons"])
    assert any("NonCommercial" in r for r in finding["reasons"])
    table = seed_cli("check", out, "--distribute")
    assert table.returncode == 1
    assert "block: 3 of 3 records forbidden" in table.stdout
    assert "openai.com/policies" in table.stdout


@needs_dpi
def test_even_a_noncommercial_internal_student_only_gets_a_warning(alpaca_file: Path,
                                                                   tmp_path: Path) -> None:
    out = tmp_path / "alpaca.jsonl"
    import_dataset(alpaca_file, "alpaca", out, dpi=DPI / "Alpaca.json")
    assert check_file(out, Use(distribute=False, commercial=False)).verdict == "warn"
    assert check_file(out, Use(distribute=False, commercial=True)).verdict == "block"


@needs_dpi
def test_dolly_needs_a_dataset_id_and_comes_out_human_written(tmp_path: Path) -> None:
    data = tmp_path / "dolly.jsonl"
    data.write_text(json.dumps({"instruction": "Why is the sky blue?", "context": "",
                                "response": "Rayleigh scattering.", "input": "",
                                "output": "Rayleigh scattering."}) + "\n")
    with pytest.raises(UserError, match="pick one with --dpi-id"):
        import_dataset(data, "alpaca", tmp_path / "o.jsonl", dpi=DPI / "Dolly_15k.json")
    import_dataset(data, "alpaca", tmp_path / "o.jsonl", dpi=DPI / "Dolly_15k.json",
                   dpi_id="dolly-openqa")
    result = check_file(tmp_path / "o.jsonl", Use(distribute=True))
    assert result.verdict == "allow"
    assert result.findings[0].entry == "human-written"
    assert any("CC BY-SA 3.0" in o for o in result.obligations())


def test_declared_teacher_and_license_without_dpi(alpaca_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    import_dataset(alpaca_file, "alpaca", out, teacher="local:meta-llama/Llama-3.1-70B-Instruct",
                   license="Apache-2.0")
    result = check_file(out, Use(distribute=True, student_name="Llama-small"))
    assert result.verdict == "allow"
    assert result.findings[0].entry == "llama-3.1+"
    assert result.notices() == ["Built with Llama"]


def test_an_import_without_provenance_falls_under_unknown(alpaca_file: Path,
                                                          tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    import_dataset(alpaca_file, "alpaca", out)
    assert check_file(out, Use(unknown="warn")).verdict == "warn"
    assert check_file(out, Use(unknown="block")).verdict == "block"
    assert check_file(out, Use()).findings[0].entry == "unknown"


def test_sharegpt_and_messages_formats(tmp_path: Path) -> None:
    share = tmp_path / "share.json"
    share.write_text(json.dumps([{"id": "a1", "conversations": [
        {"from": "system", "value": "Be brief."}, {"from": "human", "value": "Hi"},
        {"from": "gpt", "value": "Hello!"}, {"from": "human", "value": "Bye"},
        {"from": "gpt", "value": "Goodbye."}]}]))
    import_dataset(share, "sharegpt", tmp_path / "s.jsonl", teacher="direct:gpt-4")
    [rec] = read_records(tmp_path / "s.jsonl")
    assert [m.role for m in rec.messages] == ["system", "user", "assistant", "user", "assistant"]
    msgs = tmp_path / "m.jsonl"
    msgs.write_text(json.dumps({"messages": [{"role": "user", "content": "2+2?"},
                                             {"role": "assistant", "content": "4"}]}) + "\n")
    import_dataset(msgs, "messages", tmp_path / "m_out.jsonl", teacher="tasks:reasoning-gym")
    [rec] = read_records(tmp_path / "m_out.jsonl")
    assert rec.chat() == [{"role": "user", "content": "2+2?"},
                          {"role": "assistant", "content": "4"}]


def test_bad_inputs_are_one_line_errors(alpaca_file: Path, tmp_path: Path) -> None:
    with pytest.raises(UserError, match="item 1 is not a sharegpt record"):
        import_dataset(alpaca_file, "sharegpt", tmp_path / "o.jsonl")
    assert not (tmp_path / "o.jsonl").exists()
    with pytest.raises(UserError, match="expected ROUTE:MODEL"):
        import_dataset(alpaca_file, "alpaca", tmp_path / "o.jsonl", teacher="gpt-4o")
    r = seed_cli("import", tmp_path / "missing.json", "--format", "alpaca", "--out",
                 tmp_path / "o.jsonl")
    assert r.returncode == 2
    assert r.stderr.strip().count("\n") == 0
    assert "no such dataset file" in r.stderr
