"""DPO on a toy preference set: the chosen-vs-rejected margin grows; bad pairs are clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers.models import tiny_model
from helpers.recipes import SMALL
from helpers.training import metrics, write_chats
from seed.errors import UserError
from seed.recipe import TrainConfig
from seed.records import read_records
from seed.train import train_student
from seed.train.dpo import pad_examples, render_pairs, sequence_logprobs


def _pairs(n: int = 24) -> tuple[list[list[dict[str, str]]], list[dict]]:
    """Prompts whose chosen answer is the right sum and whose rejected answer is off by one."""
    chats = [[{"role": "user", "content": f"{a} + {a + 1} ="}] for a in range(n)]
    meta = [{"chosen": str(2 * a + 1), "rejected": str(2 * a + 2)} for a in range(n)]
    return chats, meta


@torch.no_grad()
def _margin(model_dir: Path, records: Path) -> float:
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    pairs = render_pairs(tok, list(read_records(records)), "r")
    ids, mask = pad_examples([p.chosen for p in pairs] + [p.rejected for p in pairs], 48,
                             tok.pad_token_id)
    lp = sequence_logprobs(model, ids, mask)
    return float((lp[:len(pairs)] - lp[len(pairs):]).mean())


def test_dpo_raises_the_chosen_vs_rejected_margin(tmp_path: Path) -> None:
    base = tiny_model(tmp_path / "base", tokenizer="digits", size="nano")
    records = write_chats(tmp_path / "pairs.jsonl", *_pairs())
    config = TrainConfig.model_validate({**SMALL, "mode": "dpo", "batch_size": 6, "max_steps": 12,
                                         "lr": 3e-3, "student": {"checkpoint": str(base)},
                                         "dpo": {"beta": 0.5}})
    train_student(records, tmp_path / "out", config, seed=0)
    before = _margin(tmp_path / "out" / "initial", records)
    after = _margin(tmp_path / "out" / "model", records)
    assert after > before + 1.0
    losses = [m["loss"] for m in metrics(tmp_path / "out")]
    assert losses[0] == pytest.approx(0.6931, abs=0.02)  # log 2: the policy starts as the reference
    assert losses[-1] < 0.5


def test_dpo_masks_only_the_answer() -> None:
    from seed.train.tokenizer import train_tokenizer

    tok = train_tokenizer(["3 + 4 = 7 8"] * 5, "digits", 100)
    chats, meta = _pairs(4)
    from seed.records import Record

    pairs = render_pairs(tok, [Record.new(c, meta=m) for c, m in zip(chats, meta, strict=True)],
                         "r")
    chosen = pairs[1].chosen
    answer = [i for i, m in zip(chosen.ids, chosen.mask, strict=True) if m]
    assert tok.decode(answer) == "3<|end|>"


def test_a_record_without_a_rejected_answer_is_named(tmp_path: Path) -> None:
    base = tiny_model(tmp_path / "base", tokenizer="digits", size="nano")
    chats, meta = _pairs(4)
    del meta[2]["rejected"]
    records = write_chats(tmp_path / "pairs.jsonl", chats, meta)
    config = TrainConfig.model_validate({**SMALL, "mode": "dpo",
                                         "student": {"checkpoint": str(base)}})
    with pytest.raises(UserError, match=r"record 3 .* needs meta.rejected"):
        train_student(records, tmp_path / "out", config, seed=0)
