"""Shared fixtures: tiny tokenizers, models, records, a judge server and one plain `seed serve`,
built locally, never downloaded. Helper functions the tests share are in tests/helpers/."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from helpers.models import tiny_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Inductor compiles its kernels in this process, not in a pool of compile workers that each import
# torch while the other test worker runs (the cold compile test: 49-58 s vs 55-89 s, load ~3).
os.environ.setdefault("TORCHINDUCTOR_COMPILE_THREADS", "1")
# `make test` runs two workers on two cores: each worker's in-process torch work gets one thread.
# Tiny models on two threads spin against the other worker (six 16x16 images, 4 steps: 7-10 s on
# two threads under load, 0.4 s on one).
torch.set_num_threads(1)

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# The files that take longest, heaviest first (`--durations`, fresh-clone and loaded runs). With
# `-n 2 --dist loadfile` a worker takes one file at a time; xdist would hand out files with the
# most tests first, so these few-test, long files came last and one worker ran them alone while
# the other sat idle. They go first here (pytest_collection_modifyitems), longest first, and
# xdist keeps that order (pytest_configure). A file not listed runs after them, in the usual
# order; a stale list costs balance, never a test.
HEAVY_FIRST = [
    "tests/test_serve_worker.py", "tests/test_secrets_everywhere.py", "tests/test_judge_e2e.py",
    "tests/test_protect_loop.py", "tests/test_serve_images.py", "tests/test_train_fsdp.py",
    "tests/test_train_compile.py", "tests/test_serve_audit.py", "tests/test_serve_lm_eval.py",
    "tests/test_policy_pipeline.py", "tests/test_train_loop.py", "tests/test_pipeline.py",
    "tests/adversarial/test_adv_edge.py", "tests/test_serve_fields.py",
    "tests/test_train_same_code.py",
    "tests/test_serve_tools.py", "tests/test_images_roundtrip.py", "tests/test_train_grpo.py",
    "tests/test_serve_images_browser.py", "tests/test_identity_eval.py",
    "tests/test_protect_served.py", "tests/test_reasoning_roundtrip.py",
]


def pytest_configure(config: pytest.Config) -> None:
    """Keep the collection's file order under xdist (see HEAVY_FIRST)."""
    if hasattr(config.option, "loadscopereorder"):
        config.option.loadscopereorder = False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The HEAVY_FIRST files first, longest first; a stable sort, so each file's tests stay
    together and in their order."""
    rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))


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
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A saved random `nano` student and its digits tokenizer: loadable with
    AutoModelForCausalLM."""
    texts = ["Calculate 12 + 34.", "46", "Hello there, how are you?", "Fine, thanks!"] * 20
    return tiny_model(tmp_path_factory.mktemp("tiny_model"), tokenizer="digits", texts=texts,
                      vocab=300, size="nano", context=128)


@pytest.fixture(scope="module")
def judge_server() -> Iterator[tuple[str, list[dict]]]:
    """The rule-based judge of helpers/judge_server.py: its base URL and its request log."""
    from helpers.judge_server import judge_server as serving

    with serving() as (url, log):
        yield url, log


@pytest.fixture(scope="session")
def tiny_chat_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The default tiny chat model (helpers.models.tiny_model), served as "tiny"."""
    return tiny_model(tmp_path_factory.mktemp("shared_chat") / "tiny")


@pytest.fixture(scope="session")
def tiny_server(tiny_chat_model: Path) -> Iterator[str]:
    """A plain `seed serve` of `tiny_chat_model` (no keys, default limits), started once per test
    process and shared by the modules that need nothing else: its URL. A test that counts
    something on it measures the change, not the total (other modules use it too)."""
    from helpers.serve import running_server

    with running_server(str(tiny_chat_model)) as url:
        yield url
