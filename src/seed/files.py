"""Atomic writes and content hashes: the two file operations every stage needs.

A file is written to a temporary name beside its target and renamed over it, so a reader sees the
old file or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | Path, text: str) -> None:
    """Replace `path` with `text` in one rename; a crash leaves the old content intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write `data` as indented JSON, atomically."""
    write_text_atomic(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def hash_path(path: str | Path) -> str | None:
    """SHA-256 of a file, or of a directory's files (names and contents, sorted); None if missing.

    In a directory, `README.md` is left out: it is a card that describes the content (a model
    card), rewritten as results arrive, and must not make the content look changed.
    """
    path = Path(path)
    if not path.exists():
        return None
    h = hashlib.sha256()
    files = ([path] if path.is_file() else
             sorted(p for p in path.rglob("*") if p.is_file() and p.name != "README.md"))
    for p in files:
        if path.is_dir():
            h.update(str(p.relative_to(path)).encode() + b"\0")
        with p.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def hash_json(data: Any) -> str:
    """SHA-256 of a JSON-able value in canonical form (sorted keys)."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()
