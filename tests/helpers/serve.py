"""`seed serve` as a user runs it, for the serving tests: a real server on a free port.

The server is `python -m seed serve` in a subprocess (see helpers.cli), stopped when the test is
done; a tiny model to serve comes from helpers.models. Also here: parsing server-sent events and a
load test of concurrent users. What a response should contain is for each test to assert.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from helpers.cli import cli_env, start_cli
from helpers.servers import free_port, wait_until_up


def seed_env() -> dict[str, str]:
    # One intra-op thread: on a shared 2-core machine, OpenMP threads spinning against other
    # processes make a tiny model ~30x slower per step.
    return cli_env(TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")


@contextmanager
def serving(*args: str | Path, timeout: float = 90.0, extra_env: dict[str, str] | None = None
            ) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start `seed serve ARGS --port P`; yield its base URL and process once /health answers.

    Stopped afterwards (terminate, then kill after 30 s) unless the test already ended it.
    """
    port = free_port()
    proc = start_cli("serve", *args, "--port", str(port), env={**seed_env(), **(extra_env or {})},
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(proc, url + "/health", timeout, "seed serve")
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def running_server(*args: str | Path, timeout: float = 90.0,
                   extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """Start `seed serve ARGS --port P` and yield its base URL; stop it afterwards."""
    with serving(*args, timeout=timeout, extra_env=extra_env) as (url, _):
        yield url


def sse_events(lines: Iterator[str]) -> Iterator[dict | str]:
    """Parse server-sent events: each `data:` payload as JSON, or the string "[DONE]"."""
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: "):]
            yield data if data == "[DONE]" else json.loads(data)


async def load_test(url: str, *, clients: int, seconds: float, key: str | None = None,
                    max_tokens: int = 16) -> dict[str, int]:
    """`clients` concurrent users, each sending chats back to back for `seconds`.

    Half stream, half do not; a 429 makes that user wait its Retry-After. Returns counts by
    outcome: "200", "429", any other status, or an exception's type name.
    """
    import asyncio
    import collections

    outcomes: collections.Counter[str] = collections.Counter()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
    deadline = time.monotonic() + seconds

    async def user(i: int, client: httpx.AsyncClient) -> None:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            body = {"model": "tiny", "max_tokens": max_tokens, "temperature": 0.7,
                    "messages": [{"role": "user", "content": f"user {i} message {n} " * (i % 5)
                                  + "hello"}]}
            try:
                if i % 2:
                    body["stream"] = True
                    async with client.stream("POST", url + "/v1/chat/completions", json=body,
                                             headers=headers) as r:
                        lines = [line async for line in r.aiter_lines() if line]
                        ok = r.status_code != 200 or lines[-1] == "data: [DONE]"
                        outcomes[str(r.status_code) if ok else "truncated-stream"] += 1
                        retry = r.headers.get("retry-after")
                else:
                    r = await client.post(url + "/v1/chat/completions", json=body, headers=headers)
                    ok = r.status_code != 200 or r.json()["choices"][0]["finish_reason"]
                    outcomes[str(r.status_code) if ok else "bad-body"] += 1
                    retry = r.headers.get("retry-after")
                if r.status_code == 429:
                    await asyncio.sleep(float(retry or 1))
            except Exception as e:  # counted, not raised: the test asserts there are none
                outcomes[type(e).__name__] += 1

    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await asyncio.gather(*[user(i, client) for i in range(clients)])
    return dict(outcomes)
