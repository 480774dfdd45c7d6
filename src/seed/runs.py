"""A run directory and its manifest: what ran, with which inputs, producing which outputs.

`runs/<name>/manifest.json` holds the recipe, the resolved config, package versions, seeds and,
per stage, its status, timings and the hashes of its inputs and outputs. A stage whose recorded
input hash matches and whose outputs still hash to what was recorded is skipped, so rerunning a
recipe resumes where it stopped. This module knows nothing about what the stages do.

`check_output_dir` and `check_output_file` are what every command asks before it writes: can it
write where it was told to? They create nothing, so a refusal leaves no trace.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from seed.errors import UserError
from seed.files import hash_json, hash_path, write_json_atomic

PACKAGES = ("seed", "torch", "transformers", "tokenizers", "reasoning-gym", "pydantic", "httpx")


def now_iso() -> str:
    """The current UTC time, ISO 8601 with seconds."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def check_output_dir(path: str | Path, what: str) -> None:
    """Refuse, naming `what` (a flag or recipe key) and the path, a directory that cannot be made
    or written: one that is a file, sits under a file, or whose nearest existing parent is
    read-only. Creates nothing."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path}: is a file, not a directory; give a directory")
    parent = path
    while not parent.exists():
        if parent.is_symlink():  # a link to nowhere: it cannot be made
            raise UserError(f"{what} {path}: {parent} is a broken link; fix or remove it")
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"{what} {path}: {parent} is a file, so nothing can be made under it; "
                        "give a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{what} {path}: {parent} is not writable; give a directory you can "
                        "write to")


def check_output_file(path: str | Path, what: str) -> None:
    """`check_output_dir` for the directory of a file about to be written, and the file is not a
    directory."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path}: is a directory; give a file name")
    check_output_dir(path.parent, what)


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a run's results depend on."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def read_manifest(path: Path) -> dict[str, Any]:
    """A run's manifest.json; one that is not a JSON object with `stages` is a UserError."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not a readable manifest ({e}); move it away to start the run "
                        "afresh (its stages will run again)") from None
    stages = data.get("stages", {}) if isinstance(data, dict) else None
    if not isinstance(stages, dict) or not all(isinstance(e, dict) for e in stages.values()):
        raise UserError(f"{path}: not a run manifest (expected an object with \"stages\"); move "
                        "it away to start the run afresh")
    data.setdefault("stages", {})
    return data


class Run:
    """One run directory; the manifest is rewritten atomically after every change."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.manifest_path = self.root / "manifest.json"
        self.manifest: dict[str, Any] = {"stages": {}}
        if self.manifest_path.exists():
            self.manifest = read_manifest(self.manifest_path)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def begin(self, name: str, recipe_text: str, config: dict[str, Any], seed: int) -> None:
        """Record what this invocation runs with; earlier stage entries are kept for skipping."""
        self.root.mkdir(parents=True, exist_ok=True)
        self.manifest.update(
            name=name,
            recipe=recipe_text,
            config=config,
            seed=seed,
            versions=package_versions(),
            updated_at=now_iso(),
        )
        self.manifest.setdefault("stages", {})
        self.save()

    def save(self) -> None:
        write_json_atomic(self.manifest_path, self.manifest)

    def inputs_hash(self, config: Any, inputs: list[Path]) -> str:
        """One hash over a stage's config and the content of its input files."""
        return hash_json({"config": config, "inputs": {str(p): hash_path(p) for p in inputs}})

    def is_fresh(self, stage: str, inputs_hash: str) -> bool:
        """True when the stage finished with these inputs and its outputs are unchanged since."""
        entry = self.manifest["stages"].get(stage)
        if not entry or entry.get("status") != "done" or entry.get("inputs_hash") != inputs_hash:
            return False
        return all(hash_path(self.root / p) == h for p, h in entry.get("outputs", {}).items())

    @contextmanager
    def stage(self, stage: str, inputs_hash: str, outputs: list[str]) -> Iterator[dict[str, Any]]:
        """Run a stage: mark it running, and on success record timings and output hashes.

        The caller fills the yielded dict with figures worth keeping (counts, accuracy, ...).
        """
        info: dict[str, Any] = {}
        entry: dict[str, Any] = {"status": "running", "started_at": now_iso(),
                                 "inputs_hash": inputs_hash}
        self.manifest["stages"][stage] = entry
        self.save()
        t0 = time.perf_counter()
        try:
            yield info
        except BaseException:
            entry.update(status="failed", seconds=round(time.perf_counter() - t0, 2))
            self.save()
            raise
        entry.update(
            status="done",
            finished_at=now_iso(),
            seconds=round(time.perf_counter() - t0, 2),
            outputs={p: hash_path(self.root / p) for p in outputs},
            info=info,
        )
        self.save()

    def skipped(self, stage: str) -> None:
        self.manifest["stages"][stage]["last_skipped_at"] = now_iso()
        self.save()
