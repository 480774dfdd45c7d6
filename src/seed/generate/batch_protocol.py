"""What a provider's batch API must offer Seed's batch runner (`seed.generate.batch`).

A provider (OpenAI's and Azure's Batch API in `seed.endpoints.openai_batch`, Anthropic's Message
Batches in `seed.endpoints.anthropic_batch`) turns requests into the provider's batch lines,
submits a shard of them as one job, reports each id it gets back, finds a job again after a crash,
polls it and reads its results. It knows nothing of the cache, the ledger, the budget or records:
the runner does all of that, the same way for every provider.

custom_ids: the runner names each request by its request-cache key (`cache_key`, 64 hex
characters: within Anthropic's `^[a-zA-Z0-9_-]{1,64}$` and OpenAI's limits), so an answer read
back from a job is stored under exactly the key the online engine would have used. Requests with
the same key are sent once. A provider must hand back the custom_ids unchanged.

This module only defines types; it sends nothing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from seed.endpoints.base import Completion

# note(step, id): the runner writes `id` into the ledger under `step` ("file", "job", ...) before
# it returns, so a kill right after it loses nothing. Call it as soon as the provider returns an id.
Note = Callable[[str, str], None]


@dataclass
class ItemError:
    """One request of a job that came back without an answer.

    `reason` is the provider's, in one line (e.g. "batch_expired", "HTTP 400: invalid model").
    `retry` is True where asking again could succeed (the job expired or was cancelled before the
    item ran, a 429 or 5xx inside the job): the runner sends it through the online engine when
    the recipe allows; False where the request itself is at fault (a 400): it goes to
    failed.jsonl. `expired` marks items the job never reached (counted apart in the summary).
    `paid` is set when the provider billed an answer that cannot be used (its usage as sent).
    """

    reason: str
    retry: bool = True
    expired: bool = False
    paid: dict[str, Any] | None = None


@dataclass
class JobState:
    """One poll of a job: the provider's own status word and its counts.

    `ended` is True once the job will change no more (completed, failed, expired, cancelled,
    Anthropic's "ended"): then `results()` may be called. `failed` holds the provider's reason
    when the whole job was refused (validation failed): no item of it was answered, and
    `results()` is not called; every item is retried online or failed, as an `ItemError` would be.
    """

    status: str
    ended: bool
    total: int = 0
    completed: int = 0
    failed_items: int = 0
    failed: str | None = None


class BatchProvider(Protocol):
    """One provider's batch API behind one endpoint (its model, key, base URL and headers)."""

    route: str
    """What records say answered (`Teacher.api = "batch"` is set by the runner; this names the
    provider's API for the ledger and messages, e.g. "openai", "azure", "anthropic")."""

    max_requests: int
    """The most requests one job may hold (OpenAI 50,000; Anthropic 100,000)."""

    max_bytes: int
    """The most bytes one job's input may hold, counted as `len(json.dumps(line)) + 1` per line
    (UTF-8; OpenAI 200 MB a file; Anthropic 256 MB a request); the runner keeps a margin."""

    def line(self, custom_id: str, messages: list[dict[str, str]],
             params: dict[str, Any]) -> dict[str, Any]:
        """The request as one JSON object of the provider's batch input (OpenAI: {custom_id,
        method, url, body}; Anthropic: {custom_id, params}); the body is built exactly as the
        online endpoint builds it, so the answer is the same. `UserError` for a parameter the
        batch API cannot carry."""
        ...

    async def submit(self, shard_id: str, lines: list[dict[str, Any]],
                     steps: dict[str, str], note: Note) -> str:
        """Send one shard; return the job id.

        `steps` holds the ids this shard already has in the ledger (after a crash: e.g. a file
        uploaded whose job was never created); a step already there is not done again. Every id
        the provider returns is passed to `note(step, id)` at once; the job's id is noted as
        `note("job", id)` (the runner also stores the return value). The shard id must travel
        with the job where the provider allows it (OpenAI: the file name and the batch's
        `metadata`), so that `find` can match it. `UserError` when the provider refuses the job
        for a reason retrying cannot fix (401, 403, a bad model)."""
        ...

    async def find(self, shard_id: str, steps: dict[str, str], since: float,
                   count: int, *, keys: list[str], taken: set[str]) -> str | None:
        """The id of a job for this shard that the provider already holds though its id never
        reached the ledger (the process died between the provider's answer and `note`), or None
        when there is none and `submit` must send it. `since` is the Unix time the shard was
        recorded (before anything was sent), `count` its number of requests, `keys` its
        custom_ids, `taken` the job ids the ledger holds for other shards (never this one's):
        for providers whose jobs carry no shard id (Anthropic), the rule that matches a job on
        them is the provider's to define and document. Called only when `steps` has no "job"."""
        ...

    async def poll(self, job_id: str) -> JobState:
        """The job's state now (one request); `TransientError` when the provider cannot say now."""
        ...

    async def results(self, job_id: str) -> dict[str, list[Completion] | ItemError]:
        """Every item of an ended job by custom_id: its `Completion`s (parsed exactly as the
        online endpoint parses an answer, `usage` as the provider sent it) or an `ItemError`.
        Items the job never reached (expired, cancelled) may be missing: the runner treats a
        missing custom_id as `ItemError("not answered by the batch job", expired=True)`."""
        ...

    async def aclose(self) -> None:
        """Release connections."""
        ...
