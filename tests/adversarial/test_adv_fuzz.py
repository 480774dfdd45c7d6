"""A fuzzer of request bodies against one real `seed serve`: never a 5xx, and healthy afterwards.

2,000 seeded bodies (helpers.fuzz: wrong field types, nulls, huge and negative numbers, nested
objects, unknown fields, sizes up to ~100 KB, invalid UTF-8, byte-order marks, NUL bytes, lone
surrogates, deep nesting, wrong content types, streaming on and off) go to the chat and
completion routes, 8 at a time. Every answer must be a 2xx or a 4xx in OpenAI's error shape, and
every stream must end with `[DONE]` or an error event. SEED_FUZZ_SEED picks another seed; a
failure prints the seed and the bodies that failed.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from helpers.fuzz import FuzzCase, check_answer, fuzz_cases

SEED = int(os.environ.get("SEED_FUZZ_SEED", "12"))
BODIES = 2000


@pytest.fixture(scope="module")
def served(tiny_server):
    """The shared plain `seed serve` (conftest): the same tiny model at one thread (seed_env's
    OMP_NUM_THREADS=1), so the fuzzer costs no server start of its own."""
    return tiny_server


def send(client: httpx.Client, url: str, case: FuzzCase) -> str | None:
    """What is wrong with the server's answer to `case`, or None."""
    headers = {"Content-Type": case.content_type} if case.content_type else {}
    try:
        with client.stream("POST", url + case.route, content=case.body, headers=headers) as r:
            streamed = r.headers.get("content-type", "").startswith("text/event-stream")
            lines = list(r.iter_lines()) if streamed else None
            text = "" if streamed else r.read().decode("utf-8", "replace")
            problem = check_answer(r.status_code, text, lines)
    except httpx.HTTPError as e:
        return f"{type(e).__name__}: {e}"
    return None if problem is None else f"{problem}: {text[:300] if text else lines}"


def test_no_request_body_gets_a_5xx_and_the_server_stays_healthy(served):
    cases = fuzz_cases(SEED, BODIES, "tiny")
    limits = httpx.Limits(max_connections=16, max_keepalive_connections=16)
    with httpx.Client(timeout=60, limits=limits) as client, ThreadPoolExecutor(8) as pool:
        problems = list(pool.map(lambda case: send(client, served, case), cases))
    failed = [f"{case.shown()}\n  -> {problem}" for case, problem in zip(cases, problems,
                                                                          strict=True) if problem]
    assert not failed, f"seed {SEED}: {len(failed)} of {BODIES} bodies failed:\n" + "\n".join(
        failed[:10])

    assert httpx.get(served + "/health").json() == {"status": "ok"}
    r = httpx.post(served + "/v1/chat/completions", json={
        "model": "tiny", "max_tokens": 4, "messages": [{"role": "user", "content": "Hello!"}]})
    assert r.status_code == 200
    assert r.json()["usage"]["completion_tokens"] >= 1
    metrics = httpx.get(served + "/metrics").text
    assert "seed_queue_depth 0" in metrics and "seed_running_sequences 0" in metrics
