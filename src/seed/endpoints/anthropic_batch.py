"""Anthropic's Message Batches as a `BatchProvider` (seed.generate.batch_protocol).

One shard is one batch: `POST /v1/messages/batches {requests: [{custom_id, params}]}` (each
`params` built by the online endpoint's `body()`, so a batch answer is the online answer), polled
with `GET /v1/messages/batches/{id}` (`processing_status` in_progress, canceling, ended) and read
back from its `results_url` (JSONL of `{custom_id, result: {type: succeeded | errored | canceled |
expired, message | error}}`, each message parsed by the online endpoint's `parse()`). Limits:
100,000 requests and 256 MB a batch. Everything rides on the online endpoint
(`AnthropicEndpoint`): its base URL, its headers (the key among them, never logged or written).

Finding a batch whose id never reached the ledger (a kill between Anthropic's answer to the POST
and the ledger write): Anthropic batches carry no metadata, so a batch is matched on what the
ledger does know. Candidates are the batches listed (newest first) created no earlier than
`LOOK_BACK` seconds before the shard was recorded (clock skew), holding exactly the shard's number
of requests, and not already known (a batch this provider submitted or found, or one the ledger
holds for another shard: the runner's `taken`). An ended candidate is confirmed by the custom_ids
of its results (the runner's `keys`), and one that does not hold exactly those is dropped. Of the
candidates left, the oldest is taken: shards are submitted one at a time in ledger order, so the
first unclaimed batch of that size after the shard was recorded is its own.

Residual risk, stated plainly: another client on the same Anthropic workspace that submits a batch
of exactly the same size inside that window, before this one has ended, cannot be told apart; then
this shard would read that batch's results, find none of its own custom_ids, and the runner sends
them again online (paid at online prices; nothing is submitted twice to the batch API, nothing is
lost). A shard whose batch was never created and that matches such a foreign batch is likewise
retried online instead of being submitted. This module does not cache, charge or retry: the runner
(seed.generate.batch) does.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from seed.endpoints.anthropic import AnthropicEndpoint
from seed.endpoints.base import Completion, PromptRefused, TransientError
from seed.errors import UserError
from seed.generate.batch_protocol import ItemError, JobState, Note

MAX_REQUESTS = 100_000
MAX_BYTES = 256 * 1000 * 1000
PAGE = 100  # batches per page when looking for a lost one
LOOK_BACK = 600.0  # seconds before a shard's ledger time a batch of it may have been created
PATH = "/v1/messages/batches"
# Errors inside a batch that asking again can fix; any other (invalid_request_error, ...) cannot.
RETRYABLE = {"overloaded_error", "api_error", "rate_limit_error", "timeout_error"}


def _created(batch: dict[str, Any]) -> float | None:
    try:
        return datetime.fromisoformat(str(batch.get("created_at"))).timestamp()
    except ValueError:
        return None


def _total(batch: dict[str, Any]) -> int:
    counts = batch.get("request_counts")
    if not isinstance(counts, dict):
        return 0
    return sum(int(v) for v in counts.values() if isinstance(v, int))


class AnthropicBatch:
    """Message Batches behind one `AnthropicEndpoint` (Anthropic, or a server speaking it)."""

    route = "anthropic"
    max_requests = MAX_REQUESTS
    max_bytes = MAX_BYTES

    def __init__(self, endpoint: AnthropicEndpoint) -> None:
        self.endpoint = endpoint
        self._known: set[str] = set()  # batches this run submitted or found: never found again
        self._results_url: dict[str, str] = {}

    def line(self, custom_id: str, messages: list[dict[str, str]],
             params: dict[str, Any]) -> dict[str, Any]:
        if int(params.get("n", 1)) > 1:
            raise UserError("generate.samples > 1 with an anthropic batch teacher: a batch item "
                            "answers once (Anthropic has no `n`); set generate.samples = 1, or "
                            "set generate.teacher.batch = false")
        return {"custom_id": custom_id, "params": self.endpoint.body(messages, params)}

    async def _json(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        resp = await self.endpoint.request(method, path, **kwargs)
        self.endpoint.check(resp)
        try:
            data = resp.json()
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise TransientError(f"{path}: the answer is not a JSON object")
        return data

    async def submit(self, shard_id: str, lines: list[dict[str, Any]],
                     steps: dict[str, str], note: Note) -> str:
        data = await self._json("POST", PATH, json={"requests": lines})
        job = data.get("id")
        if not isinstance(job, str):
            raise TransientError("creating a message batch: the answer has no batch id")
        note("job", job)
        self._known.add(job)
        return job

    async def _custom_ids(self, batch: dict[str, Any]) -> set[str] | None:
        url = batch.get("results_url")
        if batch.get("processing_status") != "ended" or not isinstance(url, str):
            return None
        resp = await self.endpoint.request("GET", url)
        self.endpoint.check(resp)
        ids = set()
        for raw in resp.text.splitlines():
            try:
                item = json.loads(raw) if raw.strip() else None
            except ValueError:
                continue
            if isinstance(item, dict) and isinstance(item.get("custom_id"), str):
                ids.add(item["custom_id"])
        return ids

    async def find(self, shard_id: str, steps: dict[str, str], since: float, count: int, *,
                   keys: list[str] | None = None, taken: Iterable[str] = ()) -> str | None:
        """The batch of this shard that Anthropic holds though the ledger lost its id, or None
        (the rule and its residual risk are in the module docstring)."""
        skip = self._known | set(taken)
        candidates: list[tuple[float, dict[str, Any]]] = []
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": PAGE}
            if after:
                params["after_id"] = after
            data = await self._json("GET", PATH, params=params)
            page = [b for b in data.get("data") or [] if isinstance(b, dict)]
            done = not data.get("has_more") or not page
            for b in page:
                created = _created(b)
                if created is None or created < since - LOOK_BACK:
                    done = True  # newest first: the rest are older still
                    continue
                if b.get("id") not in skip and _total(b) == count:
                    candidates.append((created, b))
            if done:
                break
            after = str(page[-1].get("id"))
        for _, b in sorted(candidates, key=lambda c: c[0]):
            if keys is not None and (ids := await self._custom_ids(b)) is not None \
                    and ids != set(keys):
                continue
            job = str(b["id"])
            self._known.add(job)
            return job
        return None

    async def poll(self, job_id: str) -> JobState:
        data = await self._json("GET", f"{PATH}/{job_id}")
        status = str(data.get("processing_status") or "unknown")
        raw = data.get("request_counts")
        counts: dict[str, Any] = raw if isinstance(raw, dict) else {}

        def n(key: str) -> int:
            v = counts.get(key)
            return v if isinstance(v, int) else 0

        if isinstance(url := data.get("results_url"), str):
            self._results_url[job_id] = url
        return JobState(status=status, ended=status == "ended", total=_total(data),
                        completed=n("succeeded"),
                        failed_items=n("errored") + n("canceled") + n("expired"))

    def _item(self, result: Any) -> list[Completion] | ItemError:
        if not isinstance(result, dict):
            return ItemError("the batch item has no result")
        kind = result.get("type")
        if kind in ("expired", "canceled"):
            return ItemError(f"batch item {kind}", retry=True, expired=True)
        if kind == "errored":
            err = result.get("error")
            inner = err.get("error", err) if isinstance(err, dict) else {}
            etype = str(inner.get("type") or "error") if isinstance(inner, dict) else "error"
            msg = str(inner.get("message") or "") if isinstance(inner, dict) else ""
            return ItemError(f"{etype}: {msg}".strip().rstrip(":"), retry=etype in RETRYABLE)
        if kind != "succeeded":
            return ItemError(f"the batch item's result type is {kind!r}")
        try:
            return [self.endpoint.parse(result.get("message"))]
        except PromptRefused as e:
            return ItemError(f"refused: {e}", retry=False)
        except (ValueError, KeyError, TypeError, AttributeError):
            return ItemError("the batch item's message is not a message")

    async def results(self, job_id: str) -> dict[str, list[Completion] | ItemError]:
        url = self._results_url.get(job_id) or f"{PATH}/{job_id}/results"
        resp = await self.endpoint.request("GET", url)
        self.endpoint.check(resp)
        out: dict[str, list[Completion] | ItemError] = {}
        for raw in resp.text.splitlines():
            if not raw.strip():
                continue
            try:
                item = json.loads(raw)
            except ValueError:
                continue  # a torn line: its custom_id counts as not answered, and is retried
            if isinstance(item, dict) and isinstance(item.get("custom_id"), str):
                out[item["custom_id"]] = self._item(item.get("result"))
        return out

    async def aclose(self) -> None:
        return None  # the endpoint's clients are the endpoint's to close

