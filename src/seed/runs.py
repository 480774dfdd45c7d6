"""A run directory and its manifest: what ran, with which inputs, producing which outputs.

`runs/<name>/manifest.json` holds the recipe, the resolved config, package versions, seeds and,
per stage, its status, timings and the hashes of its inputs and outputs. A stage whose recorded
input hash matches and whose outputs still hash to what was recorded is skipped, so rerunning a
recipe resumes where it stopped. This module knows nothing about what the stages do.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from seed.files import hash_json, hash_path, write_json_atomic

PACKAGES = ("seed", "torch", "transformers", "tokenizers", "reasoning-gym", "pydantic", "httpx")


def now_iso() -> str:
    """The current UTC time, ISO 8601 with seconds."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def package_versions() -> dict[str, str]:
    """Installed versions of the packages a run's results depend on."""
    out = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


class Run:
    """One run directory; the manifest is rewritten atomically after every change."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.manifest_path = self.root / "manifest.json"
        if self.manifest_path.exists():
            self.manifest: dict[str, Any] = json.loads(self.manifest_path.read_text())
        else:
            self.manifest = {"stages": {}}

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
