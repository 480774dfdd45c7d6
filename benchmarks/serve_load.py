"""Load: 100 concurrent clients for 30 seconds against `seed serve`; counts every outcome.

The claim: zero errors besides intended 429s (back-pressure when the queue is full). Each client
sends chats back to back (half streaming); a 429 makes it wait its Retry-After. Uses the same
tiny model and load function as tests/test_serve_load.py, which runs it for 5 seconds.

    PYTHONPATH=src .venv/bin/python benchmarks/serve_load.py
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers.models import tiny_model  # noqa: E402
from helpers.serve import load_test, running_server  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=30)
    ap.add_argument("--max-queue", type=int, default=64)
    args = ap.parse_args()
    model = tiny_model(Path(tempfile.mkdtemp(prefix="seed-load-")) / "tiny")
    with running_server(str(model), "--max-queue", str(args.max_queue)) as url:
        start = time.perf_counter()
        outcomes = asyncio.run(load_test(url, clients=args.clients, seconds=args.seconds))
        wall = time.perf_counter() - start
        metrics = httpx.get(url + "/metrics").text
    tokens = next(line.split()[-1] for line in metrics.splitlines()
                  if line.startswith("seed_generation_tokens_total"))
    errors = sum(v for k, v in outcomes.items() if k not in ("200", "429"))
    print(f"{args.clients} clients for {args.seconds:.0f} s (wall {wall:.1f} s incl. drain): "
          f"{outcomes}; {tokens} tokens generated")
    print(f"RESULT clients={args.clients} seconds={args.seconds:.0f} ok={outcomes.get('200', 0)} "
          f"rate_limited={outcomes.get('429', 0)} errors={errors}")


if __name__ == "__main__":
    main()
