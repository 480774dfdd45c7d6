"""`seed generate` against a real model server: `transformers serve` with a tiny local model."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from helpers.cli import run_cli
from helpers.models import tiny_model
from helpers.recipes import teacher_recipe, write_prompts, write_recipe
from helpers.servers import free_port, wait_until_up
from seed.records import read_records

CLI = shutil.which("transformers", path=str(Path(sys.executable).parent))


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    if CLI is None:
        pytest.skip("the `transformers` command is not installed in this environment")
    tmp = tmp_path_factory.mktemp("tserve")
    model = tiny_model(tmp / "tiny")
    (tmp / "hub").mkdir()  # /v1/models needs an existing HF_HUB_CACHE
    port = free_port()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp / "hub")}
    proc = subprocess.Popen([CLI, "serve", str(model), "--port", str(port), "--device", "cpu"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://localhost:{port}/v1"
    try:
        wait_until_up(proc, f"http://localhost:{port}/health", 120, "transformers serve")
        yield base, model
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_records_from_transformers_serve(served: tuple[str, Path], tmp_path: Path) -> None:
    base, model = served
    prompts = write_prompts(tmp_path / "p.jsonl", 4)
    recipe = write_recipe(tmp_path / "r.toml", teacher_recipe(base, prompts, model=str(model)), {
        "generate.samples": 2, "generate.params": {"max_tokens": 6, "temperature": 1.0},
        "generate.filters": {"min_answer_chars": 0, "drop_refusals": False},
        "generate.limits.concurrency": 2})
    res = run_cli("generate", str(recipe), "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    recs = list(read_records(tmp_path / "out" / "train.jsonl"))
    # transformers serve ignores `n`: the engine asked again for the second sample.
    assert len(recs) == 8
    assert sorted({r.messages[0].content for r in recs}) == [f"question {i}" for i in range(4)]
    t = recs[0].provenance.teacher
    assert (t.route, t.host, t.model_requested) == ("local", "localhost", str(model))
    assert t.model_returned.startswith(str(model))
    assert {r.meta["finish_reason"] for r in recs} <= {"stop", "length"}
    summary = (tmp_path / "out" / "summary.json").read_text()
    assert '"completion_tokens": ' in summary and '"completion_tokens": 0' not in summary


def test_a_model_the_server_does_not_have_is_one_clear_line(served: tuple[str, Path],
                                                            tmp_path: Path) -> None:
    base, _ = served
    prompts = write_prompts(tmp_path / "p.jsonl", 2)
    res = run_cli("generate", write_recipe(tmp_path / "r.toml", teacher_recipe(
        base, prompts, model="no-such-model")),
                  "--out", str(tmp_path / "out"))
    assert res.returncode == 2
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "refused the request (HTTP 400" in lines[0]
    assert "no-such-model" in lines[0]
