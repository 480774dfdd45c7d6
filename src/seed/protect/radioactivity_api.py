"""`seed watermark radioactivity --endpoint URL --model NAME`: the API-only suspect.

Prompts go to the suspect through `seed generate`'s own engine (`seed.generate.engine.run`): its
concurrency and retry limits, its request cache (`--cache`, so a rerun asks nothing again) and its
budget (`--max-cost`, priced as `seed generate` prices a model). The answers are tokenized with OUR
served model's tokenizer (`--tokenizer`: the watermark hashes its token ids) and scored as
`radioactivity.answer_tuples` takes them: windows from the suspect's own output, the first
`context` tokens of each answer (whose window held prompt tokens) skipped, each distinct tuple
once, decoy keys beside the real one.

`--served-to LABEL --served-dir DIR` keeps only the tuples our server served to one API key
(its served-windows log, `seed serve --watermark-served-dir`: `served.py`): a suspect that learned
from that key's replies repeats their windows, so the test is over the text that key took away,
and the report says how many tuples were kept. A label without a file in DIR is refused before
the suspect is asked anything. This module knows nothing about the hash or the statistics.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from pathlib import Path

import numpy as np

from seed.errors import UserError
from seed.protect.radioactivity import answer_tuples, check_options, radioactivity, report
from seed.protect.served import keep_served, served_digests
from seed.protect.watermark import WatermarkKey, read_key


def read_prompts(files: list[Path]) -> list[list[dict[str, str]]]:
    """Chat prompts: each non-empty line of a text file is one user turn; a Seed record (`.jsonl`)
    gives its turns before the first assistant reply."""
    prompts: list[list[dict[str, str]]] = []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--texts {path}: cannot be read as UTF-8 text ({e}); give prompt "
                            "files, one prompt a line, or Seed records (.jsonl)") from None
        for lineno, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            if path.suffix != ".jsonl":
                prompts.append([{"role": "user", "content": line}])
                continue
            prompts.append(_record_prompt(line, f"{path}:{lineno}"))
    return prompts


def _record_prompt(line: str, where: str) -> list[dict[str, str]]:
    try:
        record = json.loads(line)
    except json.JSONDecodeError as e:
        raise UserError(f"--texts {where}: not valid JSON ({e.msg}); give Seed records or a "
                        "text file of prompts") from None
    messages = record.get("messages") if isinstance(record, dict) else None
    if not isinstance(messages, list):
        raise UserError(f"--texts {where}: not a Seed record (no messages); give Seed records or "
                        "a text file of prompts")
    turns = []
    for m in messages:
        if not isinstance(m, dict) or m.get("role") == "assistant":
            break
        turns.append({"role": str(m.get("role")), "content": str(m.get("content", ""))})
    if not turns:
        raise UserError(f"--texts {where}: the record has no turns before its first reply")
    return turns


def ask(endpoint_url: str, model: str, prompts: list[list[dict[str, str]]], *,
        api_key_env: str | None, max_tokens: int, temperature: float, max_cost: float | None,
        cache: Path | None) -> list[str]:
    """The suspect's first answer to each prompt that was answered (failed ones left out)."""
    from seed.endpoints.factory import make_endpoint
    from seed.generate.budget import Budget
    from seed.generate.cache import RequestCache
    from seed.generate.engine import Limits, Request, Result, run
    from seed.recipe import OpenAIEndpointConfig

    endpoint = make_endpoint(OpenAIEndpointConfig(base_url=endpoint_url, model=model,
                                                  api_key_env=api_key_env), "--endpoint")
    budget = Budget(model=model, max_cost=max_cost)
    store = RequestCache(cache) if cache is not None else None
    params = {"max_tokens": max_tokens, "temperature": temperature}
    answers: dict[int, str] = {}

    def keep(result: Result) -> None:
        if result.ok and result.completions:
            answers[result.request.payload] = result.completions[0].text

    async def main() -> None:
        try:
            await run((Request(str(i), p, dict(params), payload=i) for i, p in enumerate(prompts)),
                      endpoint, Limits(), cache=store, on_result=keep, budget=budget)
        finally:
            await endpoint.aclose()

    asyncio.run(main())
    return [answers[i] for i in sorted(answers)]


def run_api(endpoint_url: str, model: str, key_file: Path, files: list[Path],
            tokenizer_dir: Path | None, *, gamma: float, context: int, decoys: int,
            threshold: float, as_json: bool, api_key_env: str | None, max_tokens: int,
            temperature: float, max_cost: float | None, cache: Path | None,
            served_to: str | None = None, served_dir: Path | None = None) -> bool:
    """`seed watermark radioactivity --endpoint`: print the result; True for evidence."""
    from seed.endpoints.local import load_tokenizer

    check_options(gamma, context, decoys)
    if tokenizer_dir is None:
        raise UserError("--endpoint needs --tokenizer DIR: our served model's directory (the "
                        "watermark is over its token ids)")
    secret = read_key(key_file, "--key-file")
    key = WatermarkKey.from_bytes(secret)
    served = served_windows(served_to, served_dir, secret, context)
    prompts = read_prompts(files)
    if not prompts:
        raise UserError("--texts: no prompts; give prompt files (one a line) or Seed records")
    tokenizer = load_tokenizer(tokenizer_dir)
    answers = ask(endpoint_url, model, prompts, api_key_env=api_key_env, max_tokens=max_tokens,
                  temperature=temperature, max_cost=max_cost, cache=cache)
    if not answers:
        raise UserError(f"--endpoint {endpoint_url}: no prompt was answered; check the URL, the "
                        "model name and the key")
    tuples = answer_tuples(answers, tokenizer, context)
    kept = tuples if served is None else keep_served(tuples, served, secret)
    result = radioactivity(kept, key, gamma=gamma, context=context, decoys=decoys, mode="api",
                           texts=len(answers))
    if served is not None:
        result = replace(result, served_to=served_to, served_of=len(tuples))
    return report(result, threshold, as_json)


def served_windows(label: str | None, directory: Path | None, key: bytes,
                   context: int) -> np.ndarray | None:
    """The digests served to `label` (None: no filter); the two options come together."""
    if label is None and directory is None:
        return None
    if label is None or directory is None:
        raise UserError("--served-to LABEL and --served-dir DIR come together: the key label "
                        "and the server's serve.watermark_served_dir")
    return served_digests(directory, label, key, context)
