"""A content-addressed request cache in SQLite: the same request is never paid for twice.

The key is a SHA-256 over the endpoint's identity (base URL, model, route, API version), the
messages and every parameter that shapes the answer (sampling, `n`, logprobs, the response schema).
The value is the answer as JSON. Each answer is committed as soon as it arrives, in WAL mode, so a
`kill -9` loses at most the answers still in flight. The cache knows nothing of records or files.

A cache file SQLite cannot read (overwritten, truncated, not a database) is a `UserError` naming
it: it may hold answers that were paid for, so it is never deleted or replaced here; the user
moves it away and the run asks again.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from seed.errors import UserError
from seed.files import hash_json

T = TypeVar("T")


def cache_key(identity: dict[str, Any], messages: list[dict[str, str]],
              params: dict[str, Any]) -> str:
    """The content address of one request (no secret ever enters it)."""
    return hash_json({"endpoint": identity, "messages": messages, "params": params})


class RequestCache:
    """key -> answer (any JSON value); safe to open again after a crash."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if self.path.is_dir():
            raise UserError(f"{self.path}: is a directory, not the request cache; move it away")
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = self._checked(lambda: sqlite3.connect(
            self.path, isolation_level=None, check_same_thread=False))
        self._checked(self._open)

    def _open(self) -> None:
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL survives a killed process (the WAL is in the OS page cache); only a power cut
        # could lose the last answers, and those are simply asked again.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS answers "
                         "(key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)")
        self._db.execute("SELECT key, value FROM answers LIMIT 1").fetchall()

    def _checked(self, work: Callable[[], T]) -> T:
        """`work()`, with SQLite's complaint about the file turned into one line naming it."""
        try:
            return work()
        except sqlite3.OperationalError as e:
            if "locked" in str(e):
                raise UserError(f"{self.path}: the request cache is in use by another process "
                                "(another seed generate on this directory?); wait for it to "
                                "finish") from None
            raise self._unreadable(e) from None
        except (sqlite3.DatabaseError, json.JSONDecodeError) as e:
            raise self._unreadable(e) from None

    def _unreadable(self, e: Exception) -> UserError:
        return UserError(f"{self.path}: the request cache is unreadable ({e}); it may hold paid "
                         "answers, so Seed leaves it alone: move it away (or restore it) and rerun")

    def get(self, key: str) -> Any | None:
        row = self._checked(lambda: self._db.execute(
            "SELECT value FROM answers WHERE key = ?", (key,)).fetchone())
        return None if row is None else self._checked(lambda: json.loads(row[0]))

    def put(self, key: str, value: Any) -> None:
        blob = json.dumps(value, ensure_ascii=False)
        self._checked(lambda: self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?)",
                                               (key, blob, time.time())))

    def __len__(self) -> int:
        return self._checked(lambda: self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])

    def close(self) -> None:
        self._db.close()
