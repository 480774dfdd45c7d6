"""Serving throughput: `seed serve` vs a sequential `model.generate` loop and `transformers serve`.

The same small random-weight Llama (built locally, nothing downloaded) answers the same 32 chat
requests of mixed prompt and reply lengths, greedy, all in this one run:

- sequential: one `model.generate` call per request, one after another, in this process;
- seed serve: 32 concurrent streaming requests (continuous batching);
- transformers serve: the same 32 concurrent streaming requests, with and without its
  `--continuous-batching` flag; the faster of the two is the comparison;
- with `--old-ref REF`, also `seed serve` from commit REF's `src/` (unpacked beside this tree, the
  same venv), for a before/after check of a change (`new_vs_old` in the RESULT line).

Output tokens/s is total completion tokens over wall time from the first request to the last byte.
The machine is shared, so contenders are measured in turns within each round (all servers up,
idle ones asleep; the order reversed every other round, ABBA) and the ratios are medians of
per-round ratios.
Time to first token and inter-token latency (gaps between streamed chunks): p50/p99 per server.
Every process gets the same CPU thread count (--threads). Ends with one `RESULT` line.

    PYTHONPATH=src .venv/bin/python benchmarks/serve_throughput.py
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from helpers.models import tiny_model  # noqa: E402
from helpers.servers import free_port, wait_until_up  # noqa: E402
from old_tree import unpack_src  # noqa: E402

SEED_TASKS = ROOT.parent / "shared" / "data" / "self_instruct" / "seed_tasks.jsonl"


def workload(n: int, seed: int = 0) -> list[dict]:
    """n chat requests: real instructions (Self-Instruct seed tasks) when present, mixed lengths."""
    rng = random.Random(seed)
    if SEED_TASKS.is_file():
        tasks = [json.loads(line)["instruction"] for line in SEED_TASKS.open()]
    else:
        tasks = ["Explain the idea in simple words. " * k for k in range(1, 20)]
    out = []
    for i in range(n):
        text = " ".join(rng.sample(tasks, rng.choice([1, 1, 2, 4])))
        out.append({"messages": [{"role": "user", "content": text}],
                    "max_tokens": rng.choice([16, 32, 64, 96, 128]), "id": i})
    return out


def percentile(values: list[float], q: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    k = min(len(values) - 1, max(0, round(q / 100 * (len(values) - 1))))
    return values[k]


class Sequential:
    """The baseline: one `model.generate` call per request, one after another, in this process."""

    def __init__(self, model_dir: Path, requests: list[dict], threads: int):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        torch.set_num_threads(threads)
        self.tok = AutoTokenizer.from_pretrained(str(model_dir))
        self.model = AutoModelForCausalLM.from_pretrained(str(model_dir)).eval()
        self.requests = requests
        self.encoded = [self.tok.apply_chat_template(r["messages"], add_generation_prompt=True,
                                                     return_tensors="pt", return_dict=True)
                        for r in requests]
        self.model.generate(**self.encoded[0], max_new_tokens=4, do_sample=False)  # warm-up

    def run(self) -> dict:
        import torch

        with torch.inference_mode():
            start = time.perf_counter()
            tokens = 0
            for enc, r in zip(self.encoded, self.requests, strict=True):
                out = self.model.generate(**enc, max_new_tokens=r["max_tokens"], do_sample=False,
                                          pad_token_id=self.tok.pad_token_id)
                tokens += out.shape[1] - enc["input_ids"].shape[1]
            wall = time.perf_counter() - start
        return {"tokens": tokens, "wall_s": wall, "tok_s": tokens / wall}


async def stream_all(url: str, model: str, requests: list[dict]) -> dict:
    """Send every request at once (streaming); measure tokens, TTFT and inter-token gaps."""
    limits = httpx.Limits(max_connections=len(requests) + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as client:
        async def one(r: dict) -> dict:
            body = {"model": model, "messages": r["messages"], "max_tokens": r["max_tokens"],
                    "temperature": 0, "stream": True, "stream_options": {"include_usage": True}}
            sent = time.perf_counter()
            stamps, usage, chunks = [], None, 0
            async with client.stream("POST", url + "/v1/chat/completions", json=body) as resp:
                resp.raise_for_status()
                async for line in resp.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    data = json.loads(line[6:])
                    if data.get("usage"):
                        usage = data["usage"]
                    for c in data.get("choices") or []:
                        if (c.get("delta") or {}).get("content"):
                            stamps.append(time.perf_counter())
                            chunks += 1
            tokens = usage["completion_tokens"] if usage else chunks
            return {"ttft": stamps[0] - sent if stamps else None,
                    "gaps": [b - a for a, b in itertools.pairwise(stamps)],
                    "tokens": tokens}

        start = time.perf_counter()
        results = await asyncio.gather(*[one(r) for r in requests])
        wall = time.perf_counter() - start
    tokens = sum(r["tokens"] for r in results)
    ttfts = [r["ttft"] for r in results if r["ttft"] is not None]
    gaps = [g for r in results for g in r["gaps"]]
    return {"tokens": tokens, "wall_s": wall, "tok_s": tokens / wall,
            "ttft_p50_ms": 1000 * percentile(ttfts, 50),
            "ttft_p99_ms": 1000 * percentile(ttfts, 99),
            "itl_p50_ms": 1000 * percentile(gaps, 50), "itl_p99_ms": 1000 * percentile(gaps, 99)}


@contextlib.contextmanager
def server(cmd: list[str], env: dict, url: str) -> Iterator[str]:
    """Start a server, wait for /health, yield its URL; stop it afterwards."""
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)
    try:
        wait_until_up(proc, url + "/health", 300, " ".join(map(str, cmd[:3])))
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for every contender")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3, help="rounds; ratios are per-round medians")
    ap.add_argument("--skip-transformers-serve", action="store_true")
    ap.add_argument("--old-ref", help="also serve with this commit's src/ (before/after)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="seed-bench-"))
    model_dir = tiny_model(tmp / "small", hidden=args.hidden, layers=args.layers, context=1024,
                           vocab=400)
    requests = workload(args.requests)
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false",
               OMP_NUM_THREADS=str(args.threads), PYTHONPATH=str(ROOT / "src"),
               HF_HUB_CACHE=str(tmp / "hub"))
    (tmp / "hub").mkdir()
    print(f"model: Llama hidden={args.hidden} layers={args.layers} (random weights), "
          f"{len(requests)} requests, max_tokens mixed 16-128, threads={args.threads}")

    seq = Sequential(model_dir, requests, args.threads)
    tf = str(Path(sys.executable).with_name("transformers"))
    contenders: dict[str, tuple[list[str], str]] = {}
    port = free_port()
    contenders["seed serve"] = ([sys.executable, "-m", "seed", "serve", str(model_dir), "--port",
                                 str(port), "--model-name", "small", "--threads",
                                 str(args.threads)], f"http://127.0.0.1:{port}")
    envs: dict[str, dict] = {}  # a contender's own environment, where it differs
    if args.old_ref:
        envs[f"seed serve @{args.old_ref}"] = {
            **env, "PYTHONPATH": str(unpack_src(args.old_ref, tmp / "old"))}
        port = free_port()
        contenders[f"seed serve @{args.old_ref}"] = (
            [sys.executable, "-m", "seed", "serve", str(model_dir), "--port", str(port),
             "--model-name", "small", "--threads", str(args.threads)],
            f"http://127.0.0.1:{port}")
    if not args.skip_transformers_serve:
        for label, flags in [("transformers serve", []),
                             ("transformers serve --continuous-batching",
                              ["--continuous-batching"])]:
            port = free_port()
            contenders[label] = ([tf, "serve", str(model_dir), "--port", str(port), "--host",
                                  "127.0.0.1", "--device", "cpu", *flags],
                                 f"http://127.0.0.1:{port}")

    # All servers up at once (idle ones sleep), measured in turns within each round, so a burst
    # of load from other users of the machine hits every contender of a round alike.
    rounds: list[dict[str, dict]] = []
    with contextlib.ExitStack() as stack:
        urls = {name: stack.enter_context(server(cmd, envs.get(name, env), url))
                for name, (cmd, url) in contenders.items()}
        names = {name: ("small" if name.startswith("seed serve") else str(model_dir))
                 for name in urls}
        for name, url in urls.items():  # warm-up (transformers serve loads lazily)
            asyncio.run(stream_all(url, names[name], [{**requests[0], "max_tokens": 4}]))
        for i in range(args.rounds):
            row = {"sequential generate": seq.run()}
            order = list(urls) if i % 2 == 0 else list(urls)[::-1]
            for name in order:
                row[name] = asyncio.run(stream_all(urls[name], names[name], requests))
            rounds.append(row)

    print(f"{'round':>5} {'contender':42} {'tokens':>7} {'wall s':>8} {'tok/s':>8} "
          f"{'TTFT p50/p99 ms':>18} {'ITL p50/p99 ms':>16}")
    ratios_seq, ratios_tf, ratios_old = [], [], []
    for i, row in enumerate(rounds, 1):
        for name, r in row.items():
            lat = ""
            if "ttft_p50_ms" in r:
                lat = (f"{r['ttft_p50_ms']:8.0f}/{r['ttft_p99_ms']:<8.0f} "
                       f"{r['itl_p50_ms']:7.1f}/{r['itl_p99_ms']:<7.1f}")
            print(f"{i:5d} {name:42} {r['tokens']:7d} {r['wall_s']:8.2f} {r['tok_s']:8.1f} {lat}")
        ratios_seq.append(row["seed serve"]["tok_s"] / row["sequential generate"]["tok_s"])
        tf_best = [r["tok_s"] for k, r in row.items() if k.startswith("transformers serve")]
        if tf_best:
            ratios_tf.append(row["seed serve"]["tok_s"] / max(tf_best))
        if args.old_ref:
            old_row = row[f"seed serve @{args.old_ref}"]
            ratios_old.append(row["seed serve"]["tok_s"] / old_row["tok_s"])
    seed_rows = [row["seed serve"] for row in rounds]
    vs_seq = statistics.median(ratios_seq)
    vs_tf = statistics.median(ratios_tf) if ratios_tf else float("nan")
    print(f"per-round seed/sequential: {[round(x, 2) for x in ratios_seq]}; seed/best "
          f"transformers serve: {[round(x, 2) for x in ratios_tf]} (medians below)")
    old = ""
    if ratios_old:
        print(f"per-round seed/seed@{args.old_ref}: {[round(x, 3) for x in ratios_old]}")
        old = f" new_vs_old={statistics.median(ratios_old):.3f}"
    print(f"RESULT vs_sequential={vs_seq:.2f} vs_transformers_serve={vs_tf:.2f} "
          f"ttft_p50_ms={statistics.median(r['ttft_p50_ms'] for r in seed_rows):.0f} "
          f"itl_p50_ms={statistics.median(r['itl_p50_ms'] for r in seed_rows):.1f}{old}")


if __name__ == "__main__":
    main()
