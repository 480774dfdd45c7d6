"""Batched image serving: 8 concurrent requests against the same 8 sent one at a time.

The claim (issue 15): `seed serve PIPELINE_DIR` joins concurrent requests into one denoising batch
at step boundaries, so 8 clients at once get >= 3x the images per second of the same 8 requests
sent one after another. Both arms run against one `seed serve` subprocess, side by side in ABBA
order (sequential, concurrent, concurrent, sequential, ...), the same prompts, seeds and steps;
the ratio is of the arms' total images over their total seconds. The pipeline is an untrained
student of recipes/images.toml's shape (16x16 pixels, a conv UNet of widths 16, 32, 64 with
cross-attention only at its lowest resolution; its weights do not change the cost) unless
`--pipeline DIR` names a trained one.

On a CPU the server's thread count decides a lot: one thread is the fastest for one image at a
time on a busy 2-core machine (OpenMP threads spin against other processes on tiny ops), two
are the fastest for a batch. `--baseline-threads N` serves the sequential arm from a second
server with N threads, so each arm runs at its own best setting (both servers stay up; the idle
one costs nothing).

    PYTHONPATH=src .venv/bin/python benchmarks/serve_images.py [--rounds 2] [--threads 2]
        [--baseline-threads 1]
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from helpers.serve import running_server  # noqa: E402
from seed.train.diffusion_models import (  # noqa: E402
    Sampling,
    StudentShape,
    build_parts,
    save_pipeline,
)

PROMPTS = ["red circle left of blue square", "green triangle left of yellow circle",
           "blue square left of red triangle", "yellow circle left of green square"]
WORDS = sorted({w for p in PROMPTS for w in p.split()})


def student(directory: Path, size: int) -> Path:
    """An untrained image student of the recipe's shape, saved as a pipeline directory."""
    shape = StudentShape(size=size, channels=(16, 32, 64), attention=(False, False, True))
    unet, text_encoder, tokenizer = build_parts(WORDS, shape, 0)
    return save_pipeline(directory, unet, text_encoder, tokenizer,
                         Sampling(name=directory.name, sizes=[(size, size)]))


def sequential(client: openai.OpenAI, model: str, n: int, steps: int) -> float:
    start = time.perf_counter()
    for i in range(n):
        draw(client, model, i, steps)
    return time.perf_counter() - start


def concurrent(client: openai.OpenAI, model: str, n: int, steps: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(lambda i: draw(client, model, i, steps), range(n)))
    return time.perf_counter() - start


def draw(client: openai.OpenAI, model: str, i: int, steps: int) -> None:
    r = client.images.generate(model=model, prompt=PROMPTS[i % len(PROMPTS)],
                               extra_body={"seed": 1000 + i, "num_inference_steps": steps})
    assert r.data and r.data[0].b64_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pipeline", type=Path, help="a pipeline directory to serve (default: an "
                    "untrained student of the recipe's shape)")
    ap.add_argument("--size", type=int, default=16, help="the default student's canvas")
    ap.add_argument("--requests", type=int, default=8)
    ap.add_argument("--steps", type=int, default=12, help="denoising steps per image")
    ap.add_argument("--rounds", type=int, default=2, help="ABBA rounds (each runs both arms twice)")
    ap.add_argument("--threads", type=int, default=2, help="the server's CPU threads")
    ap.add_argument("--baseline-threads", type=int, default=None,
                    help="serve the sequential arm from a second server with this many threads")
    ap.add_argument("--device", default=None, help="the server's device (default: cuda if any)")
    args = ap.parse_args()
    pipeline = args.pipeline or student(Path(tempfile.mkdtemp(prefix="seed-img-")) / "student",
                                        args.size)
    extra = ["--device", args.device] if args.device else []
    baseline = args.threads if args.baseline_threads is None else args.baseline_threads
    with contextlib.ExitStack() as stack:
        url = stack.enter_context(running_server(pipeline, "--threads", str(args.threads),
                                                 *extra, timeout=300))
        base = url if baseline == args.threads else stack.enter_context(running_server(
            pipeline, "--threads", str(baseline), *extra, timeout=300))
        clients = {arm: openai.OpenAI(base_url=u + "/v1", api_key="none", max_retries=0,
                                      timeout=600)
                   for arm, u in (("sequential", base), ("concurrent", url))}
        model = clients["concurrent"].models.list().data[0].id
        for c in clients.values():
            concurrent(c, model, 2, 2)  # warm up
        seconds = {"sequential": 0.0, "concurrent": 0.0}
        arms = {"sequential": sequential, "concurrent": concurrent}
        for r in range(args.rounds):
            for arm in ("sequential", "concurrent", "concurrent", "sequential"):
                took = arms[arm](clients[arm], model, args.requests, args.steps)
                seconds[arm] += took
                print(f"round {r} {arm}: {args.requests} images in {took:.2f} s "
                      f"({args.requests / took:.2f} images/s)", flush=True)
        batches = batch_metrics(url)
    images = 2 * args.rounds * args.requests
    seq, con = images / seconds["sequential"], images / seconds["concurrent"]
    print(f"RESULT requests={args.requests} steps={args.steps} rounds={args.rounds} "
          f"threads={args.threads} baseline_threads={baseline} "
          f"sequential_images_per_s={seq:.3f} concurrent_images_per_s={con:.3f} "
          f"mean_batch_rows={batches:.2f} vs_sequential_images={con / seq:.2f}")


def batch_metrics(url: str) -> float:
    """The concurrent server's mean rows per batched forward (its /metrics)."""
    text = httpx.get(url + "/metrics", timeout=60).text
    values = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
              if line.startswith("seed_image_batch_size_")}
    count = values.get("seed_image_batch_size_count", 0.0)
    return values.get("seed_image_batch_size_sum", 0.0) / count if count else 0.0


if __name__ == "__main__":
    main()
