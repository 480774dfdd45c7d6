"""What the training tests feed a run and read back: arithmetic chats, records (with teacher
top-k logprobs from a local model, as the generation engine stores them), and `metrics.jsonl`.

The model to train comes from helpers.models, the recipe keys from helpers.recipes.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from seed.records import Record, write_records
from seed.train.data import render


def sums(n: int = 60) -> list[list[dict[str, str]]]:
    """Short arithmetic chats: the same template every time, so a tiny model learns fast."""
    return [[{"role": "user", "content": f"{a} + {b} ="},
             {"role": "assistant", "content": str(a + b)}]
            for a in range(n // 6) for b in range(6)]


def write_chats(path: Path, chats: list[list[dict[str, str]]],
                meta: list[dict] | None = None) -> Path:
    """A records file of `chats`, record i carrying `meta[i]` if given."""
    write_records(path, [Record.new(c, meta=(meta[i] if meta else None))
                         for i, c in enumerate(chats)])
    return path


@torch.no_grad()
def teacher_logprobs(teacher_dir: Path, chats: list[list[dict[str, str]]],
                     k: int = 5) -> list[dict]:
    """meta with `logprobs` as the generation engine stores them, from a local teacher model."""
    model = AutoModelForCausalLM.from_pretrained(teacher_dir).eval()
    tok = AutoTokenizer.from_pretrained(teacher_dir)
    metas = []
    for ex in render(tok, chats):
        logits = model(input_ids=torch.tensor([ex.ids])).logits[0].float()
        lp = torch.log_softmax(logits, -1)
        turns, current = [], None
        for t, m in enumerate(ex.mask):
            if m and (current is None or not ex.mask[t - 1]):
                current = []
                turns.append(current)
            # The content only: the engine's logprobs stop before the end-of-turn token.
            if m and ex.ids[t] != tok.eos_token_id:
                top = lp[t - 1].topk(k)
                current.append({
                    "token": tok.decode([ex.ids[t]]), "logprob": float(lp[t - 1, ex.ids[t]]),
                    "top_logprobs": [{"token": tok.decode([int(i)]), "logprob": float(v)}
                                     for v, i in zip(top.values, top.indices, strict=True)]})
        metas.append({"logprobs": turns})
    assert len(metas) == len(chats) and all(len(m["logprobs"]) for m in metas)
    assert json.dumps(metas)  # plain JSON, as in a records file
    return metas


def metrics(out: Path) -> list[dict]:
    """The lines of a training run's `metrics.jsonl`."""
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
