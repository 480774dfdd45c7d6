"""Atomic writes, content hashes and the one JSONL reader for files that are not records.

A file is written to a temporary name beside its target and renamed over it, so a reader sees the
old file or the new one, never half of one.

`read_jsonl` reads every JSONL file that is not a records file (metrics, samples, judgments,
grades, prompts, questions, imported datasets); records have their own reader in records.py. Its
one torn-line rule: a writer that appends one whole line per `write()` can leave, when killed, at
most a last line without its newline. Such a last line is kept when it parses (a file written by
hand often ends without a newline) and skipped with a warning when it does not (a torn write);
any other line that is not JSON is an error naming the file and line. Blank lines are skipped.
This module knows nothing about what the lines mean: callers check their fields.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from seed.errors import UserError

log = logging.getLogger(__name__)


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


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Stream `(line number, value)` for each JSON line of a file (gzipped when it ends in `.gz`).

    Follows the torn-line rule in the module docstring; a missing file is a UserError.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; check the path")
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        # Binary lines split at b"\n" only: JSON text may hold U+2028 and other line breaks.
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                value = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                if not raw.endswith(b"\n"):
                    log.warning("%s:%d: torn last line (%d bytes) skipped", path, lineno, len(raw))
                    return
                why = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8 text"
                raise UserError(f"{path}:{lineno}: not valid JSON ({why}); "
                                "fix or remove that line") from None
            yield lineno, value


def load_jsonl(path: str | Path) -> list[Any]:
    """Every value of a JSONL file, in order (see `read_jsonl`)."""
    return [value for _, value in read_jsonl(path)]
