"""Issue-7 training test helpers: a tiny checkpoint, chats, records with teacher logprobs."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from seed.records import Record, write_records
from seed.train.data import render
from seed.train.models import build_student, student_config
from seed.train.tokenizer import train_tokenizer

SMALL = {"seq_len": 48, "batch_size": 8, "max_steps": 12, "warmup_steps": 2, "log_every": 1,
         "checkpoint_every": 100, "threads": 1, "lr": 1e-2}


def sums(n: int = 60) -> list[list[dict[str, str]]]:
    """Short arithmetic chats: the same template every time, so a tiny model learns fast."""
    return [[{"role": "user", "content": f"{a} + {b} ="},
             {"role": "assistant", "content": str(a + b)}]
            for a in range(n // 6) for b in range(6)]


def checkpoint(path: Path, seed: int = 0, size: str = "nano", kind: str = "digits",
               texts: list[str] | None = None, vocab: int = 200) -> Path:
    """A random student saved with its tokenizer: a stand-in for a downloaded checkpoint."""
    texts = texts or [m["content"] for chat in sums() for m in chat] * 3
    tok = train_tokenizer(texts, kind, vocab)
    cfg = student_config(size, len(tok), 128, tok.pad_token_id, tok.eos_token_id)
    build_student(cfg, seed).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def write_chats(path: Path, chats: list[list[dict[str, str]]],
                meta: list[dict] | None = None) -> Path:
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
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def multiprocess_recipe(path: Path, name: str, base: Path, batch_size: int,
                        extra: str = "") -> Path:
    """A 6-step fine-tuning recipe of `base` for the one- vs many-process tests; `extra` adds
    [train] lines (checkpointing, the sharding mode)."""
    path.write_text(f'''name = "{name}"
[generate.teacher]
kind = "tasks"
[train]
seq_len = {SMALL["seq_len"]}
batch_size = {batch_size}
max_steps = 6
warmup_steps = 2
lr = {SMALL["lr"]}
log_every = 1
threads = 1
{extra}
[train.student]
checkpoint = "{base}"
''')
    return path
