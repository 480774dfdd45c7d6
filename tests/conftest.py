"""Shared fixtures: tiny tokenizers, models and records built locally, never downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

ARITHMETIC = {"name": "basic_arithmetic",
              "config": {"min_terms": 2, "max_terms": 2, "min_digits": 1, "max_digits": 2,
                         "operators": ["+", "-"]}}


@pytest.fixture(scope="session")
def arithmetic_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """train.jsonl (300 answered) and eval.jsonl (20 prompts) from reasoning-gym, in a directory."""
    from seed.generate import generate_from_tasks
    from seed.recipe import GenerateConfig

    out = tmp_path_factory.mktemp("arithmetic")
    config = GenerateConfig.model_validate({
        "num_records": 300, "eval_prompts": 20,
        "teacher": {"kind": "tasks", "tasks": [ARITHMETIC]}})
    generate_from_tasks(config, 7, out)
    return out


@pytest.fixture(scope="session")
def tiny_tokenizer():
    """A digit-split BPE tokenizer with Seed's chat template, trained on a few sentences."""
    from seed.train.tokenizer import train_tokenizer

    texts = ["Calculate 12 + 34.", "46", "Hello there, how are you?", "Fine, thanks!"] * 20
    return train_tokenizer(texts, "digits", 300)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tiny_tokenizer) -> Path:
    """A saved random `nano` student and its tokenizer: loadable with AutoModelForCausalLM."""
    from seed.train.models import build_student, student_config

    cfg = student_config("nano", len(tiny_tokenizer), 128, tiny_tokenizer.pad_token_id,
                         tiny_tokenizer.eos_token_id)
    path = tmp_path_factory.mktemp("tiny_model")
    build_student(cfg, seed=0).save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path
