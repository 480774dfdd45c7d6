"""`kill -9` at random moments, several times: the rerun ends with exactly the right records.

The fault server logs every request it receives. Before each run we note which prompts already have
records and which answers sit in the cache; the run (killed or not) must never send those again.
"""

from __future__ import annotations

import json
import random
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

from helpers.cli import run_cli, start_cli
from helpers.recipes import teacher_recipe, write_prompts, write_recipe
from helpers.servers import fault_server
from seed.records import read_records

N, SAMPLES = 300, 2


def _wait_for_requests(server, count: int, proc: subprocess.Popen[bytes]) -> None:
    """Until the server has seen `count` requests in all, or the run has ended."""
    deadline = time.monotonic() + 60
    while len(server.requests()) < count and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)


def _answered(out: Path) -> set[str]:
    path = out / "train.jsonl"
    return {r.messages[0].content for r in read_records(path)} if path.exists() else set()


def _cached(out: Path) -> set[str]:
    path = out / "cache.sqlite"
    if not path.exists():
        return set()
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        rows = db.execute("SELECT value FROM answers").fetchall()
    except sqlite3.OperationalError:  # killed before the table was created
        return set()
    finally:
        db.close()
    return {json.loads(v)["completions"][0]["text"].split(": ", 1)[1] for (v,) in rows}


def test_kill_9_at_random_points_then_rerun_gives_exact_records(tmp_path: Path) -> None:
    rng = random.Random(1234)
    with fault_server(tmp_path, latency=0.1) as server:
        prompts = write_prompts(tmp_path / "p.jsonl", N)
        recipe = write_recipe(tmp_path / "r.toml", teacher_recipe(server.base_url, prompts),
                              {"generate.samples": SAMPLES, "generate.limits.concurrency": 8})
        out = tmp_path / "out"
        kills, midway = 0, []
        for attempt in range(6):
            answered_before, cached_before = _answered(out), _cached(out)
            seen_before = len(server.requests())
            proc = start_cli("generate", recipe, "--out", out, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE)
            final = attempt == 5
            if not final:
                # Kill at a random point of the request stream, not of the clock: start-up
                # time varies a lot on a loaded machine.
                _wait_for_requests(server, seen_before + rng.randint(5, 40), proc)
                time.sleep(rng.uniform(0.0, 0.3))
            if not final and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                kills += 1
            proc.wait(timeout=120)
            if not final:
                midway.append(len(_answered(out)))
            if final:
                assert proc.returncode == 0, proc.stderr.read().decode()
            asked = [r["user"] for r in server.requests()[seen_before:]]
            assert not set(asked) & answered_before, "a prompt with records was requested again"
            assert not set(asked) & cached_before, "a cached answer was requested again"
    assert kills >= 3
    assert sum(0 < n < N for n in set(midway)) >= 2, midway  # killed mid-job, not only at the ends
    raw = (out / "train.jsonl").read_bytes()
    assert raw.endswith(b"\n")
    records = list(read_records(out / "train.jsonl"))
    assert len(records) == N * SAMPLES
    per_prompt: dict[str, list[str]] = {}
    for r in records:
        per_prompt.setdefault(r.messages[0].content, []).append(r.messages[1].content)
    assert len(per_prompt) == N
    for prompt, answers in per_prompt.items():
        assert sorted(answers) == [f"echo[{i}]: {prompt}" for i in range(SAMPLES)]


def test_a_prompt_write_torn_after_a_whole_line_is_written_whole_on_the_rerun(tmp_path: Path):
    # A kill can stop a prompt's one write() between pages: its first sample without the second.
    # The rerun cuts that sample off and writes the prompt again from the cache, for nothing.
    with fault_server(tmp_path) as server:
        prompts = write_prompts(tmp_path / "p.jsonl", 4)
        recipe = write_recipe(tmp_path / "r.toml", teacher_recipe(server.base_url, prompts),
                              {"generate.samples": SAMPLES})
        out = tmp_path / "out"
        assert run_cli("generate", recipe, "--out", out).returncode == 0
        path = out / "train.jsonl"
        whole = path.read_bytes()
        lines = whole.splitlines(keepends=True)
        assert all(json.loads(line)["meta"]["prompt_records"] == SAMPLES for line in lines)
        path.write_bytes(b"".join(lines[:-1]))
        seen = len(server.requests())
        proc = run_cli("generate", recipe, "--out", out)
        assert proc.returncode == 0, proc.stderr
        assert len(server.requests()) == seen
        assert sorted(path.read_bytes().splitlines()) == sorted(whole.splitlines())
