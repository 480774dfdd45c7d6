"""A training run's files on disk: durable model saves, checkpoints, the inputs' fingerprint.

An output directory holds initial/ (the untrained student), checkpoints/step-N/ (the newest `KEEP`
of them), metrics.jsonl, model/ (the final student), summary.json, and inputs.json, the
fingerprint of the config, seed and records that produced them. Outputs of other inputs are
removed before a run starts, never resumed from. Every directory is written under a temporary name,
fsynced and renamed into place, so a kill or a power cut at any moment leaves the old one or the
new one; one that cannot be written (a full disk) is a UserError, its partial copy removed.

A checkpoint is three files, and loading one executes no code from them:
- model.safetensors: the trained weights (a tensor tied to another is stored once);
- optimizer.pt: the optimizer's state, read with `torch.load(weights_only=True)`, which refuses
  anything but tensors and plain values (a pickle that would run code is an error, never run);
- state.json: the counters, the schedule, the RNG state, and the size and SHA-256 of the other
  two, with a digest of itself, so a truncated, garbled or half-copied checkpoint is told apart
  from a good one before anything is parsed.
A checkpoint that does not load is `BadCheckpoint`; the loop then tries the one before it, and this
module renames the bad one `step-N.corrupt` (kept, never deleted, never resumed from).
This module knows nothing about data, losses or the loop's order of steps.
"""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, cast

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from seed.errors import UserError, first_line
from seed.files import (
    fsync_path,
    fsync_tree,
    hash_json,
    hash_path,
    load_jsonl,
    write_json_atomic,
    write_text_atomic,
)
from seed.quiet import quiet_progress_bars
from seed.recipe import TrainConfig

KEEP = 2  # checkpoints kept; older ones are deleted once a newer one is in place
WEIGHTS, OPTIMIZER, STATE = "model.safetensors", "optimizer.pt", "state.json"
STEP_DIR = re.compile(r"step-\d+")


class BadCheckpoint(Exception):
    """A checkpoint that does not load; the message names the file and says why."""


@dataclass
class Checkpoint:
    """Everything a resume needs; `counters` holds step, tokens and elapsed_s."""

    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any]
    scheduler: dict[str, Any]
    rng: torch.Tensor
    counters: dict[str, Any]

    @property
    def step(self) -> int:
        return int(self.counters["step"])


def save_dir_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """Write a directory under a temporary name with `write(tmp)`, fsync it, rename it into place.

    A directory already at `path` is renamed aside first and removed after, so a kill leaves the
    old or the new one in place, bar the instant between two renames.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        tmp.mkdir(parents=True)
        write(tmp)
        fsync_tree(tmp)
    except OSError as e:  # a full disk or a directory made read-only under a running job
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{path}: cannot be written ({e.strerror or e}); free space or fix the "
                        "permissions and run again (training resumes from its last checkpoint)"
                        ) from None
    old = path.with_name(f".{path.name}.old")
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        os.replace(path, old)
    os.replace(tmp, path)
    fsync_path(path.parent)
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def safetensors_io() -> Iterator[None]:
    """safetensors' failed writes (a full disk) as the OSError they are."""
    try:
        yield
    except SafetensorError as e:
        if "I/O error" not in str(e):
            raise
        raise OSError(str(e)) from None


class _Recorder:
    """A file torch.save writes through; it keeps the OSError that torch reports as RuntimeError."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.error: OSError | None = None

    def write(self, data: bytes) -> int:
        try:
            return self.f.write(data)
        except OSError as e:
            self.error = e
            raise

    def flush(self) -> None:
        self.f.flush()


def torch_save(value: Any, path: Path) -> None:
    """`torch.save(value)` into `path`; a failed write is the OSError, not torch's RuntimeError."""
    with path.open("wb") as f:
        recorder = _Recorder(f)
        try:
            torch.save(value, cast(BinaryIO, recorder))  # it calls only write and flush
        except RuntimeError:
            if recorder.error is None:
                raise
            raise recorder.error from None


def save_model(path: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """`save_pretrained` of the model and its tokenizer into `path`, atomically."""
    def write(tmp: Path) -> None:
        with safetensors_io():
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
    if marker.is_file() and _marked(marker) == inputs:
        return
    for name in ("initial", "model", "checkpoints", "adapter"):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    for name in ("metrics.jsonl", "summary.json"):
        (out_dir / name).unlink(missing_ok=True)
    write_json_atomic(marker, {"fingerprint": inputs})


def _marked(marker: Path) -> str:
    """The fingerprint in inputs.json; a garbled one is a UserError, since starting over would
    delete the outputs beside it."""
    try:
        value = json.loads(marker.read_bytes()).get("fingerprint")
    except (ValueError, AttributeError):
        value = None
    if not isinstance(value, str):
        raise UserError(f"{marker}: not the fingerprint Seed writes (garbled); delete it to train "
                        f"afresh in {marker.parent} (its outputs are then replaced)")
    return value


def checkpoints(out_dir: Path) -> list[Path]:
    """The checkpoint directories, oldest first (set-aside `.corrupt` ones are not among them)."""
    return sorted(p for p in (out_dir / "checkpoints").glob("step-*")
                  if STEP_DIR.fullmatch(p.name) and p.is_dir())


def save_checkpoint(out_dir: Path, checkpoint: Checkpoint) -> None:
    """Write `checkpoint` as the newest checkpoint and drop all but the last KEEP."""
    path = out_dir / "checkpoints" / f"step-{checkpoint.step:08d}"
    save_dir_atomic(path, lambda tmp: _write(tmp, checkpoint))
    for old in checkpoints(out_dir)[:-KEEP]:
        shutil.rmtree(old)


def _write(tmp: Path, checkpoint: Checkpoint) -> None:
    tensors, aliases = _untie(checkpoint.model)
    with safetensors_io():
        save_file(tensors, tmp / WEIGHTS)
    torch_save(checkpoint.optimizer, tmp / OPTIMIZER)
    body = {"counters": checkpoint.counters, "scheduler": checkpoint.scheduler,
            "rng": base64.b64encode(checkpoint.rng.cpu().numpy().tobytes()).decode("ascii"),
            "aliases": aliases,
            "files": {name: {"bytes": (tmp / name).stat().st_size, "sha256": hash_path(tmp / name)}
                      for name in (WEIGHTS, OPTIMIZER)}}
    (tmp / STATE).write_text(json.dumps({**body, "digest": hash_json(body)}, indent=1) + "\n")


def _untie(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors safetensors can store (each storage once, contiguous) and the names of the tied
    ones, which load as the same tensor as the name they point to."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    first: dict[tuple[int, int, tuple[int, ...], tuple[int, ...]], str] = {}
    storages: set[int] = set()
    for name, t in state.items():
        t = t.detach()
        view = (t.untyped_storage().data_ptr(), int(t.storage_offset()), tuple(t.shape), t.stride())
        if view in first:
            aliases[name] = first[view]
            continue
        first[view] = name
        shared = t.untyped_storage().data_ptr() in storages
        storages.add(t.untyped_storage().data_ptr())
        tensors[name] = t.clone() if shared or not t.is_contiguous() else t
    return tensors, aliases


def load_checkpoint(path: Path, device: torch.device,
                    expected: Mapping[str, torch.Size]) -> Checkpoint:
    """A checkpoint's state, tensors on `device`; BadCheckpoint if any file is missing, changed
    since it was written, unreadable, or its weights are not those of `expected` (name: shape)."""
    body = _read_state(path)
    for name, meta in body["files"].items():
        _check_file(path / name, meta)
    model = _read_weights(path / WEIGHTS, body["aliases"], device, expected)
    try:
        optimizer = torch.load(path / OPTIMIZER, weights_only=True, map_location=device)
    except Exception as e:  # whatever the bytes are, this file does not load
        raise BadCheckpoint(f"{OPTIMIZER}: {first_line(e)}") from None
    if not (isinstance(optimizer, dict) and {"state", "param_groups"} <= optimizer.keys()):
        raise BadCheckpoint(f"{OPTIMIZER}: not an optimizer's state")
    rng = torch.frombuffer(bytearray(base64.b64decode(body["rng"])), dtype=torch.uint8)
    if rng.numel() != torch.get_rng_state().numel():
        raise BadCheckpoint(f"{STATE}: the RNG state has {rng.numel()} bytes, not "
                            f"{torch.get_rng_state().numel()}")
    return Checkpoint(model, optimizer, body["scheduler"], rng, body["counters"])


def _read_state(path: Path) -> dict[str, Any]:
    """state.json, checked against its own digest and for the keys a resume reads."""
    if not path.is_dir():
        raise BadCheckpoint("not a directory")
    if not (path / STATE).is_file():
        raise BadCheckpoint(f"{STATE} is missing (an incomplete checkpoint)")
    try:
        data = json.loads((path / STATE).read_bytes())
        body = {k: v for k, v in data.items() if k != "digest"}
        ok = data["digest"] == hash_json(body)
        counters, files = body["counters"], body["files"]
        ok = ok and all(isinstance(counters[k], int | float) for k in ("step", "tokens",
                                                                        "elapsed_s"))
        ok = ok and set(files) == {WEIGHTS, OPTIMIZER} and isinstance(body["aliases"], dict)
        ok = ok and isinstance(body["scheduler"], dict) and isinstance(body["rng"], str)
    except (ValueError, KeyError, TypeError, AttributeError):
        ok = False
    if not ok:
        raise BadCheckpoint(f"{STATE}: not a checkpoint's state (garbled or changed)")
    return body


def _check_file(path: Path, meta: Mapping[str, Any]) -> None:
    """The file is there with the size and SHA-256 that state.json recorded."""
    if not path.is_file():
        raise BadCheckpoint(f"{path.name} is missing")
    size = path.stat().st_size
    if size != meta["bytes"]:
        raise BadCheckpoint(f"{path.name}: {size} bytes, {meta['bytes']} written "
                            f"({'truncated' if size < meta['bytes'] else 'grown'})")
    if hash_path(path) != meta["sha256"]:
        raise BadCheckpoint(f"{path.name}: its content changed since it was written "
                            "(SHA-256 mismatch)")


def _read_weights(path: Path, aliases: Mapping[str, str], device: torch.device,
                  expected: Mapping[str, torch.Size]) -> dict[str, torch.Tensor]:
    try:
        tensors = load_file(path, device=str(device))
    except Exception as e:  # whatever the bytes are, this file does not load
        raise BadCheckpoint(f"{WEIGHTS}: {first_line(e)}") from None
    tensors.update({name: tensors[target] for name, target in aliases.items()
                    if target in tensors})
    if {k: tuple(v.shape) for k, v in tensors.items()} != {k: tuple(v)
                                                          for k, v in expected.items()}:
        raise BadCheckpoint(f"{WEIGHTS}: its tensors are not this student's")
    return tensors


def set_aside(path: Path) -> Path:
    """Rename a bad checkpoint to `step-N.corrupt` (`.corrupt-2`, ... if taken); its new path."""
    for n in range(1, 1000):
        target = path.with_name(f"{path.name}.corrupt" + (f"-{n}" if n > 1 else ""))
        if not target.exists():
            os.replace(path, target)
            fsync_path(path.parent)
            return target
    raise FileExistsError(f"{path}: too many set-aside copies beside it")


def keep_metrics_until(path: Path, step: int) -> None:
    """Drop metric lines logged after the checkpoint being resumed from (they will be redone)."""
    if not path.exists():
        return
    kept = [m for m in load_jsonl(path) if m["step"] <= step]
    write_text_atomic(path, "".join(json.dumps(m) + "\n" for m in kept))
