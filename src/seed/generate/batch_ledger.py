"""The batch ledger: every shard a batch run sends, and every id the provider gave back for it.

A table `batch_shards` in the run's `cache.sqlite` (beside the request cache's `answers`, same
file, WAL mode). A shard's row is written before any of its requests leaves the machine, with the
custom_ids (request-cache keys) it holds and the most it can cost; each id the provider returns
(file, job) is written the moment it arrives. After a kill -9, a rerun reads the rows not yet
collected and resumes them: it polls jobs it already has, asks the provider for jobs whose id never
arrived, and only then submits. Each write is one autocommitted statement, so a row is either
there whole or not at all.

The ledger holds ids and keys only: no request text, no key, no header. It does not talk to any
provider (`seed.generate.batch` does).
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

from seed.errors import UserError

RECORDED, SUBMITTED, COLLECTED, DROPPED = "recorded", "submitted", "collected", "dropped"


@dataclass
class Shard:
    shard_id: str
    route: str
    created: float
    keys: list[str]
    bound_cost: float | None = None  # worst-case dollars at batch prices, None without a price
    bound_tokens: int = 0  # worst-case tokens
    steps: dict[str, str] = field(default_factory=dict)
    state: str = RECORDED


class Ledger:
    """The `batch_shards` table of one cache file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False,
                                       timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS batch_shards (shard_id TEXT PRIMARY KEY, "
                "route TEXT NOT NULL, created REAL NOT NULL, keys TEXT NOT NULL, "
                "bound_cost REAL, bound_tokens INTEGER NOT NULL, steps TEXT NOT NULL, "
                "state TEXT NOT NULL, updated REAL NOT NULL)")
        except sqlite3.DatabaseError as e:
            raise UserError(f"{self.path}: the batch ledger cannot be opened ({e}); it may name "
                            "paid batch jobs, so Seed leaves it alone: move it away (or restore "
                            "it) and rerun") from None

    def record(self, shard: Shard) -> None:
        """Write a new shard before anything of it is sent."""
        self._db.execute("INSERT INTO batch_shards VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                         (shard.shard_id, shard.route, shard.created, json.dumps(shard.keys),
                          shard.bound_cost, shard.bound_tokens, json.dumps(shard.steps),
                          shard.state, time.time()))

    def note(self, shard: Shard, step: str, value: str) -> None:
        """One id the provider returned for this shard (a file, a job), committed on return."""
        shard.steps[step] = value
        if step == "job":
            shard.state = SUBMITTED
        self._db.execute("UPDATE batch_shards SET steps = ?, state = ?, updated = ? "
                         "WHERE shard_id = ?",
                         (json.dumps(shard.steps), shard.state, time.time(), shard.shard_id))

    def set_state(self, shard: Shard, state: str) -> None:
        shard.state = state
        self._db.execute("UPDATE batch_shards SET state = ?, updated = ? WHERE shard_id = ?",
                         (state, time.time(), shard.shard_id))

    def open_shards(self) -> list[Shard]:
        """The shards not yet collected (nor dropped), oldest first."""
        rows = self._db.execute(
            "SELECT shard_id, route, created, keys, bound_cost, bound_tokens, steps, state "
            "FROM batch_shards WHERE state IN (?, ?) ORDER BY created, shard_id",
            (RECORDED, SUBMITTED)).fetchall()
        return [Shard(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], json.loads(r[6]), r[7])
                for r in rows]

    def all_shards(self) -> list[Shard]:
        rows = self._db.execute(
            "SELECT shard_id, route, created, keys, bound_cost, bound_tokens, steps, state "
            "FROM batch_shards ORDER BY created, shard_id").fetchall()
        return [Shard(r[0], r[1], r[2], json.loads(r[3]), r[4], r[5], json.loads(r[6]), r[7])
                for r in rows]

    def close(self) -> None:
        self._db.close()
