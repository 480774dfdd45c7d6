"""Durable writes, content hashes, and the one torn-line rule of every JSONL file.

A file is written to a temporary name beside its target, fsynced, renamed over it, and the rename
made durable by an fsync of the directory, so a reader (or a machine after a power cut) sees the
old file or the new one, never half of one; `fsync_tree` does the same for a directory written
under a temporary name.

`read_jsonl` reads every JSONL file that is not a records file (metrics, samples, judgments,
grades, prompts, questions, imported datasets); records have their own reader in records.py. Its
one torn-line rule: a writer that appends one whole line per `write()` can leave, when killed, at
most a last line without its newline. Such a last line is kept when it parses (a file written by
hand often ends without a newline) and skipped with a warning when it does not (a torn write);
any other line that is not JSON is an error naming the file and line. Blank lines are skipped.
`jsonl_lines` applies the same rule to raw lines for readers that parse them their own way (the
records reader). An appender calls `seal_jsonl` (or `append_jsonl`) first, so its next line never
lands on the end of a last line without a newline: a last line that parses gets its newline, a
torn one is cut off. This module knows nothing about what the lines mean: callers check their
fields.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, BinaryIO

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
    fsync_path(path.parent)


def fsync_path(path: str | Path) -> None:
    """Make a file's contents, or a directory's entries (a rename or a new file in it), durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: str | Path) -> None:
    """fsync every file and directory under `path` (itself included), deepest first."""
    for root, _, files in os.walk(path, topdown=False):
        for name in files:
            fsync_path(os.path.join(root, name))
        fsync_path(root)


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


def jsonl_lines(path: str | Path) -> Iterator[tuple[int, bytes]]:
    """Stream `(line number, raw line)` for each non-blank line of a JSONL file (gzipped when it
    ends in `.gz`); a last line without its newline comes only if it parses as JSON (else it is
    a torn write, skipped with a warning). A missing file is a UserError."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; check the path")
    opener = gzip.open if path.name.endswith(".gz") else open
    with opener(path, "rb") as f:
        # Binary lines split at b"\n" only: JSON text may hold U+2028 and other line breaks.
        for lineno, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            if not raw.endswith(b"\n") and not parses(raw):
                log.warning("%s:%d: torn last line (%d bytes) skipped", path, lineno, len(raw))
                return
            yield lineno, raw


def parses(raw: bytes) -> bool:
    """Whether `raw` is one whole JSON value in UTF-8."""
    try:
        json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    return True


def read_jsonl(path: str | Path) -> Iterator[tuple[int, Any]]:
    """Stream `(line number, value)` for each JSON line of a file (gzipped when it ends in `.gz`).

    Follows the torn-line rule in the module docstring; a missing file is a UserError.
    """
    for lineno, raw in jsonl_lines(path):
        try:
            value = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            why = e.msg if isinstance(e, json.JSONDecodeError) else "not UTF-8 text"
            raise UserError(f"{path}:{lineno}: not valid JSON ({why}); "
                            "fix or remove that line") from None
        yield lineno, value


def load_jsonl(path: str | Path) -> list[Any]:
    """Every value of a JSONL file, in order (see `read_jsonl`)."""
    return [value for _, value in read_jsonl(path)]


def seal_jsonl(path: str | Path) -> int:
    """Make a JSONL file end at a line boundary before appending to it; the bytes cut off.

    A last line without its newline gets one when it parses as JSON (a file ended by hand) and is
    cut off when it does not (a write torn by a kill). A missing or empty file is left as it is.
    """
    path = Path(path)
    if not path.is_file():
        return 0
    with path.open("rb+") as f:
        size = f.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        f.seek(size - 1)
        if f.read(1) == b"\n":
            return 0
        start = _last_line_start(f, size)
        f.seek(start)
        if parses(f.read(size - start)):
            f.write(b"\n")
            cut = 0
        else:
            f.truncate(start)
            cut = size - start
        f.flush()
        os.fsync(f.fileno())
    return cut


def truncate_to(path: str | Path, size: int) -> int:
    """Cut a file to its first `size` bytes, durably (fsynced); the bytes cut off."""
    with Path(path).open("rb+") as f:
        end = f.seek(0, os.SEEK_END)
        f.truncate(size)
        f.flush()
        os.fsync(f.fileno())
    return end - size


def _last_line_start(f: BinaryIO, size: int) -> int:
    """The offset just past the last newline of an open binary file of `size` bytes (0: none)."""
    pos, chunk = size, 1 << 16
    while pos > 0:
        start = max(0, pos - chunk)
        f.seek(start)
        nl = f.read(pos - start).rfind(b"\n")
        if nl >= 0:
            return start + nl + 1
        pos = start
    return 0


def lines_backward(path: str | Path, block: int = 1 << 16) -> Iterator[tuple[int, bytes]]:
    """Stream `(offset, raw line)` for each non-blank line of a plain file, last line first,
    without its newline; a reader of a file's tail (the last write) needs no pass over the rest."""
    with Path(path).open("rb") as f:
        pos, carry = f.seek(0, os.SEEK_END), b""
        while pos > 0:
            start = max(0, pos - block)
            f.seek(start)
            pieces = (f.read(pos - start) + carry).split(b"\n")
            # The first piece may be the end of a line that starts further back: kept for later.
            carry = pieces.pop(0) if start > 0 else b""
            offset = start + (len(carry) + 1 if start > 0 else 0)
            lines = []
            for piece in pieces:
                lines.append((offset, piece))
                offset += len(piece) + 1
            yield from ((o, line) for o, line in reversed(lines) if line.strip())
            pos = start


def append_jsonl(path: str | Path, values: Iterable[Any]) -> None:
    """Append one JSON line per value to `path` in one write, each on a line of its own."""
    path = Path(path)
    text = "".join(json.dumps(v, ensure_ascii=False) + "\n" for v in values)
    seal_jsonl(path)
    with path.open("a", encoding="utf-8") as f:
        f.write(text)
