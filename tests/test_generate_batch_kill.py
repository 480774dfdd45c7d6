"""`kill -9` of `seed generate --batch` while it submits and while it polls; then a rerun.

The batch server (helpers/batch_server.py) outlives the killed client and counts every custom_id
submitted in a batch, every file uploaded and every online request. Whatever the kill point, the
rerun must end with every prompt answered exactly as the server answers it, each custom_id
submitted once, each shard's file uploaded once, and nothing asked online.
"""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers.batch_server import BatchServer, batch_server
from helpers.cli import run_cli, start_cli
from helpers.recipes import teacher_recipe, write_prompts, write_recipe
from seed.records import read_records


def _recipe(tmp: Path, server: BatchServer, n: int, per_job: int) -> Path:
    prompts = write_prompts(tmp / "p.jsonl", n)
    return write_recipe(tmp / "r.toml", teacher_recipe(server.base_url, prompts,
                                                       model="batch-model"),
                        {"generate.batch.poll_interval": 0.05,
                         "generate.batch.max_requests": per_job, "generate.samples": 2})


def _kill_when(recipe: Path, out: Path, ready: Callable[[], bool]) -> bool:
    """Start the run and kill -9 it once `ready()`; False when it ended first."""
    proc = start_cli("generate", recipe, "--out", out, "--batch", stdout=subprocess.DEVNULL,
                     stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not ready() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    alive = proc.poll() is None
    if alive:
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    return alive


def _assert_exact(out: Path, n: int, counts: dict[str, Any], jobs: int) -> None:
    per_prompt: dict[str, list[str]] = {}
    for r in read_records(out / "train.jsonl"):
        assert r.provenance.teacher is not None and r.provenance.teacher.api == "batch"
        per_prompt.setdefault(r.messages[0].content, []).append(r.messages[1].content)
    assert sorted(per_prompt) == sorted(f"question {i}" for i in range(n))
    for prompt, answers in per_prompt.items():
        assert sorted(answers) == [f"echo[0]: {prompt}", f"echo[1]: {prompt}"]
    assert len(counts["submitted"]) == n and set(counts["submitted"].values()) == {1}
    assert set(counts["uploads"].values()) == {1} and len(counts["uploads"]) == jobs
    assert len(counts["batches"]) == jobs
    assert counts["online"] == {}


@pytest.mark.slow  # three runs of the command line: ~25 s on a loaded machine
def test_a_kill_before_an_id_reaches_the_ledger_finds_the_file_and_the_job(
        tmp_path: Path) -> None:
    with batch_server() as server:
        recipe = _recipe(tmp_path, server, 6, per_job=6)
        out = tmp_path / "out"
        # The server has stored the file but not yet answered with its id: killed there.
        server.config(upload_delay=30)
        assert _kill_when(recipe, out, lambda: bool(server.counts()["uploads"]))
        # Rerun: the file is found by its name; the job is created, not yet answered: killed.
        server.config(upload_delay=0, create_delay=30)
        assert _kill_when(recipe, out, lambda: bool(server.counts()["batches"]))
        # Rerun: the job is found by its metadata, polled and read.
        server.config(create_delay=0)
        proc = run_cli("generate", recipe, "--out", out, "--batch")
        assert proc.returncode == 0, proc.stderr
        _assert_exact(out, 6, server.counts(), jobs=1)


@pytest.mark.slow
def test_kill_9_at_random_points_of_submission_and_polling_then_rerun(tmp_path: Path) -> None:
    rng = random.Random(17)
    n, per_job = 30, 4  # 8 jobs
    with batch_server() as server:
        recipe = _recipe(tmp_path, server, n, per_job)
        out = tmp_path / "out"
        # Slow steps, so that kills land inside uploads, creations and polls alike.
        server.config(upload_delay=0.15, create_delay=0.15, slow_polls=1000)
        kills = []
        for _ in range(5):
            c = server.counts()
            start = len(c["uploads"]) + len(c["batches"]) + c["polls"]
            target = start + rng.randint(1, 12)

            def ready(target: int = target) -> bool:
                c = server.counts()
                return len(c["uploads"]) + len(c["batches"]) + c["polls"] >= target

            if _kill_when(recipe, out, ready):
                c = server.counts()
                kills.append((len(c["uploads"]), len(c["batches"]), c["polls"]))
        assert len(kills) == 5, kills
        assert kills[0][1] < 8 < kills[-1][1] + 1, kills  # killed while submitting ...
        assert kills[-1][2] > kills[0][2], kills  # ... and while polling
        assert not (out / "train.jsonl").exists() or not (out / "train.jsonl").read_text()
        server.config(upload_delay=0, create_delay=0, slow_polls=0)
        proc = run_cli("generate", recipe, "--out", out, "--batch")
        assert proc.returncode == 0, proc.stderr
        _assert_exact(out, n, server.counts(), jobs=8)
