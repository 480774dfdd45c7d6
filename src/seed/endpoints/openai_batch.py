"""OpenAI's Batch API, and Azure OpenAI's, as a `BatchProvider` (seed.generate.batch_protocol).

One shard is one job: its lines uploaded as a JSONL file (`POST files`, purpose `batch`, named
`seed-<shard id>.jsonl`), then a batch created on it (`POST batches` with the chat-completions
endpoint, the completion window and `metadata.seed_shard = <shard id>`), polled (`GET
batches/ID`) and read back (`GET files/ID/content` for the output and the error file). Azure's
variant is the same under `/openai/` with `?api-version=`, a global-batch deployment named as the
model, and that deployment in each line's body (Azure reads `model` there).

Everything rides on the online endpoint (`OpenAIEndpoint`): its base URL and route, its headers
(the key among them, never logged or written), `body()` for each line and `parse()` for each
answer, so a batch answer is the online answer. A job whose id never reached the ledger is found
again by its `metadata.seed_shard`, an uploaded file by its name, before anything is sent again.
This module does not cache, charge or retry: the runner (seed.generate.batch) does.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import httpx

from seed.endpoints.base import Completion, TransientError
from seed.endpoints.http import retry_after, server_message, transport_errors
from seed.endpoints.openai import FATAL_STATUS, OpenAIEndpoint
from seed.errors import UserError
from seed.generate.batch_protocol import ItemError, JobState, Note

ENDED = {"completed", "failed", "expired", "cancelled"}
MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 1024 * 1024
PAGE = 100  # batches per page when looking for a lost job
LOOK_BACK = 600.0  # seconds before a shard's ledger time a job of it may claim (clock skew)


class OpenAIBatch:
    """The Batch API behind one `OpenAIEndpoint` (OpenAI, Azure, or a server speaking it)."""

    max_requests = MAX_REQUESTS
    max_bytes = MAX_BYTES

    def __init__(self, endpoint: OpenAIEndpoint, completion_window: str = "24h",
                 timeout: float = 300.0) -> None:
        self.endpoint = endpoint
        self.route = "azure" if endpoint.route == "azure" else "openai"
        self.completion_window = completion_window
        # The chat path as batch lines and the batch's `endpoint` name it (Azure: no /v1).
        self.chat_path = "/chat/completions" if self.route == "azure" else "/v1/chat/completions"
        self._client = httpx.AsyncClient(headers=endpoint.request_headers(),
                                         timeout=httpx.Timeout(timeout, connect=30.0))
        # custom_id -> the response schema its answer is checked against (from `line`)
        self._schemas: dict[str, dict[str, Any] | None] = {}
        self._files: dict[str, tuple[Any, Any]] = {}  # job -> (output file, error file), polled

    def line(self, custom_id: str, messages: list[dict[str, str]],
             params: dict[str, Any]) -> dict[str, Any]:
        body = self.endpoint.body(messages, params)
        if self.route == "azure":
            body["model"] = self.endpoint.model  # the global-batch deployment
        if params.get("response_schema") is not None:
            self._schemas[custom_id] = params["response_schema"]
        return {"custom_id": custom_id, "method": "POST", "url": self.chat_path, "body": body}

    async def _call(self, method: str, path: str, what: str, **kwargs: Any) -> httpx.Response:
        url = self.endpoint.api_url(path)
        if query := kwargs.pop("params", None):  # httpx's params would drop Azure's api-version
            url += ("&" if "?" in url else "?") + urlencode(query)
        with transport_errors(self.endpoint.base_url, what):
            resp = await self._client.request(method, url, **kwargs)
        if resp.status_code in FATAL_STATUS:
            raise UserError(f"the batch API at {self.endpoint.base_url} refused {what} (HTTP "
                            f"{resp.status_code}: {server_message(resp)}); check the "
                            "model (on Azure a global-batch deployment), the key and "
                            "generate.batch")
        if resp.status_code == 429 or resp.status_code >= 500 or resp.status_code == 408:
            raise TransientError(f"{what}: HTTP {resp.status_code}: {server_message(resp)}",
                                 retry_after(resp.headers))
        if not resp.is_success:
            raise TransientError(f"{what}: HTTP {resp.status_code}: {server_message(resp)}")
        return resp

    async def _json(self, method: str, path: str, what: str, **kwargs: Any) -> dict[str, Any]:
        resp = await self._call(method, path, what, **kwargs)
        try:
            data = resp.json()
        except ValueError:
            raise TransientError(f"{what}: the answer is not JSON") from None
        if not isinstance(data, dict):
            raise TransientError(f"{what}: the answer is not a JSON object")
        return data

    async def _find_file(self, name: str) -> str | None:
        data = await self._json("GET", "files", "listing files", params={"purpose": "batch"})
        for f in data.get("data") or []:
            if isinstance(f, dict) and f.get("filename") == name and f.get("id"):
                return str(f["id"])
        return None

    async def submit(self, shard_id: str, lines: list[dict[str, Any]],
                     steps: dict[str, str], note: Note) -> str:
        name = f"seed-{shard_id}.jsonl"
        file_id = steps.get("file") or await self._find_file(name)
        if file_id is None:
            blob = "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)
            data = await self._json("POST", "files", "uploading a batch file",
                                    data={"purpose": "batch"},
                                    files={"file": (name, blob.encode(), "application/jsonl")})
            if not isinstance(data.get("id"), str):
                raise TransientError("uploading a batch file: the answer has no file id")
            file_id = data["id"]
        if steps.get("file") != file_id:
            note("file", file_id)
        job = await self._json("POST", "batches", "creating a batch", json={
            "input_file_id": file_id, "endpoint": self.chat_path,
            "completion_window": self.completion_window,
            "metadata": {"seed_shard": shard_id}})
        if not isinstance(job.get("id"), str):
            raise TransientError("creating a batch: the answer has no batch id")
        note("job", job["id"])
        return str(job["id"])

    async def find(self, shard_id: str, steps: dict[str, str], since: float,
                   count: int, *, keys: list[str], taken: set[str]) -> str | None:
        # `keys` and `taken` are for providers without metadata: the shard id matches here
        after: str | None = None
        while True:
            params: dict[str, Any] = {"limit": PAGE}
            if after:
                params["after"] = after
            data = await self._json("GET", "batches", "listing batches", params=params)
            page = [b for b in data.get("data") or [] if isinstance(b, dict)]
            for b in page:
                meta = b.get("metadata")
                if isinstance(meta, dict) and meta.get("seed_shard") == shard_id and b.get("id"):
                    return str(b["id"])
            # Newest first: a page that reaches back before the shard was recorded is the last.
            oldest = min((b.get("created_at") or 0 for b in page), default=0)
            if not data.get("has_more") or not page or oldest < since - LOOK_BACK:
                return None
            after = str(page[-1].get("id"))

    async def poll(self, job_id: str) -> JobState:
        data = await self._json("GET", f"batches/{job_id}", "polling a batch")
        status = str(data.get("status") or "unknown")
        raw = data.get("request_counts")
        counts: dict[str, Any] = raw if isinstance(raw, dict) else {}
        failed = None
        if status == "failed":
            errors = (data.get("errors") or {}).get("data") if isinstance(
                data.get("errors"), dict) else None
            first = errors[0] if isinstance(errors, list) and errors else {}
            failed = str(first.get("message") or first.get("code") or "validation failed") \
                if isinstance(first, dict) else "validation failed"
        self._files[job_id] = (data.get("output_file_id"), data.get("error_file_id"))
        return JobState(status=status, ended=status in ENDED, total=int(counts.get("total") or 0),
                        completed=int(counts.get("completed") or 0),
                        failed_items=int(counts.get("failed") or 0), failed=failed)

    async def _lines(self, file_id: str) -> list[dict[str, Any]]:
        resp = await self._call("GET", f"files/{file_id}/content", "reading a batch file")
        out = []
        for raw in resp.text.splitlines():
            if not raw.strip():
                continue
            try:
                item = json.loads(raw)
            except ValueError:
                raise TransientError("reading a batch file: a line is not JSON") from None
            if isinstance(item, dict) and isinstance(item.get("custom_id"), str):
                out.append(item)
        return out

    def _item(self, item: dict[str, Any]) -> list[Completion] | ItemError:
        err = item.get("error")
        if isinstance(err, dict) and err:
            code = str(err.get("code") or "error")
            expired = code in ("batch_expired", "batch_cancelled")
            return ItemError(f"{code}: {err.get('message') or ''}".strip().rstrip(":"),
                             retry=True, expired=expired)
        resp = item.get("response")
        if not isinstance(resp, dict):
            return ItemError("the batch line has neither a response nor an error")
        status, body = resp.get("status_code"), resp.get("body")
        if status != 200:
            msg = body.get("error", {}).get("message") if isinstance(body, dict) and isinstance(
                body.get("error"), dict) else None
            num = status if isinstance(status, int) else 0
            return ItemError(f"HTTP {status}: {msg or 'error'}",
                             retry=num in (408, 429) or num >= 500)
        try:
            return self.endpoint.parse(body, self._schemas.get(item["custom_id"]))
        except TransientError as e:
            return ItemError(e.reason, paid=e.paid[1] if e.paid is not None else None)

    async def results(self, job_id: str) -> dict[str, list[Completion] | ItemError]:
        files = self._files.get(job_id)
        if files is None:
            await self.poll(job_id)
            files = self._files[job_id]
        out: dict[str, list[Completion] | ItemError] = {}
        for file_id in files:
            if isinstance(file_id, str) and file_id:
                for item in await self._lines(file_id):
                    out[item["custom_id"]] = self._item(item)
        return out

    async def aclose(self) -> None:
        await self._client.aclose()
