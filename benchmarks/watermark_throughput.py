"""What watermarking costs `seed serve`: output tokens/s with `--watermark-key-file` vs without.

The same small random-weight Llama and the same 32 streaming chat requests as
`serve_throughput.py` (its workload, client and server helpers), two servers up at once: one
watermarking (gamma 0.25, delta 2, context 2: the serving defaults), one not. Measured in turns
within each round, the order reversed every other round (ABBA), so a burst of load from other
users of the machine hits both alike; the ratio is the median of per-round ratios. The requests are
greedy, and greedy rows are watermarked too, so the bias is computed for every token. The end token
is biased away (logit_bias -100) so both servers generate every request's max_tokens: the
watermark changes which tokens a greedy reply picks, and replies of other lengths would batch
differently. Ends with one `RESULT` line (`throughput_ratio`: watermarked tok/s over plain tok/s).

    PYTHONPATH=src .venv/bin/python benchmarks/watermark_throughput.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from helpers.models import tiny_model  # noqa: E402
from helpers.servers import free_port  # noqa: E402
from serve_throughput import server, workload  # noqa: E402


async def stream_all(url: str, requests: list[dict], no_end: dict[str, int]) -> dict:
    """Send every request at once (streaming, greedy, the end token biased away); count the
    completion tokens and the wall time to the last byte."""
    limits = httpx.Limits(max_connections=len(requests) + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def one(r: dict) -> int:
            body = {"model": "small", "messages": r["messages"], "max_tokens": r["max_tokens"],
                    "temperature": 0, "stream": True, "logit_bias": no_end,
                    "stream_options": {"include_usage": True}}
            async with client.stream("POST", url + "/v1/chat/completions", json=body) as resp:
                resp.raise_for_status()
                tokens = 0
                async for line in resp.aiter_lines():
                    if line.startswith("data: {"):
                        usage = json.loads(line[6:]).get("usage")
                        tokens = usage["completion_tokens"] if usage else tokens
                return tokens

        start = time.perf_counter()
        tokens = sum(await asyncio.gather(*[one(r) for r in requests]))
        wall = time.perf_counter() - start
    return {"tokens": tokens, "wall_s": wall, "tok_s": tokens / wall}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for each server")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=6, help="rounds; the ratio is their median")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="seed-wm-bench-"))
    model_dir = tiny_model(tmp / "small", hidden=args.hidden, layers=args.layers, context=1024,
                           vocab=400)
    key = tmp / "watermark.key"
    key.write_bytes(os.urandom(32))
    requests = workload(args.requests)
    from transformers import AutoTokenizer

    end = AutoTokenizer.from_pretrained(str(model_dir)).convert_tokens_to_ids("<|im_end|>")
    no_end = {str(end): -100}
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT / "src"))
    print(f"model: Llama hidden={args.hidden} layers={args.layers} (random weights), "
          f"{len(requests)} requests, max_tokens mixed 16-128, threads={args.threads}")
    contenders = {}
    for name, flags in [("plain", []), ("watermarked", ["--watermark-key-file", str(key)])]:
        port = free_port()
        contenders[name] = ([sys.executable, "-m", "seed", "serve", str(model_dir), "--port",
                             str(port), "--model-name", "small", "--threads", str(args.threads),
                             *flags], f"http://127.0.0.1:{port}")
    rounds = []
    with contextlib.ExitStack() as stack:
        urls = {name: stack.enter_context(server(cmd, env, url))
                for name, (cmd, url) in contenders.items()}
        for url in urls.values():
            asyncio.run(stream_all(url, [{**requests[0], "max_tokens": 4}], no_end))
        for i in range(args.rounds):
            order = list(urls) if i % 2 == 0 else list(urls)[::-1]
            rounds.append({name: asyncio.run(stream_all(urls[name], requests, no_end))
                           for name in order})
    ratios = []
    for i, row in enumerate(rounds, 1):
        for name in contenders:
            r = row[name]
            print(f"{i:5d} {name:12} {r['tokens']:7d} tokens {r['wall_s']:8.2f} s "
                  f"{r['tok_s']:8.1f} tok/s")
        ratios.append(row["watermarked"]["tok_s"] / row["plain"]["tok_s"])
    print(f"per-round watermarked/plain: {[round(x, 3) for x in ratios]}")
    print(f"RESULT throughput_ratio={statistics.median(ratios):.3f} rounds={len(ratios)}")


if __name__ == "__main__":
    main()
