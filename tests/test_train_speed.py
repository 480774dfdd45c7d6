"""Speed settings change speed, not results: activation checkpointing, bf16 autocast, MFU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from helpers.models import tiny_model
from helpers.recipes import SMALL
from helpers.training import metrics, sums, write_chats
from seed.recipe import TrainConfig
from seed.train import train_student
from seed.train.speed import flops_per_token, mfu, peak_flops


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    tmp = tmp_path_factory.mktemp("speed")
    base = tiny_model(tmp / "base", tokenizer="digits", size="nano")
    return base, write_chats(tmp / "r.jsonl", sums())


def _train(tmp_path: Path, setup: tuple[Path, Path], name: str, **extra: object) -> list[dict]:
    base, records = setup
    config = TrainConfig.model_validate({**SMALL, "max_steps": 5,
                                         "student": {"checkpoint": str(base)}, **extra})
    train_student(records, tmp_path / name, config, seed=0)
    return metrics(tmp_path / name)


def test_activation_checkpointing_gives_the_same_losses(tmp_path: Path, setup) -> None:
    plain = _train(tmp_path, setup, "plain")
    ckpt = _train(tmp_path, setup, "ckpt", grad_checkpointing=True)
    assert [m["loss"] for m in ckpt] == pytest.approx([m["loss"] for m in plain], rel=1e-5)


def test_bf16_autocast_trains_close_to_float32(tmp_path: Path, setup) -> None:
    fp32 = _train(tmp_path, setup, "fp32", dtype="float32")
    bf16 = _train(tmp_path, setup, "bf16", dtype="bfloat16")
    assert bf16[0]["loss"] == pytest.approx(fp32[0]["loss"], rel=0.02)
    assert bf16[-1]["loss"] < bf16[0]["loss"]


def test_mfu_is_logged_with_a_known_peak_and_matches_its_definition(tmp_path: Path,
                                                                     setup) -> None:
    rows = _train(tmp_path, setup, "mfu", peak_flops=1e12)
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "mfu" / "model")
    per_token = flops_per_token(model, SMALL["seq_len"])
    for row in rows:
        assert row["mfu"] == pytest.approx(row["tokens_per_s"] * per_token / 1e12, abs=1e-4)
    assert "mfu" not in _train(tmp_path, setup, "no_peak", dtype="float32")[0]  # CPU: no peak


def test_flops_per_token_counts_matmul_weights_and_attention(tmp_path: Path) -> None:
    base = tiny_model(tmp_path / "m", tokenizer="digits", size="nano")
    model = AutoModelForCausalLM.from_pretrained(base)
    cfg = model.config
    d, n_layers, v, ff = (cfg.hidden_size, cfg.num_hidden_layers, cfg.vocab_size,
                          cfg.intermediate_size)
    kv = cfg.num_key_value_heads * d // cfg.num_attention_heads
    per_layer = d * d * 2 + d * kv * 2 + 3 * d * ff + 2 * d  # q, o, k, v, MLP, two norms
    weights = n_layers * per_layer + d + v * d  # final norm, tied lm head
    assert flops_per_token(model, 64) == 6 * weights + 12 * n_layers * d * 64
    assert peak_flops(torch.device("cpu"), None) is None
    assert mfu(1000.0, 1e6, None) is None and mfu(1000.0, 1e6, 1e10, devices=2) == 0.05
