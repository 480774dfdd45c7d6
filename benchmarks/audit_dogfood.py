"""`seed audit` on a real `seed serve` used at once by a distiller, people, an app and a batch job.

The tests' dogfood (tests/test_serve_audit.py) at a larger scale, with more kinds of customer:

- distiller: `seed generate` on the 175 Self-Instruct seed tasks, two turns, logprobs (top 5),
  8 requests at a time;
- person-1..3: MT-Bench questions (both turns) and AlpacaEval instructions through openai-python,
  each answer read for a random 1-3 s times `--think-scale` before the next prompt;
- app: one system prompt and one template around short texts its users send, users arriving at
  random;
- batch: a legitimate batch customer, AlpacaEval instructions 4 at a time, no logprobs.

Prints the audit and ends with one `RESULT` line: the distiller's rank and flag count, how many
people were flagged, the app's and the batch job's flag counts, requests logged, and the audit's
wall time. A tiny random-weight model answers (nothing downloaded); ../shared/data is needed.

    PYTHONPATH=src .venv/bin/python benchmarks/audit_dogfood.py
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import openai

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "src"))

from helpers.cli import run_cli  # noqa: E402
from helpers.models import tiny_model  # noqa: E402
from helpers.recipes import teacher_recipe, write_recipe  # noqa: E402
from helpers.serve import running_server, seed_env  # noqa: E402
from helpers.traffic import (  # noqa: E402
    alpaca_instructions,
    answer_sentences,
    mt_bench,
    seed_tasks,
)

SYSTEM = "You are ReviewBot, the sentiment classifier of the Acme shop."
TEMPLATE = ('Classify the sentiment of this review as positive, negative or neutral.\n'
            'Review: "{text}"\nAnswer with one word.')
KEYS = {name: f"sk-dogfood-{name}-{i:04d}" for i, name in enumerate(
    ["distiller", "person-1", "person-2", "person-3", "app", "batch"])}


def client(url: str, name: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key=KEYS[name], max_retries=0)


def person(url: str, name: str, chats: list[list[str]], scale: float, rng: random.Random) -> None:
    c = client(url, name)
    for turns in chats:
        messages: list[dict] = []
        for turn in turns:
            messages.append({"role": "user", "content": turn})
            try:
                r = c.chat.completions.create(model="teacher", messages=messages, max_tokens=16)
            except openai.BadRequestError:  # over the context: this person gives up on the chat
                break
            messages.append({"role": "assistant", "content": r.choices[0].message.content})
            time.sleep(rng.uniform(1, 3) * scale)


def app(url: str, texts: list[str], scale: float, rng: random.Random) -> None:
    c = client(url, "app")
    for text in texts:
        c.chat.completions.create(model="teacher", max_tokens=4, temperature=0, messages=[
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": TEMPLATE.format(text=text)}])
        time.sleep(rng.uniform(0.5, 2) * scale)


def batch(url: str, prompts: list[str]) -> None:
    c = client(url, "batch")

    def one(prompt: str) -> None:
        with contextlib.suppress(openai.BadRequestError):  # over the context: skipped
            c.chat.completions.create(model="teacher", max_tokens=16,
                                      messages=[{"role": "user", "content": prompt}])

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, prompts))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--think-scale", type=float, default=0.2,
                    help="think times are 1-3 s times this (0.2: 0.2-0.6 s)")
    ap.add_argument("--seed-tasks", type=int, default=175)
    args = ap.parse_args()
    rng = random.Random(14)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        model = tiny_model(tmp / "teacher", context=4096)
        keys = tmp / "keys.txt"
        keys.write_text("".join(k + "\n" for k in KEYS.values()))  # key-1 ... key-6, in order
        labels = {name: f"key-{i}" for i, name in enumerate(KEYS, 1)}
        log = tmp / "usage.jsonl"
        prompts = tmp / "seed_prompts.jsonl"
        prompts.write_text("".join(json.dumps({"prompt": t}) + "\n"
                                   for t in seed_tasks(args.seed_tasks)))
        chats = [[t] for t in alpaca_instructions(60, skip=20)] + mt_bench(80)
        rng.shuffle(chats)
        with running_server(model, "--keys-file", keys, "--usage-log", log,
                            "--model-name", "teacher") as url:
            recipe = write_recipe(tmp / "distil.toml", teacher_recipe(
                url + "/v1", prompts, model="teacher"), {
                "generate.teacher.api_key_env": "SEED_DOGFOOD_KEY", "generate.turns": 2,
                "generate.num_records": args.seed_tasks, "generate.eval_prompts": 0,
                "generate.limits.concurrency": 8,
                "generate.params": {"max_tokens": 32, "temperature": 1.0, "logprobs": True,
                                    "top_logprobs": 5}})
            threads = [threading.Thread(target=person, args=(
                url, f"person-{i + 1}", chats[i::3], args.think_scale,
                random.Random(rng.random()))) for i in range(3)]
            threads.append(threading.Thread(target=app, args=(
                url, answer_sentences(100), args.think_scale, random.Random(rng.random()))))
            threads.append(threading.Thread(target=batch, args=(
                url, alpaca_instructions(200, skip=300))))
            for t in threads:
                t.start()
            gen = run_cli("generate", recipe, "--out", tmp / "run",
                          env=seed_env() | {"SEED_DOGFOOD_KEY": KEYS["distiller"]})
            for t in threads:
                t.join()
            if gen.returncode != 0:
                sys.exit(f"seed generate failed: {gen.stderr}")
        start = time.monotonic()
        text = run_cli("audit", log, "--suggest", env=seed_env())
        audit_s = time.monotonic() - start
        report = json.loads(run_cli("audit", log, "--json", env=seed_env()).stdout)
        print(text.stdout)
        logged = log.read_text()
        leaked = [n for n, k in KEYS.items() if k in logged] + (["system"] if SYSTEM in logged
                                                               else [])
    ranks = {k["key"]: (i, k["flags"]) for i, k in enumerate(report["keys"], 1)}
    flags = {name: ranks[label][1] for name, label in labels.items()}
    for name, f in flags.items():
        print(f"{name:<10} rank {ranks[labels[name]][0]}: {', '.join(f) or 'nothing'}")
    print(f"RESULT distiller_rank={ranks[labels['distiller']][0]} "
          f"distiller_flags={len(flags['distiller'])} "
          f"people_flagged={sum(bool(flags[f'person-{i}']) for i in (1, 2, 3))} "
          f"app_flags={len(flags['app'])} batch_flags={len(flags['batch'])} "
          f"requests={sum(k['requests'] for k in report['keys'])} audit_s={audit_s:.1f} "
          f"leaks={len(leaked)}")


if __name__ == "__main__":
    main()
