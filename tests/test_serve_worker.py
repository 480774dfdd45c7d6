"""`seed serve` runs its model in a second process: what that must guarantee, on a real server.

The engine process is found as the server's child started by multiprocessing's spawn
(`spawn_main` in its command line) and killed with SIGKILL like the kernel's OOM killer would.
Counts come from /metrics, memory from /proc (Linux).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from helpers.cli import run_cli
from helpers.models import tiny_model
from helpers.serve import seed_env, serving, sse_events
from helpers.servers import free_port

pytestmark = pytest.mark.skipif(not Path("/proc/self/status").is_file(),
                                reason="reads processes from /proc (Linux only)")

LONG = {"model": "tiny", "max_tokens": 1900, "temperature": 0,
        "messages": [{"role": "user", "content": "Please explain the idea in simple words."}]}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A model whose replies run to max_tokens, so a long one is still running when a test acts.

    The end token's embedding (tied to the output layer) is zeroed: its logit is always 0 while
    the best of the other ~400 random logits is well above 0, so greedy decoding never ends early.
    """
    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    path = tiny_model(tmp_path_factory.mktemp("worker") / "tiny", context=2048)
    weights = load_file(path / "model.safetensors")
    eos = AutoTokenizer.from_pretrained(str(path)).eos_token_id
    weights["model.embed_tokens.weight"][eos] = 0
    save_file(weights, path / "model.safetensors", metadata={"format": "pt"})
    return path


def engine_pid(server_pid: int) -> int:
    children = Path(f"/proc/{server_pid}/task/{server_pid}/children").read_text().split()
    engines = [int(p) for p in children if b"spawn_main" in cmdline(int(p))]
    assert len(engines) == 1, children
    return engines[0]


def cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def alive(pid: int) -> bool:
    try:  # a zombie has exited: it only waits for its parent to read its status
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def wait_for_metric(url: str, text: str, seconds: float = 20) -> str:
    deadline = time.monotonic() + seconds
    while True:
        metrics = httpx.get(url + "/metrics").text
        if text in metrics or time.monotonic() > deadline:
            return metrics
        time.sleep(0.05)


def test_a_killed_engine_ends_open_requests_with_an_error_and_later_ones_get_503(model_dir):
    with serving(model_dir) as (url, proc):
        async def scenario() -> tuple[httpx.Response, list]:
            async with httpx.AsyncClient(timeout=60) as client:
                plain = asyncio.create_task(client.post(url + "/v1/chat/completions", json=LONG))
                async with client.stream("POST", url + "/v1/chat/completions",
                                         json={**LONG, "stream": True}) as r:
                    lines = r.aiter_lines()
                    async for line in lines:
                        if '"content":"' in line and '"content":""' not in line:
                            break  # the reply has started
                    metrics = await asyncio.to_thread(wait_for_metric, url,
                                                      "seed_running_sequences 2")
                    assert "seed_running_sequences 2" in metrics
                    os.kill(engine_pid(proc.pid), signal.SIGKILL)
                    rest = await sse_events_async(lines)
                return await plain, rest

        plain, rest = asyncio.run(scenario())
        assert rest[-1] == "[DONE]"
        error = rest[-2]["error"]
        assert error["type"] == "server_error"
        assert "engine process stopped (killed by signal 9)" in error["message"]
        assert plain.status_code == 500
        assert "killed by signal 9" in plain.json()["error"]["message"]

        health = httpx.get(url + "/health")
        assert health.status_code == 503
        assert "engine process stopped" in health.json()["error"]["message"]
        after = httpx.post(url + "/v1/chat/completions", json={**LONG, "max_tokens": 4})
        assert after.status_code == 503
        assert after.json()["error"]["code"] == "engine_unavailable"
        assert "restart `seed serve`" in after.json()["error"]["message"]
        assert "seed_running_sequences 0" in httpx.get(url + "/metrics").text
        assert proc.poll() is None  # the API process is still up to say so


async def sse_events_async(lines) -> list:
    return list(sse_events([line async for line in lines]))


@pytest.fixture(scope="module")
def one_slot(model_dir) -> Iterator[str]:
    """A server of one running and one waiting sequence at most: its URL."""
    with serving(model_dir, "--max-running", "1", "--max-queue", "1") as (url, _):
        yield url


def test_a_full_queue_answers_429_with_retry_after_to_the_openai_client(one_slot):
    async def burst() -> list[str]:
        client = openai.AsyncOpenAI(base_url=one_slot + "/v1", api_key="x", max_retries=0)

        async def one() -> str:
            try:
                await client.chat.completions.create(model="tiny", messages=LONG["messages"],
                                                     max_tokens=30, temperature=0)
                return "ok"
            except openai.RateLimitError as e:
                assert e.response.headers["retry-after"] == "1"
                return "429"
        return await asyncio.gather(*[one() for _ in range(6)])

    outcomes = asyncio.run(burst())
    assert "ok" in outcomes and "429" in outcomes


def test_disconnected_clients_free_their_rows_and_their_places_in_the_queue(one_slot):
    # One running and one waiting sequence at most: a third request is a 429 until one leaves.
    url = one_slot
    body = {**LONG, "stream": True}
    with httpx.Client(timeout=60) as a, httpx.Client(timeout=60) as b:
        # Each line iterator is kept: a dropped one closes its connection (a disconnect).
        with a.stream("POST", url + "/v1/chat/completions", json=body) as first:
            first_lines = first.iter_lines()
            next(first_lines)
            with b.stream("POST", url + "/v1/chat/completions", json=body) as second:
                second_lines = second.iter_lines()
                next(second_lines)
                metrics = wait_for_metric(url, "seed_queue_depth 1")
                assert "seed_running_sequences 1" in metrics
                assert "seed_queue_depth 1" in metrics
                third = httpx.post(url + "/v1/chat/completions", json={**LONG,
                                                                      "max_tokens": 4})
                assert third.status_code == 429
        metrics = wait_for_metric(url, "seed_running_sequences 0\n")
    assert "seed_running_sequences 0\n" in metrics and "seed_queue_depth 0" in metrics
    again = httpx.post(url + "/v1/chat/completions", json={**LONG, "max_tokens": 4})
    assert again.status_code == 200
    assert again.json()["usage"]["completion_tokens"] >= 1


def test_the_api_process_holds_no_weights_and_the_engine_dies_with_it(tmp_path):
    # 48M parameters: ~190 MB of float32 weights, far above both processes' other differences.
    big = tiny_model(tmp_path / "big", hidden=1024, layers=6)
    weights = (big / "model.safetensors").stat().st_size
    with serving(big) as (url, proc):
        r = httpx.post(url + "/v1/chat/completions", json={**LONG, "model": "big",
                                                           "max_tokens": 4})
        assert r.status_code == 200
        engine = engine_pid(proc.pid)
        api_rss, engine_rss = rss_bytes(proc.pid), rss_bytes(engine)
        assert engine_rss - api_rss > 0.8 * weights, (api_rss, engine_rss, weights)
        maps = Path(f"/proc/{proc.pid}/maps").read_text()
        assert "model.safetensors" not in maps

        proc.kill()  # SIGKILL: no shutdown code runs in the API process
        proc.wait()
        deadline = time.monotonic() + 30
        while alive(engine) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not alive(engine)


def test_a_model_that_fails_to_load_is_one_clear_line(tmp_path):
    broken = tiny_model(tmp_path / "broken")
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    r = run_cli("serve", broken, "--port", str(free_port()), env=seed_env())
    assert r.returncode == 2
    last = r.stderr.strip().splitlines()[-1]
    assert "the model failed to load" in last and str(broken) in last
    assert "Traceback" not in r.stderr
