"""A training run's files on disk: atomic model saves, checkpoints, the inputs' fingerprint.

An output directory holds initial/ (the untrained student), checkpoints/step-N/state.pt (the
newest `KEEP` of them), metrics.jsonl, model/ (the final student), summary.json, and inputs.json,
the fingerprint of the config, seed and records that produced them. Outputs of other inputs are
removed before a run starts, never resumed from. Every directory is written under a temporary name
and renamed into place, so a kill at any moment leaves the old one or the new one. This module
knows nothing about data, losses or the loop's order of steps.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from seed.files import hash_json, hash_path, load_jsonl, write_json_atomic, write_text_atomic
from seed.quiet import quiet_progress_bars
from seed.recipe import TrainConfig

KEEP = 2  # checkpoints kept; older ones are deleted once a newer one is in place


def save_dir_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write a directory under a temporary name with `write(tmp)`, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def save_model(path: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """`save_pretrained` of the model and its tokenizer into `path`, atomically."""
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    with quiet_progress_bars():  # transformers draws a bar per saved shard
        save_dir_atomic(path, write)


def fingerprint(records: Path, config: TrainConfig, seed: int) -> str:
    """What the outputs depend on: the train config, the seed and the records' content."""
    return hash_json([config.model_dump(mode="json"), seed, hash_path(records)])


def start_fresh_if_changed(out_dir: Path, inputs: str) -> None:
    """Remove outputs of another config, seed or records file; record `inputs` as the current."""
    marker = out_dir / "inputs.json"
    if marker.is_file() and json.loads(marker.read_text())["fingerprint"] == inputs:
        return
    for name in ("initial", "model", "checkpoints", "adapter"):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    for name in ("metrics.jsonl", "summary.json"):
        (out_dir / name).unlink(missing_ok=True)
    write_json_atomic(marker, {"fingerprint": inputs})


def checkpoints(out_dir: Path) -> list[Path]:
    """The checkpoint directories, oldest first."""
    return sorted((out_dir / "checkpoints").glob("step-*"))


def save_checkpoint(out_dir: Path, state: dict[str, Any]) -> None:
    """Write `state` (with its `step`) as the newest checkpoint and drop all but the last KEEP."""
    path = out_dir / "checkpoints" / f"step-{state['step']:08d}"
    save_dir_atomic(path, lambda tmp: torch.save(state, tmp / "state.pt"))
    for old in checkpoints(out_dir)[:-KEEP]:
        shutil.rmtree(old)


def load_checkpoint(path: Path, device: torch.device) -> dict[str, Any]:
    """A checkpoint's state, tensors on `device`."""
    state: dict[str, Any] = torch.load(path / "state.pt", weights_only=False, map_location=device)
    return state


def keep_metrics_until(path: Path, step: int) -> None:
    """Drop metric lines logged after the checkpoint being resumed from (they will be redone)."""
    if not path.exists():
        return
    kept = [m for m in load_jsonl(path) if m["step"] <= step]
    write_text_atomic(path, "".join(json.dumps(m) + "\n" for m in kept))
