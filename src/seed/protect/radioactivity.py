"""`seed watermark radioactivity`: was a suspect model trained on our watermarked outputs?

Sander et al. (NeurIPS 2024, "Watermarking makes language models radioactive"): a model fine-tuned
on watermarked text learns to favour the green tokens after their windows, so its own predictions
carry the watermark too. Two ways to look:

- reading mode (open weights, `--model DIR`): each text goes through the suspect once; at every
  position the suspect's top-1 next-token prediction is scored as a token after the INPUT's window
  (the `context` input tokens before it, as the server hashed them). The suspect must share the
  served model's tokenizer (the hash is over token ids).
- API mode (`--endpoint URL`): prompts are sent through `seed generate`'s engine (its limits,
  cache and budget; `radioactivity_api.py`), and the suspect's answers are scored as `detect`
  scores texts: windows from the suspect's own output, the first `context` tokens (whose window
  held prompt tokens) skipped; optionally only the tuples we served to one key label
  (`--served-to`, from the server's served-windows log: `served.py`).

Either way each distinct (window, token) tuple counts once (`distinct_pairs`' rule), and the green
count is tested with `detect`'s exact binomial tail. A model that never saw our text still drifts
from gamma (it repeats itself, its favourite tokens are green or red by chance: z of 1-2 is
common), so the same tuples are also scored under `decoys` keys derived from a public label; the
real key's rank among them and the empirical p-value (1 + decoys at or above its z) / (1 + decoys)
say whether the real key is special. The result also says how many more tuples would reach
p < 1e-5 at the observed green rate. A small p-value is evidence consistent with training on
outputs watermarked with the key, never proof; a large one proves nothing (a context width the
suspect could not learn, paraphrased data, too few tuples). Only the key id is ever printed.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from seed.errors import UserError
from seed.protect.detect import binomial_tail, distinct_pairs, read_texts, score_key
from seed.protect.watermark import WatermarkKey, read_key

TARGET_P = 1e-5  # the p-value `tokens_needed` aims at
DECOY_LABEL = b"seed radioactivity decoy\0"

# token lists in, each list's top-1 predictions out (prediction t follows tokens[:t + 1])
Predictor = Callable[[list[list[int]]], list[list[int]]]


def reading_tuples(token_lists: Iterable[list[int]], predictions: Iterable[list[int]],
                   context: int) -> list[tuple[int, ...]]:
    """Each distinct (input window..., predicted token) once, in order of first appearance: the
    prediction after position t is scored against input tokens t - context + 1 .. t."""
    seen: dict[tuple[int, ...], None] = {}
    for ids, preds in zip(token_lists, predictions, strict=True):
        for t in range(context - 1, min(len(ids), len(preds))):
            seen.setdefault((*ids[t - context + 1:t + 1], preds[t]), None)
    return list(seen)


def decoy_keys(count: int) -> list[WatermarkKey]:
    """`count` keys nobody watermarks with, the same on every run (derived from a public label
    and an index, so a result can be checked)."""
    return [WatermarkKey.from_bytes(hashlib.sha256(DECOY_LABEL + i.to_bytes(4, "little")).digest())
            for i in range(count)]


def tokens_needed(green_rate: float, n: int, gamma: float, target: float = TARGET_P) -> int | None:
    """How many more distinct tuples, green at `green_rate`, would bring the exact tail under
    `target` (0: already there; None: never, the rate is not above gamma)."""
    if n and binomial_tail(math.ceil(green_rate * n - 1e-9), n, gamma) < target:
        return 0
    if green_rate <= gamma:
        return None

    def enough(m: int) -> bool:
        return binomial_tail(math.ceil(green_rate * m - 1e-9), m, gamma) < target

    hi = max(n, 16)
    while not enough(hi):
        hi *= 2
        if hi > 1 << 40:
            return None
    lo = hi // 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if enough(mid) else (mid, hi)
    return max(0, hi - n)


@dataclass(frozen=True)
class Radioactivity:
    """The real key's score over the tuples, and where it falls among the decoys'."""

    mode: str  # "reading" or "api"
    texts: int
    gamma: float
    context: int
    key_id: str
    tokens_scored: int  # distinct tuples
    green: int
    green_rate: float
    z: float
    p_value: float
    decoys: int
    decoy_rank: int  # 1 + decoys whose z is at least the real key's
    decoy_p_value: float  # (1 + decoys at or above) / (1 + decoys)
    decoy_z_max: float | None
    tokens_needed: int | None  # more tuples for p < 1e-5 at this green rate (None: never)
    served_to: str | None = None  # API mode: only the tuples served to this key label were kept
    served_of: int | None = None  # ... of this many distinct tuples in the suspect's answers

    def as_json(self) -> dict[str, Any]:
        return asdict(self)


def radioactivity(tuples: list[tuple[int, ...]], key: WatermarkKey, *, gamma: float,
                  context: int, decoys: int, mode: str, texts: int) -> Radioactivity:
    """Score the tuples under `key` and under `decoys` decoy keys."""
    real = score_key(key, tuples, gamma, context)
    decoy_z = [score_key(k, tuples, gamma, context).z for k in decoy_keys(decoys)]
    above = sum(z >= real.z for z in decoy_z)
    return Radioactivity(
        mode=mode, texts=texts, gamma=gamma, context=context, key_id=real.key_id,
        tokens_scored=real.tokens_scored, green=real.green, green_rate=real.green_rate, z=real.z,
        p_value=real.p_value, decoys=decoys, decoy_rank=1 + above,
        decoy_p_value=(1 + above) / (1 + decoys), decoy_z_max=max(decoy_z, default=None),
        tokens_needed=tokens_needed(real.green_rate, real.tokens_scored, gamma))


def verdict(result: Radioactivity, threshold: float) -> str:
    """One line in the words the evidence allows."""
    where = (f"rank {result.decoy_rank} of {result.decoys + 1} among decoy keys (empirical p "
             f"{result.decoy_p_value:.3g})" if result.decoys else "no decoy keys")
    if result.p_value < threshold and result.decoy_rank == 1:
        return (f"evidence consistent with training on outputs watermarked with key id "
                f"{result.key_id}: p {result.p_value:.3g}, {where}")
    return (f"no evidence of training on outputs watermarked with key id {result.key_id}: p "
            f"{result.p_value:.3g}, {where}; a negative test proves nothing")


def model_predictor(model_dir: Path, *, device: str = "cpu") -> tuple[Any, Predictor]:
    """The suspect's tokenizer and its top-1 predictor (one forward pass per text, texts cut to
    the model's positions)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if not Path(model_dir).is_dir():
        raise UserError(f"--model {model_dir}: no such model directory; give the suspect model's "
                        "directory (or --endpoint for a model behind an API)")
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True)
    model.to(device).eval()  # type: ignore[arg-type]
    limit = int(getattr(model.config, "max_position_embeddings", 0) or 2048)

    def predict(token_lists: list[list[int]]) -> list[list[int]]:
        out: list[list[int]] = []
        with torch.inference_mode():
            for ids in token_lists:
                ids = ids[:limit]
                if not ids:
                    out.append([])
                    continue
                logits = model(torch.tensor([ids], device=device)).logits[0]
                out.append(logits.argmax(-1).tolist())
        return out

    return tokenizer, predict


def read_mode(texts: list[str], tokenizer: Any, predict: Predictor, key: WatermarkKey, *,
              gamma: float, context: int, decoys: int) -> Radioactivity:
    """Reading mode over `texts` (see the module docstring)."""
    token_lists = [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    tuples = reading_tuples(token_lists, predict(token_lists), context)
    return radioactivity(tuples, key, gamma=gamma, context=context, decoys=decoys,
                         mode="reading", texts=len(texts))


def answer_tuples(answers: list[str], tokenizer: Any, context: int) -> list[tuple[int, ...]]:
    """API mode's tuples: the suspect's answers as texts, windows from its own output."""
    token_lists = [list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in answers]
    return distinct_pairs(token_lists, context)


def check_options(gamma: float, context: int, decoys: int) -> None:
    if not 0.0 < gamma < 1.0:
        raise UserError(f"--gamma {gamma}: give the green share the server used, between 0 and 1")
    if context < 1:
        raise UserError(f"--context {context}: give the server's window width, 1 or more tokens")
    if decoys < 0:
        raise UserError(f"--decoys {decoys}: give 0 or more decoy keys")


def run_reading(model_dir: Path, key_file: Path, files: list[Path], *, gamma: float,
                context: int, decoys: int, threshold: float, as_json: bool) -> bool:
    """`seed watermark radioactivity --model DIR`: print the result; True when p < threshold
    and the real key ranks first among the decoys."""
    check_options(gamma, context, decoys)
    key = WatermarkKey.from_bytes(read_key(key_file, "--key-file"))
    texts = [t for f in files for t in read_texts(f)]
    if not texts:
        raise UserError("--texts: no texts to read; give our watermarked outputs (Seed records, "
                        "OpenAI bodies or plain text files)")
    tokenizer, predict = model_predictor(model_dir)
    result = read_mode(texts, tokenizer, predict, key, gamma=gamma, context=context,
                       decoys=decoys)
    return report(result, threshold, as_json)


def report(result: Radioactivity, threshold: float, as_json: bool) -> bool:
    """Print the result (JSON or lines); True when it is evidence at `threshold`."""
    found = result.p_value < threshold and result.decoy_rank == 1
    line = verdict(result, threshold)
    if as_json:
        print(json.dumps({**result.as_json(), "threshold": threshold, "radioactive": found,
                          "verdict": line}))
        return found
    needed = ("already below 1e-5" if result.tokens_needed == 0 else "never at this green rate"
              if result.tokens_needed is None else f"{result.tokens_needed} more")
    if result.served_to is not None:
        print(f"kept {result.tokens_scored} of the answers' {result.served_of} distinct tuples: "
              f"those served to key label {result.served_to}")
    print(f"key {result.key_id} ({result.mode} mode): {result.green} of {result.tokens_scored} "
          f"distinct tuples green (rate {result.green_rate:.3f}, gamma {result.gamma}), z "
          f"{result.z:.2f}, p {result.p_value:.3g}; tuples for p < 1e-5: {needed}")
    print(line)
    return found

