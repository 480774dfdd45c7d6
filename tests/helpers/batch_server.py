"""A local server speaking OpenAI's chat completions, Files and Batches APIs, and Azure's variant.

Run: `python tests/helpers/batch_server.py --port P` (tests and benchmarks only); `batch_server()`
starts one in a subprocess (so a test can kill -9 its client while it lives) and reads its counts.

- `POST /v1/chat/completions` answers `echo: <last user message>` (choice i of `n`:
  `echo[i]: ...`), usage counted in words, `system_fingerprint` "fp_batch", the model asked for.
  Azure: `POST /openai/deployments/{deployment}/chat/completions?api-version=...`, the model being
  the deployment.
- `POST /v1/files` (multipart: purpose=batch, file), `GET /v1/files[?purpose=]`,
  `GET /v1/files/{id}/content`; `POST /v1/batches {input_file_id, endpoint, completion_window,
  metadata}`, `GET /v1/batches/{id}`, `GET /v1/batches?limit=&after=` (newest first, `has_more`).
  Azure: the same under `/openai/` with `?api-version=` required. Each line of a batch file is
  checked as OpenAI checks it (custom_id unique, method POST, url = the batch's endpoint, a body
  with a model on Azure); a file that fails makes the batch `failed` with `errors.data`.
  A batch is `validating` on its first poll, `in_progress` for `slow_polls` polls more, then
  `completed` (or `expired`): its output file holds one line per answered item
  ({id, custom_id, response: {status_code, request_id, body}, error: null}), its error file the
  failed items (status_code 500 or 400) and the expired ones ({..., response: null, error: {code:
  "batch_expired", message}}). Answers are the same as online ones.
- With BATCH_SERVER_KEY set, a request without that key (Bearer, or Azure's `api-key` header)
  gets a 401.

Settings for batches created from then on, `POST /_control/config {...}`: `slow_polls` (N; read
at each poll, so lowering it ends the wait of batches already there),
`fail_match` (items whose last user message holds it fail) with `fail_status` (500 or 400),
`expire_after` (the batch expires after answering that many items), `invalid` (the batch fails
validation), `upload_delay` / `create_delay` (seconds to wait after storing a file or creating a
batch, before answering: a client killed then leaves a file or batch whose id it never saw).
`GET /_control/counts`: how many times each custom_id was submitted in a batch, each filename
uploaded, each last user message asked online, the batches created and the polls answered.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response

app = FastAPI()
STATE: dict[str, Any] = {"key": None, "files": {}, "batches": {}, "config": {},
                         "submitted": {}, "uploads": {}, "online": {}, "order": [], "seq": 0,
                         "polls": 0}
DEFAULTS = {"slow_polls": 0, "fail_match": None, "fail_status": 500, "expire_after": None,
            "invalid": False, "upload_delay": 0.0, "create_delay": 0.0}


def _next(prefix: str) -> str:
    STATE["seq"] += 1
    return f"{prefix}-{STATE['seq']:06d}"


def _user(messages: list[dict[str, Any]]) -> str:
    users = [m.get("content") or "" for m in messages if m.get("role") == "user"]
    return str(users[-1]) if users else ""


def _words(text: str) -> int:
    return len(text.split())


def answer(body: dict[str, Any], model: str) -> dict[str, Any]:
    """The chat completion for one request body (online and in a batch alike)."""
    messages = body.get("messages") or []
    user = _user(messages)
    n = int(body.get("n", 1))
    texts = [f"echo: {user}"] if n == 1 else [f"echo[{i}]: {user}" for i in range(n)]
    prompt = sum(_words(str(m.get("content") or "")) for m in messages)
    completion = sum(_words(t) for t in texts)
    return {"id": "chatcmpl-batch", "object": "chat.completion", "created": int(time.time()),
            "model": model, "system_fingerprint": "fp_batch",
            "choices": [{"index": i, "message": {"role": "assistant", "content": t},
                         "finish_reason": "stop"} for i, t in enumerate(texts)],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion}}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "invalid_request_error"}},
                        status_code=status)


def _denied(request: Request, azure: bool) -> JSONResponse | None:
    key = STATE["key"]
    if azure and not request.query_params.get("api-version"):
        return _error(404, "Resource not found (no api-version)")
    if key is None:
        return None
    sent = request.headers.get("api-key") if azure else \
        request.headers.get("authorization", "").removeprefix("Bearer ")
    return None if sent == key else _error(401, "Incorrect API key provided")


@app.get("/v1/models")
async def models() -> dict[str, Any]:
    return {"object": "list", "data": [{"id": "batch-model", "object": "model"}]}


async def _chat(request: Request, model: str | None, azure: bool) -> Response:
    if (denied := _denied(request, azure)) is not None:
        return denied
    body = await request.json()
    user = _user(body.get("messages") or [])
    STATE["online"][user] = STATE["online"].get(user, 0) + 1
    return JSONResponse(answer(body, model or str(body.get("model"))))


@app.post("/v1/chat/completions")
async def chat(request: Request) -> Response:
    return await _chat(request, None, azure=False)


@app.post("/openai/deployments/{deployment}/chat/completions")
async def azure_chat(deployment: str, request: Request) -> Response:
    return await _chat(request, deployment, azure=True)


def _file_info(f: dict[str, Any]) -> dict[str, Any]:
    return {k: f[k] for k in ("id", "object", "bytes", "created_at", "filename", "purpose",
                              "status")}


def _multipart(content_type: str, body: bytes) -> dict[str, tuple[str | None, bytes]]:
    """A multipart/form-data body as {field: (filename, content)} (no dependency for one form)."""
    if "boundary=" not in content_type:
        return {}
    boundary = content_type.split("boundary=", 1)[1].split(";")[0].strip('"').encode()
    out: dict[str, tuple[str | None, bytes]] = {}
    for part in body.split(b"--" + boundary)[1:]:
        if part.startswith(b"--"):
            break
        head, _, content = part.lstrip(b"\r\n").partition(b"\r\n\r\n")
        disposition = head.decode(errors="replace")
        name = re.search(r'name="([^"]*)"', disposition)
        filename = re.search(r'filename="([^"]*)"', disposition)
        if name:
            out[name.group(1)] = (filename.group(1) if filename else None,
                                  content.removesuffix(b"\r\n"))
    return out


async def _upload(request: Request, azure: bool) -> Response:
    if (denied := _denied(request, azure)) is not None:
        return denied
    parts = _multipart(request.headers.get("content-type", ""), await request.body())
    if parts.get("purpose", (None, b""))[1] != b"batch" or "file" not in parts:
        return _error(400, "purpose must be batch, with a file")
    name, content = parts["file"]
    name = name or "file.jsonl"
    f = {"id": _next("file"), "object": "file", "bytes": len(content),
         "created_at": int(time.time()), "filename": name, "purpose": "batch",
         "status": "processed", "content": content}
    STATE["files"][f["id"]] = f
    STATE["uploads"][name] = STATE["uploads"].get(name, 0) + 1
    if delay := STATE["config"].get("upload_delay"):
        await _pause(delay)
    return JSONResponse(_file_info(f))


async def _list_files(request: Request, azure: bool) -> Response:
    if (denied := _denied(request, azure)) is not None:
        return denied
    purpose = request.query_params.get("purpose")
    data = [_file_info(f) for f in STATE["files"].values() if purpose in (None, f["purpose"])]
    return JSONResponse({"object": "list", "data": data[::-1]})


async def _content(file_id: str, request: Request, azure: bool) -> Response:
    if (denied := _denied(request, azure)) is not None:
        return denied
    f = STATE["files"].get(file_id)
    if f is None:
        return _error(404, f"No such File object: {file_id}")
    return PlainTextResponse(f["content"].decode(), media_type="application/octet-stream")


def _validate(content: bytes, endpoint: str) -> tuple[list[dict[str, Any]], str | None]:
    """The file's lines, or why OpenAI would refuse it."""
    lines, seen = [], set()
    for i, raw in enumerate(content.decode().splitlines(), 1):
        if not raw.strip():
            continue
        try:
            line = json.loads(raw)
        except ValueError:
            return [], f"line {i}: not JSON"
        cid = line.get("custom_id")
        if not isinstance(cid, str) or cid in seen:
            return [], f"line {i}: custom_id missing or duplicated"
        seen.add(cid)
        if line.get("method") != "POST" or line.get("url") != endpoint:
            return [], f"line {i}: url must be {endpoint} with method POST"
        body = line.get("body")
        if not isinstance(body, dict) or not body.get("messages") or not body.get("model"):
            return [], f"line {i}: the body needs model and messages"
        lines.append(line)
    return (lines, None) if lines else ([], "the file has no requests")


async def _create(request: Request, azure: bool) -> Response:
    if (denied := _denied(request, azure)) is not None:
        return denied
    spec = await request.json()
    f = STATE["files"].get(spec.get("input_file_id"))
    if f is None:
        return _error(400, "input_file_id: no such file")
    want = "/chat/completions" if azure else "/v1/chat/completions"
    if spec.get("endpoint") != want or spec.get("completion_window") != "24h":
        return _error(400, f"endpoint must be {want} and completion_window 24h")
    config = {**DEFAULTS, **STATE["config"]}
    lines, invalid = _validate(f["content"], want)
    if config["invalid"]:
        invalid = "the input file failed validation (fault)"
    for line in lines:
        cid = line["custom_id"]
        STATE["submitted"][cid] = STATE["submitted"].get(cid, 0) + 1
    batch = {"id": _next("batch"), "object": "batch", "endpoint": want,
             "input_file_id": f["id"], "completion_window": "24h", "status": "validating",
             "created_at": int(time.time()), "metadata": spec.get("metadata") or {},
             "output_file_id": None, "error_file_id": None, "errors": None,
             "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
             "_lines": lines, "_polls": 0, "_config": config, "_invalid": invalid}
    STATE["batches"][batch["id"]] = batch
    STATE["order"].append(batch["id"])
    if delay := config["create_delay"]:
        await _pause(delay)
    return JSONResponse(_public(batch))


async def _pause(seconds: float) -> None:
    """Wait before answering; cut short, quietly, when the server shuts down."""
    with suppress(asyncio.CancelledError):
        await asyncio.sleep(seconds)


def _public(b: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in b.items() if not k.startswith("_")}


def _store(name: str, lines: list[dict[str, Any]]) -> str | None:
    if not lines:
        return None
    content = "".join(json.dumps(x) + "\n" for x in lines).encode()
    f = {"id": _next("file"), "object": "file", "bytes": len(content),
         "created_at": int(time.time()), "filename": name, "purpose": "batch_output",
         "status": "processed", "content": content}
    STATE["files"][f["id"]] = f
    return str(f["id"])


def _finish(b: dict[str, Any]) -> None:
    config, out, errors = b["_config"], [], []
    expire = config["expire_after"]
    answered = 0
    for line in b["_lines"]:
        cid, body = line["custom_id"], line["body"]
        rid = _next("req")
        if expire is not None and answered >= expire:
            errors.append({"id": rid, "custom_id": cid, "response": None, "error": {
                "code": "batch_expired", "message": "This request could not be executed before "
                "the completion window expired."}})
            continue
        answered += 1
        match = config["fail_match"]
        if match and match in _user(body["messages"]):
            status = int(config["fail_status"])
            errors.append({"id": rid, "custom_id": cid, "error": None, "response": {
                "status_code": status, "request_id": rid, "body": {"error": {
                    "message": f"item failed with {status} (fault)", "type": "server_error"}}}})
            continue
        out.append({"id": rid, "custom_id": cid, "error": None, "response": {
            "status_code": 200, "request_id": rid, "body": answer(body, str(body["model"]))}})
    b["output_file_id"] = _store(f"{b['id']}_output.jsonl", out)
    b["error_file_id"] = _store(f"{b['id']}_error.jsonl", errors)
    b["request_counts"] = {"total": len(b["_lines"]), "completed": len(out),
                           "failed": len(errors)}
    b["status"] = "expired" if expire is not None and expire < len(b["_lines"]) else "completed"


def _advance(b: dict[str, Any]) -> None:
    """One poll of a batch moves it along: validating, in_progress for slow_polls, then done."""
    if b["status"] in ("completed", "failed", "expired", "cancelled"):
        return
    b["_polls"] += 1
    STATE["polls"] += 1
    if b["_invalid"]:
        b["status"] = "failed"
        b["errors"] = {"object": "list", "data": [{"code": "invalid_request",
                                                   "message": b["_invalid"], "line": None}]}
        return
    slow = int({**DEFAULTS, **STATE["config"]}["slow_polls"])  # live: a test can end the wait
    if b["_polls"] == 1 and slow:
        b["status"] = "validating"
    elif b["_polls"] <= slow + 1 and slow:
        b["status"] = "in_progress"
        done = len(b["_lines"]) * (b["_polls"] - 1) // (slow + 1)
        b["request_counts"] = {"total": len(b["_lines"]), "completed": done, "failed": 0}
    else:
        _finish(b)


async def _get_batch(batch_id: str, request: Request, azure: bool) -> Response:
    if (denied := _denied(request, azure)) is not None:
        return denied
    b = STATE["batches"].get(batch_id)
    if b is None:
        return _error(404, f"No batch found with id '{batch_id}'")
    _advance(b)
    return JSONResponse(_public(b))


async def _list_batches(request: Request, azure: bool) -> Response:
    if (denied := _denied(request, azure)) is not None:
        return denied
    limit = int(request.query_params.get("limit", 20))
    after = request.query_params.get("after")
    ids = STATE["order"][::-1]
    if after in ids:
        ids = ids[ids.index(after) + 1:]
    page = [_public(STATE["batches"][i]) for i in ids[:limit]]
    return JSONResponse({"object": "list", "data": page, "has_more": len(ids) > limit,
                         "first_id": page[0]["id"] if page else None,
                         "last_id": page[-1]["id"] if page else None})


for prefix, azure in (("/v1", False), ("/openai", True)):
    def _routes(prefix: str = prefix, azure: bool = azure) -> None:
        async def upload(request: Request) -> Response:
            return await _upload(request, azure)

        async def list_files(request: Request) -> Response:
            return await _list_files(request, azure)

        async def content(file_id: str, request: Request) -> Response:
            return await _content(file_id, request, azure)

        async def create(request: Request) -> Response:
            return await _create(request, azure)

        async def get_batch(batch_id: str, request: Request) -> Response:
            return await _get_batch(batch_id, request, azure)

        async def list_batches(request: Request) -> Response:
            return await _list_batches(request, azure)

        app.add_api_route(f"{prefix}/files", upload, methods=["POST"])
        app.add_api_route(f"{prefix}/files", list_files, methods=["GET"])
        app.add_api_route(f"{prefix}/files/{{file_id}}/content", content, methods=["GET"])
        app.add_api_route(f"{prefix}/batches", create, methods=["POST"])
        app.add_api_route(f"{prefix}/batches", list_batches, methods=["GET"])
        app.add_api_route(f"{prefix}/batches/{{batch_id}}", get_batch, methods=["GET"])

    _routes()


@app.post("/_control/config")
async def set_config(request: Request) -> dict[str, Any]:
    STATE["config"] = {**STATE["config"], **(await request.json())}
    return STATE["config"]


@app.get("/_control/counts")
async def counts() -> dict[str, Any]:
    return {"submitted": STATE["submitted"], "uploads": STATE["uploads"],
            "online": STATE["online"], "polls": STATE["polls"],
            "batches": [{**_public(b), "custom_ids": [x["custom_id"] for x in b["_lines"]],
                         "input_bytes": STATE["files"][b["input_file_id"]]["bytes"]}
                        for b in (STATE["batches"][i] for i in STATE["order"])]}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    STATE["key"] = os.environ.get("BATCH_SERVER_KEY") or None
    # A delayed answer (upload_delay, create_delay) must not hold up the test's teardown.
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="warning",
                timeout_graceful_shutdown=1)


if __name__ == "__main__":
    main()


@dataclass
class BatchServer:
    """A running batch server: its base URL (with /v1), and its controls."""

    base_url: str

    @property
    def root(self) -> str:
        return self.base_url.removesuffix("/v1")

    def config(self, **settings: Any) -> None:
        httpx.post(f"{self.root}/_control/config", json=settings).raise_for_status()

    def counts(self) -> dict[str, Any]:
        resp = httpx.get(f"{self.root}/_control/counts")
        resp.raise_for_status()
        data: dict[str, Any] = resp.json()
        return data


@contextmanager
def batch_server(key: str | None = None) -> Iterator[BatchServer]:
    """The server in a subprocess on a free port, stopped afterwards."""
    from helpers.servers import free_port, wait_until_up

    port = free_port()
    env = {k: v for k, v in os.environ.items() if k != "BATCH_SERVER_KEY"}
    if key:
        env["BATCH_SERVER_KEY"] = key
    proc = subprocess.Popen([sys.executable, __file__, "--port", str(port)], env=env)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_up(proc, f"{base}/models", 30, "the batch server")
        yield BatchServer(base)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
