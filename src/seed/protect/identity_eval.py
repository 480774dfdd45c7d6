"""`seed eval MODEL --identity`: ask a model who it is; count the answers claiming another model.

Sends the 40 probes of `seed.protect.identity.PROBES` (9 languages), `samples` times each, to a
model directory (loaded in process) or to an OpenAI-compatible endpoint (a suspect's API), through
the generation engine (`seed.generate.engine`: concurrency, retries; no cache, so every run samples
anew). Each answer is scored with `identity_claims`; the result is the claim rate with its Wilson
95% interval, the claims per vendor and per language, and the worst answers (most vendors
claimed first). `identity.json` is written when an output directory is given.

A claim is evidence about what a model learned to say, not proof of what it was trained on: a
pre-trained base may have read about ChatGPT too. The rate is most telling for a student that was
never meant to know a vendor's name, and against the same probes before and after training.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

from rich.console import Console

from seed.endpoints.base import Endpoint
from seed.endpoints.factory import make_endpoint
from seed.errors import UserError
from seed.files import write_json_atomic
from seed.generate.engine import Limits, Request, Result, run
from seed.protect.identity import PROBES, Probe, claim_rate, identity_claims
from seed.recipe import LocalEndpointConfig, OpenAIEndpointConfig

WORST = 10  # answers shown
ANSWER_CHARS = 300  # of each answer shown


def identity_endpoint(model: str, served_model: str | None = None,
                      api_key_env: str | None = None) -> Endpoint:
    """A model directory, or an endpoint URL serving `served_model`, as an endpoint."""
    if model.startswith(("http://", "https://")):
        if not served_model:
            raise UserError(f"{model}: an endpoint URL needs --served-model NAME (the model "
                            "name the server answers to)")
        return make_endpoint(OpenAIEndpointConfig(base_url=model, model=served_model,
                                                  api_key_env=api_key_env), "--identity")
    return make_endpoint(LocalEndpointConfig(path=model), "--identity")


async def _ask(endpoint: Endpoint, params: dict[str, Any],
               concurrency: int) -> dict[int, Result]:
    results: dict[int, Result] = {}

    def keep(r: Result) -> None:
        results[r.request.payload] = r

    reqs = (Request(str(i), [{"role": "user", "content": p.text}], dict(params), payload=i)
            for i, p in enumerate(PROBES))
    try:
        await endpoint.check_reachable()
        await run(reqs, endpoint, Limits(concurrency=concurrency, max_attempts=3),
                  on_result=keep)
    finally:
        await endpoint.aclose()
    return results


def probe_answers(endpoint: Endpoint, samples: int = 5, max_tokens: int = 64,
                  temperature: float = 1.0,
                  concurrency: int = 8) -> tuple[list[tuple[Probe, list[str]]], int]:
    """Each probe with its answers, and how many probes failed after every retry."""
    params: dict[str, Any] = {"max_tokens": max_tokens, "temperature": temperature}
    if samples > 1:
        params["n"] = samples
    results = asyncio.run(_ask(endpoint, params, concurrency))
    answered = [(p, [c.text for c in results[i].completions]) for i, p in enumerate(PROBES)
                if i in results and results[i].ok]
    return answered, len(PROBES) - len(answered)


def score_answers(answers: list[tuple[Probe, list[str]]],
                  own_names: tuple[str, ...] = ()) -> dict[str, Any]:
    """The claim rate over every answer, per vendor and language, and the worst answers."""
    rows = [(probe, text, identity_claims(text, own_names))
            for probe, texts in answers for text in texts]
    claiming = [r for r in rows if r[2]]
    languages: dict[str, dict[str, int]] = {}
    for probe, _, claims in rows:
        lang = languages.setdefault(probe.language, {"n": 0, "claims": 0})
        lang["n"] += 1
        lang["claims"] += bool(claims)
    worst = sorted(claiming, key=lambda r: -len(r[2]))[:WORST]
    return {**claim_rate(len(claiming), len(rows)),
            "vendors": dict(Counter(v for _, _, claims in claiming for v in claims).most_common()),
            "languages": languages,
            "worst": [{"probe": p.text, "language": p.language, "claims": c,
                       "answer": t[:ANSWER_CHARS]} for p, t, c in worst]}


def identity_eval(model: str, out: Path | None = None, *, samples: int = 5,
                  max_tokens: int = 64, temperature: float = 1.0,
                  own_names: tuple[str, ...] = (), served_model: str | None = None,
                  api_key_env: str | None = None, console: Console | None = None) -> dict[str, Any]:
    """Probe `model` (a directory or an endpoint URL); print and return the result, and write it
    to `out/identity.json` when `out` is given."""
    if samples < 1:
        raise UserError(f"--samples {samples}: give at least 1")
    endpoint = identity_endpoint(model, served_model, api_key_env)
    answers, failed = probe_answers(endpoint, samples, max_tokens, temperature)
    if not answers:
        raise UserError(f"{model}: no probe was answered ({failed} failed); check the model")
    result = {"model": model, "probes": len(PROBES), "samples": samples,
              "temperature": temperature, "max_tokens": max_tokens, "failed_probes": failed,
              "own_names": list(own_names), **score_answers(answers, own_names)}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / "identity.json", result)
    _print(result, console or Console())
    return result


def _print(result: dict[str, Any], console: Console) -> None:
    console.print(f"identity: {result['claims']} of {result['n']} answers claim another model's "
                  f"identity ({result['rate']:.1%}, 95% CI {result['ci_low']:.1%}-"
                  f"{result['ci_high']:.1%}) over {result['probes'] - result['failed_probes']} "
                  f"probes x {result['samples']} samples", soft_wrap=True)
    if result["vendors"]:
        console.print("claimed: " + ", ".join(f"{v} {n}" for v, n in result["vendors"].items()),
                      soft_wrap=True)
    for w in result["worst"][:3]:
        console.print(f"  {w['probe']} -> {w['answer'][:120]!r}", markup=False, highlight=False,
                      soft_wrap=True)
