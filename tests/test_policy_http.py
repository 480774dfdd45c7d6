"""Records written by `seed generate` from a real local OpenAI-compatible server, then checked."""

from __future__ import annotations

import json
from pathlib import Path

from helpers.cli import cli_env, run_cli
from helpers.recipes import teacher_recipe, write_prompts, write_recipe
from helpers.servers import fault_server


def generate(tmp_path: Path, model: str, overrides: dict | None = None) -> Path:
    with fault_server(tmp_path, model=model) as s:
        prompts = write_prompts(tmp_path / "p.jsonl", 6)
        recipe = write_recipe(tmp_path / "r.toml", teacher_recipe(s.base_url, prompts, model=model),
                              overrides)
        res = run_cli("generate", str(recipe), "--out", str(tmp_path / "out"))
        assert res.returncode == 0, res.stderr
    return tmp_path / "out" / "train.jsonl"


def test_openai_records_are_blocked_for_distribution_and_pass_for_an_internal_classifier(
        tmp_path: Path) -> None:
    data = generate(tmp_path, "gpt-4o-mini", {"generate.teacher.route": "direct"})
    distributed = run_cli("check", str(data), "--distribute", "--json")
    assert distributed.returncode == 1
    report = json.loads(distributed.stdout)
    [f] = report["findings"]
    assert f["teacher"] == "direct:gpt-4o-mini-2024 @ 127.0.0.1"
    assert f["entry"] == "openai-api" and f["records"] == 6 and f["verdict"] == "block"
    assert f["source"] == "file:p.jsonl (CC0-1.0)"
    classifier = run_cli("check", str(data), "--internal", "--classifier", "--json")
    assert classifier.returncode == 0
    assert json.loads(classifier.stdout)["verdict"] == "allow"
    internal_chat = run_cli("check", str(data), "--internal", "--json")
    assert internal_chat.returncode == 0
    assert json.loads(internal_chat.stdout)["verdict"] == "warn"


def test_a_local_llama_31_server_needs_the_llama_prefix(tmp_path: Path) -> None:
    data = generate(tmp_path, "meta-llama/Llama-3.1-8B-Instruct")
    unnamed = run_cli("check", str(data), "--student-name", "tiny-chat", env=cli_env(COLUMNS="240"))
    assert unnamed.returncode == 1
    assert "The student's name must start with 'Llama' (got 'tiny-chat')" in unnamed.stdout
    named = run_cli("check", str(data), "--student-name", "Llama-tiny-chat", "--json")
    assert named.returncode == 0
    report = json.loads(named.stdout)
    assert report["findings"][0]["teacher"].startswith("local:meta-llama/Llama-3.1-8B-Instruct")
    assert "Display \"Built with Llama\" in the model's documentation." in report["obligations"]
