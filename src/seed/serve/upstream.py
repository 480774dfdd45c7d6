"""Upstream mode: Seed's keys, metrics, usage log and chat page in front of another server.

Requests are validated here (the same schemas as the local backend) and forwarded byte for byte to
an OpenAI-compatible server (vLLM, SGLang, another `seed serve`), streams included. The upstream's
own key, if it needs one, comes from `SEED_UPSTREAM_API_KEY`; it is never logged.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from seed.serve.errors import APIError
from seed.serve.schemas import ChatCompletionRequest, CompletionRequest
from seed.serve.usage import RequestRecord

_PASS_HEADERS = ("content-type", "retry-after", "cache-control")


class UpstreamBackend:
    """Forwards /v1 requests to `base_url` (with or without a trailing /v1)."""

    def __init__(self, base_url: str, timeout: float = 600.0):
        base = base_url.rstrip("/")
        self.base = base if base.endswith("/v1") else base + "/v1"
        self.model_name = f"upstream {self.base}"
        self.timeout = timeout
        self._client: httpx.AsyncClient | None = None
        key = os.environ.get("SEED_UPSTREAM_API_KEY")
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._in_flight = 0

    def start(self) -> None:
        limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
        self._client = httpx.AsyncClient(timeout=self.timeout, limits=limits)

    def stop(self) -> None:
        self._client = None

    def queue_depth(self) -> int:
        return 0

    def running(self) -> int:
        return self._in_flight

    async def models(self) -> dict[str, Any]:
        r = await self._send("GET", "/models", None)
        return json.loads(await r.aread())

    async def chat(self, req: ChatCompletionRequest, http: Request, rec: RequestRecord) -> Response:
        return await self._forward("/chat/completions", await http.body(), req.stream, rec)

    async def completions(self, req: CompletionRequest, http: Request,
                          rec: RequestRecord) -> Response:
        return await self._forward("/completions", await http.body(), req.stream, rec)

    async def _send(self, method: str, path: str, body: bytes | None) -> httpx.Response:
        assert self._client is not None
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        request = self._client.build_request(method, self.base + path, content=body,
                                             headers=headers)
        try:
            return await self._client.send(request, stream=True)
        except httpx.HTTPError as e:
            raise APIError(502, f"The upstream server at {self.base} did not answer ({e!r}).",
                           type_="server_error", code="upstream_unavailable") from e

    async def _forward(self, path: str, body: bytes, stream: bool,
                       rec: RequestRecord) -> Response:
        r = await self._send("POST", path, body)
        headers = {k: v for k, v in r.headers.items() if k.lower() in _PASS_HEADERS}
        if stream and r.status_code == 200:
            return StreamingResponse(self._relay(r, rec), status_code=200, headers=headers)
        content = await r.aread()
        await r.aclose()
        if r.status_code == 200:
            _count_usage(content, rec)
        return Response(content, status_code=r.status_code, headers=headers)

    async def _relay(self, r: httpx.Response, rec: RequestRecord) -> AsyncIterator[bytes]:
        self._in_flight += 1
        try:
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    rec.first_token()
                    if '"usage":{' in line.replace(" ", ""):
                        _count_usage(line[len("data: "):].encode(), rec)
                yield (line + "\n").encode()
        finally:
            self._in_flight -= 1
            await r.aclose()


def _count_usage(content: bytes, rec: RequestRecord) -> None:
    try:
        usage = json.loads(content).get("usage") or {}
    except (ValueError, AttributeError):
        return
    rec.prompt_tokens = int(usage.get("prompt_tokens") or 0)
    rec.completion_tokens = int(usage.get("completion_tokens") or 0)
