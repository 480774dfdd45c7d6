"""Upstream mode: Seed's keys, metrics, usage log and chat page in front of another server.

Requests are validated here (the same schemas as the local backend) and forwarded byte for byte to
an OpenAI-compatible server (vLLM, SGLang, another `seed serve`), streams included: chat and
completions (tools, tool_choice and every other field as the client sent them), /v1/responses,
and vLLM's /tokenize and /detokenize (at the upstream's root, beside /v1). Fields the local
backend refuses are the upstream's to judge here. The upstream's
own key, if it needs one, comes from `SEED_UPSTREAM_API_KEY`; it is never logged.

Seed cannot watermark here (the upstream samples the tokens; vLLM's `--watermark-config` can, and
`--watermark-key-file` with `--upstream` is refused at start). A request's `watermarking: false`
(the opt-out a watermarking server honours only for a key whose policy says `watermark =
"optional"`) is removed from the forwarded body when the client's key may not opt out, so a key
held to the watermark cannot ask a watermarking upstream to skip it with Seed's upstream key; a
key that may opt out has the field passed through, for the upstream to honour or ignore (it is
the upstream's watermark, and the policy allows the request). Only then is the body re-encoded;
every other body goes on byte for byte.

What the upstream answers keeps its status, with two exceptions: its 401 or 403 is a 502 here
(the client's key was Seed's to check and it passed; it is Seed's upstream key that was refused),
and an answer that is not in OpenAI's error shape is put in it. An upstream that cannot be
reached, hangs up or takes longer than `serve.upstream_timeout` is a 502 or 504 in that shape; a
stream it cuts short ends with an error event. `/health` reports the upstream as last probed:
GET {base}/models every `PROBE_EVERY_S` seconds (so no number of /health calls reaches it more
often), a 503 with the reason when that fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from collections.abc import AsyncIterator
from typing import Any

import httpx
from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from seed.serve.errors import APIError, upstream_failed
from seed.serve.openai_format import error_body
from seed.serve.policy import opt_out_allowed
from seed.serve.responses import ResponsesRequest
from seed.serve.schemas import ChatCompletionRequest, CompletionRequest
from seed.serve.usage import RequestRecord

_PASS_HEADERS = ("content-type", "retry-after", "cache-control")
# The Responses API's first events carry no token (its deltas and chat chunks do).
_LIFECYCLE = tuple(f'data: {{"type":"response.{kind}"' for kind in (
    "created", "in_progress", "output_item.added", "content_part.added"))
PROBE_EVERY_S = 1.5
PROBE_TIMEOUT_S = 1.0


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
        self._problem: str | None = None
        self._watcher: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Open the connection pool and start probing the upstream (called in the event loop)."""
        limits = httpx.Limits(max_connections=512, max_keepalive_connections=64)
        self._client = httpx.AsyncClient(timeout=self.timeout, limits=limits)
        self._watcher = asyncio.get_running_loop().create_task(self._watch())

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        self._client = None

    def queue_depth(self) -> int:
        return 0

    def running(self) -> int:
        return self._in_flight

    def problem(self) -> str | None:
        """Why the upstream could not be used at the last probe, or None."""
        return self._problem

    async def models(self) -> dict[str, Any]:
        r = await self._send("GET", "/models", None)
        content = await self._read(r)
        if r.status_code != 200:
            raise self._refusal(r.status_code, content)
        return json.loads(content)

    async def chat(self, req: ChatCompletionRequest, http: Request, rec: RequestRecord) -> Response:
        return await self._forward("/chat/completions", await _body(req, http), req.stream, rec)

    async def completions(self, req: CompletionRequest, http: Request,
                          rec: RequestRecord) -> Response:
        return await self._forward("/completions", await _body(req, http), req.stream, rec)

    async def responses(self, req: ResponsesRequest, http: Request,
                        rec: RequestRecord) -> Response:
        return await self._forward("/responses", await _body(req, http), req.stream, rec)

    async def tokenize(self, req: BaseModel, http: Request, rec: RequestRecord) -> Response:
        """vLLM's POST /tokenize, which sits beside /v1 on the upstream, not under it."""
        return await self._forward("/tokenize", await http.body(), False, rec, under_v1=False)

    async def detokenize(self, req: BaseModel, http: Request, rec: RequestRecord) -> Response:
        return await self._forward("/detokenize", await http.body(), False, rec, under_v1=False)

    async def _watch(self) -> None:
        while True:
            self._problem = await self._probe()
            await asyncio.sleep(PROBE_EVERY_S)

    async def _probe(self) -> str | None:
        assert self._client is not None
        try:
            r = await self._client.get(self.base + "/models", headers=self._headers,
                                       timeout=PROBE_TIMEOUT_S)
        except httpx.HTTPError as e:
            return (f"The upstream server at {self.base} cannot be reached "
                    f"({type(e).__name__}: {e or 'no answer'}).")
        if r.status_code in (401, 403):
            return (f"The upstream server at {self.base} refused Seed's upstream key "
                    f"(SEED_UPSTREAM_API_KEY) with HTTP {r.status_code}.")
        if r.status_code != 200:
            return f"The upstream server at {self.base} answered GET /models with {r.status_code}."
        return None

    async def _send(self, method: str, path: str, body: bytes | None,
                    under_v1: bool = True) -> httpx.Response:
        assert self._client is not None
        headers = dict(self._headers)
        if body is not None:
            headers["Content-Type"] = "application/json"
        base = self.base if under_v1 else self.base.removesuffix("/v1")
        request = self._client.build_request(method, base + path, content=body, headers=headers)
        try:
            return await self._client.send(request, stream=True)
        except httpx.HTTPError as e:
            raise self._unavailable(e) from e

    async def _read(self, r: httpx.Response) -> bytes:
        try:
            return await r.aread()
        except httpx.HTTPError as e:
            raise self._unavailable(e) from e
        finally:
            await r.aclose()

    async def _forward(self, path: str, body: bytes, stream: bool, rec: RequestRecord,
                       under_v1: bool = True) -> Response:
        r = await self._send("POST", path, body, under_v1)
        headers = {k: v for k, v in r.headers.items() if k.lower() in _PASS_HEADERS}
        if stream and r.status_code == 200:
            return StreamingResponse(self._relay(r, rec), status_code=200, headers=headers)
        content = await self._read(r)
        if r.status_code != 200:
            raise self._refusal(r.status_code, content, headers)
        _count_usage(content, rec)
        return Response(content, status_code=200, headers=headers)

    async def _relay(self, r: httpx.Response, rec: RequestRecord) -> AsyncIterator[bytes]:
        self._in_flight += 1
        try:
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    if not line.startswith(_LIFECYCLE):
                        rec.first_token()
                    if '"usage":{' in line.replace(" ", ""):
                        _count_usage(line[len("data: "):].encode(), rec)
                yield (line + "\n").encode()
        except httpx.HTTPError as e:
            error = self._unavailable(e)
            rec.finish(error.status)
            event = error_body(error.message, error.type, code=error.code)
            yield f"data: {json.dumps(event)}\n\n".encode()
        finally:
            self._in_flight -= 1
            with contextlib.suppress(httpx.HTTPError):
                await r.aclose()

    def _unavailable(self, e: httpx.HTTPError) -> APIError:
        """A 504 for an upstream that took too long, else a 502 (refused, hung up, garbled)."""
        if isinstance(e, httpx.TimeoutException):
            return upstream_failed(504, self.base, f"did not answer within {self.timeout:g} s "
                                   "(serve.upstream_timeout)", "upstream_timeout")
        return upstream_failed(502, self.base, f"could not be reached or hung up "
                               f"({type(e).__name__}: {e or 'no answer'})", "upstream_unavailable")

    def _refusal(self, status: int, content: bytes,
                 headers: dict[str, str] | None = None) -> APIError:
        """The upstream's error answer as this server's: its 401/403 a 502, else its status and
        its OpenAI-shaped error (a body in another shape is quoted in one)."""
        if status in (401, 403):
            return upstream_failed(502, self.base, f"refused Seed's upstream key "
                                   f"(SEED_UPSTREAM_API_KEY) with {status}; the client's key was "
                                   "accepted, so set SEED_UPSTREAM_API_KEY to a key the upstream "
                                   "takes", "upstream_auth_failed")
        kind = "server_error" if status >= 500 else "invalid_request_error"
        error = _openai_error(content)
        if error is None:
            text = content[:200].decode("utf-8", "replace").strip() or "(no body)"
            return APIError(status, f"The upstream server at {self.base} answered {status}: "
                            f"{text}", type_=kind, code=f"upstream_{status}", headers=headers)
        return APIError(status, str(error.get("message") or f"upstream error {status}"),
                        type_=str(error.get("type") or kind), param=_str_or_none(error, "param"),
                        code=_str_or_none(error, "code"), headers=headers)


async def _body(req: BaseModel, http: Request) -> bytes:
    """The body to forward: as the client sent it, less a `watermarking: false` that the
    client's key may not use (see the module docstring)."""
    body = await http.body()
    asked = getattr(req, "watermarking", None)
    if asked is None:  # /v1/responses declares no such field: it is among the extras
        asked = (req.model_extra or {}).get("watermarking")
    if asked is not False or opt_out_allowed(http.scope):
        return body
    data = json.loads(body)  # the schema has parsed it: an object
    data.pop("watermarking", None)
    return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()


def _openai_error(content: bytes) -> dict[str, Any] | None:
    """The `error` object of an OpenAI-shaped error body, or None."""
    try:
        body = json.loads(content)
    except ValueError:
        return None
    error = body.get("error") if isinstance(body, dict) else None
    return error if isinstance(error, dict) else None


def _str_or_none(error: dict[str, Any], key: str) -> str | None:
    value = error.get(key)
    return None if value is None else str(value)


def _count_usage(content: bytes, rec: RequestRecord) -> None:
    """The upstream's token counts into `rec`: a completion's `usage`, or a Responses object's
    (its `input_tokens`/`output_tokens`, in a stream inside the event's `response`); counts that
    are not whole numbers are left at 0."""
    try:
        body = json.loads(content)
    except ValueError:
        return
    if isinstance(body, dict) and isinstance(body.get("response"), dict):
        body = body["response"]
    usage = body.get("usage") if isinstance(body, dict) else None
    if isinstance(usage, dict):
        rec.prompt_tokens = _count(usage.get("prompt_tokens", usage.get("input_tokens")))
        rec.completion_tokens = _count(usage.get("completion_tokens",
                                                 usage.get("output_tokens")))


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
