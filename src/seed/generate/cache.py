"""A content-addressed request cache in SQLite: the same request is never paid for twice.

The key is a SHA-256 over the endpoint's identity (base URL, model, route, API version), the
messages and every parameter that shapes the answer (sampling, `n`, logprobs, the response schema).
The value is the answer as JSON. Each answer is committed as soon as it arrives, in WAL mode, so a
`kill -9` loses at most the answers still in flight. The cache knows nothing of records or files.
"""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from seed.files import hash_json


def cache_key(identity: dict[str, Any], messages: list[dict[str, str]],
              params: dict[str, Any]) -> str:
    """The content address of one request (no secret ever enters it)."""
    return hash_json({"endpoint": identity, "messages": messages, "params": params})


class RequestCache:
    """key -> answer (any JSON value); safe to open again after a crash."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        # NORMAL survives a killed process (the WAL is in the OS page cache); only a power cut
        # could lose the last answers, and those are simply asked again.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS answers "
                         "(key TEXT PRIMARY KEY, value TEXT NOT NULL, created REAL NOT NULL)")

    def get(self, key: str) -> Any | None:
        row = self._db.execute("SELECT value FROM answers WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def put(self, key: str, value: Any) -> None:
        self._db.execute("INSERT OR REPLACE INTO answers VALUES (?, ?, ?)",
                         (key, json.dumps(value, ensure_ascii=False), time.time()))

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]

    def close(self) -> None:
        self._db.close()
