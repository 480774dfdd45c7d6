"""torch.compile (inductor, on the CPU): the same losses as eager, one graph for every batch."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from helpers.models import tiny_model
from helpers.recipes import SMALL
from helpers.training import metrics, sums, write_chats
from seed.recipe import TrainConfig
from seed.train import train_student


@pytest.mark.timeout(240)
def test_compiled_training_matches_eager_without_recompiling(tmp_path: Path) -> None:
    base = tiny_model(tmp_path / "base", tokenizer="digits", size="nano")
    records = write_chats(tmp_path / "r.jsonl", sums())
    losses = {}
    for name, compile_, chunk in (("eager", False, None), ("compiled", True, None),
                                  ("compiled_chunked", True, 64)):
        config = TrainConfig.model_validate({**SMALL, "max_steps": 5, "dtype": "float32",
                                             "compile": compile_, "loss_chunk": chunk,
                                             "student": {"checkpoint": str(base)}})
        torch._dynamo.reset()
        counters.clear()
        # 19 packed rows, 8 per step: batches cross epochs, and every one has the same shape.
        with torch._dynamo.config.patch(error_on_recompile=True):
            train_student(records, tmp_path / name, config, seed=0)
        losses[name] = [m["loss"] for m in metrics(tmp_path / name)]
        if compile_:  # one graph, compiled once, for all 5 steps
            assert counters["stats"]["unique_graphs"] == 1, name
            assert counters["frames"]["ok"] == 1 and not counters["graph_break"], name
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=1e-5)
    assert losses["compiled_chunked"] == pytest.approx(losses["eager"], rel=1e-5)
