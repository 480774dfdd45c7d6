"""Load: 100 concurrent clients against a real server; nothing fails except intended 429s.

The suite runs it for 5 seconds with a small queue so back-pressure is exercised; the 30-second
figure is `benchmarks/serve_load.py` (numbers in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from helpers.models import tiny_model
from helpers.serve import load_test, running_server


@pytest.mark.slow
def test_hundred_clients_get_answers_or_429(tmp_path):
    model = tiny_model(tmp_path / "tiny")
    with running_server(str(model), "--max-running", "32", "--max-queue", "32") as url:
        outcomes = asyncio.run(load_test(url, clients=100, seconds=5))
        metrics = httpx.get(url + "/metrics").text
    assert set(outcomes) <= {"200", "429"}, outcomes
    assert outcomes.get("200", 0) >= 32 and outcomes.get("429", 0) >= 1
    assert "seed_queue_depth 0" in metrics and "seed_running_sequences 0" in metrics
