"""A local server speaking Anthropic's Messages API and Message Batches (tests only).

Run: `python tests/helpers/anthropic_server.py --port P --log FILE`; it serves any model named
`claude-*` (and answers a 404 `not_found_error` for other names); with the
environment variable ANTHROPIC_SERVER_KEY set, a request without that `x-api-key` gets a 401
`authentication_error`; a request without `anthropic-version` gets a 400.

`POST /v1/messages` answers `claude: <last user message>` (a system prompt's first word, when it has
one, goes in front: `[word] claude: ...`), with a thinking block (`thinking about: <last user
message>`, with a signature) when `thinking` is asked; `stop_sequences` cut the answer where one
appears (`stop_reason` "stop_sequence"); `POST /_control/replies {"<substring>": "<text>"}` scripts
the answer to a last user message holding the substring (a judge's verdict). Usage is counted in
words: `output_tokens` = words of the text and thinking; a system prompt whose last block has
`cache_control` is cached by its exact text (and model): the first request reports its words as
`cache_creation_input_tokens`, later ones as `cache_read_input_tokens`, and `input_tokens` holds the
rest; without `cache_control` every word is `input_tokens`. Every answer carries
`anthropic-ratelimit-*` headers (set with `POST /_control/ratelimit {"requests": [limit, remaining,
reset_s], "tokens": [...]}`).

Faults (`POST /_control/faults {"match": "<substring>", "faults": [...]}`; requests whose last user
message holds the substring take the next fault in order): `429:<retry-after>`, `529`
(overloaded_error), `500`, `400`, `refusal` (stop_reason "refusal"), `redacted` (a
redacted_thinking block too), `max_tokens` (stop_reason "max_tokens").

Message Batches: `POST /v1/messages/batches` (each item's `params` checked as a message request;
duplicate custom_ids refused), `GET /v1/messages/batches/{id}` (in_progress for `polls` polls, set
with `POST /_control/batch {"polls": N, "submit_delay": S, "delay_after": K}`: the server holds
the creation's answer S seconds after the batch exists, for batches after the K-th it ever
created, so a client killed then never learns its id;
`{"end_all": true}` ends every batch in progress),
`GET /v1/messages/batches/{id}/results` (JSONL, once ended) and `GET /v1/messages/batches`
(newest first, `limit`, `after_id`, `before_id`). Item outcomes by the last user message:
`POST /_control/batch {"items": {"<substring>": "errored" | "invalid" | "expired" | "canceled" |
"refusal"}}`. `GET /_control/submitted` counts every custom_id ever submitted. Every request is
appended to `--log` as a JSON line (path, last user message, fault, the body's fields).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from collections import Counter, deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

app = FastAPI()
STATE: dict[str, Any] = {"log": None, "model": "claude-test-1", "rules": [], "ratelimit": {},
                         "cache": set(), "batches": {}, "order": [], "submitted": Counter(),
                         "polls": 0, "submit_delay": 0.0, "delay_after": 0, "items": {},
                         "replies": {}}


def _error(status: int, kind: str, message: str, headers: dict[str, str] | None = None
           ) -> JSONResponse:
    return JSONResponse({"type": "error", "error": {"type": kind, "message": message}},
                        status_code=status, headers=headers)


def _rfc3339(at: datetime) -> str:
    return at.isoformat().replace("+00:00", "Z")


def _log(entry: dict[str, Any]) -> None:
    if STATE["log"]:
        with open(STATE["log"], "a") as f:
            f.write(json.dumps(entry) + "\n")


def _user(body: dict[str, Any]) -> str:
    for m in reversed(body.get("messages") or []):
        if m.get("role") == "user":
            c = m.get("content")
            return c if isinstance(c, str) else " ".join(b.get("text", "") for b in c)
    return ""


def _take_fault(user: str) -> str | None:
    for rule in STATE["rules"]:
        if rule["match"] in user and rule["faults"]:
            return rule["faults"].popleft()
    return None


def _checked(request: Request) -> JSONResponse | None:
    key = os.environ.get("ANTHROPIC_SERVER_KEY")
    if key and request.headers.get("x-api-key") != key:
        return _error(401, "authentication_error", "invalid x-api-key")
    if not request.headers.get("anthropic-version"):
        return _error(400, "invalid_request_error", "anthropic-version header is required")
    return None


def _invalid(body: Any) -> str | None:
    """Why `body` is not a message request Anthropic would take, or None."""
    if not isinstance(body, dict):
        return "body is not an object"
    if not isinstance(body.get("max_tokens"), int):
        return "max_tokens: Field required"
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        return "messages: Field required"
    allowed = {"model", "max_tokens", "messages", "system", "thinking", "temperature", "top_p",
               "top_k", "stop_sequences", "metadata"}
    extra = sorted(set(body) - allowed)
    if extra:
        return f"{extra[0]}: Extra inputs are not permitted"
    for m in body["messages"]:
        if m.get("role") not in ("user", "assistant") or "reasoning_content" in m:
            return "messages: each turn is a user or assistant turn with content only"
    thinking = body.get("thinking")
    if thinking and thinking.get("type") == "enabled" and (
            thinking.get("budget_tokens", 0) >= body["max_tokens"]):
        return "max_tokens must be greater than thinking.budget_tokens"
    return None


def _system(body: dict[str, Any]) -> tuple[str, bool]:
    """The system prompt's text, and whether its last block asks to be cached."""
    system = body.get("system")
    if system is None:
        return "", False
    if isinstance(system, str):
        return system, False
    text = "\n".join(b["text"] for b in system)
    return text, bool(system and system[-1].get("cache_control"))


def message(body: dict[str, Any], fault: str | None) -> dict[str, Any]:
    """The message answering `body` (the same for an online request and a batch item)."""
    user = _user(body)
    system, cached = _system(body)
    word = system.split()[0] if system.split() else ""
    text = (f"[{word}] " if word else "") + f"claude: {user}"
    text = next((t for k, t in STATE["replies"].items() if k in user), text)
    stop_reason = "end_turn"
    for stop in body.get("stop_sequences") or []:
        if stop in text:
            text, stop_reason = text.split(stop, 1)[0], "stop_sequence"
            break
    content: list[dict[str, Any]] = []
    thought = ""
    if body.get("thinking"):
        thought = f"thinking about: {user}"
        content.append({"type": "thinking", "thinking": thought, "signature": "sig-" + str(
            len(thought))})
    if fault == "redacted":
        content.append({"type": "redacted_thinking", "data": "ZW5jcnlwdGVk"})
    if fault == "refusal":
        text, stop_reason = "", "refusal"
    if fault == "max_tokens":
        stop_reason = "max_tokens"
    content.append({"type": "text", "text": text})
    sys_words = len(system.split())
    turns = sum(len(str(m.get("content", "")).split()) for m in body["messages"])
    write = read = 0
    if cached:
        entry = (body.get("model"), system)
        if entry in STATE["cache"]:
            read = sys_words
        else:
            STATE["cache"].add(entry)
            write = sys_words
        fresh = turns
    else:
        fresh = turns + sys_words
    return {"id": f"msg_{abs(hash((user, time.time()))) % 10**12}", "type": "message",
            "role": "assistant", "model": body.get("model"), "content": content,
            "stop_reason": stop_reason, "stop_sequence": None,
            "usage": {"input_tokens": fresh, "output_tokens": len(text.split())
                      + len(thought.split()), "cache_creation_input_tokens": write,
                      "cache_read_input_tokens": read}}


def _ratelimit_headers() -> dict[str, str]:
    out = {}
    now = datetime.now(UTC)
    for kind, spec in STATE["ratelimit"].items():
        limit, remaining, reset = spec
        out[f"anthropic-ratelimit-{kind}-limit"] = str(limit)
        out[f"anthropic-ratelimit-{kind}-remaining"] = str(remaining)
        out[f"anthropic-ratelimit-{kind}-reset"] = _rfc3339(now + timedelta(seconds=reset))
    return out


@app.get("/v1/models")
async def models(request: Request) -> Response:
    if (bad := _checked(request)) is not None:
        return bad
    return JSONResponse({"data": [{"type": "model", "id": STATE["model"]}], "has_more": False})


@app.post("/v1/messages")
async def messages(request: Request) -> Response:
    if (bad := _checked(request)) is not None:
        return bad
    body = await request.json()
    user = _user(body)
    fault = _take_fault(user)
    _log({"path": "/v1/messages", "user": user, "fault": fault, "fields": sorted(body),
          "body": body})
    if (why := _invalid(body)) is not None:
        return _error(400, "invalid_request_error", why)
    if not str(body.get("model")).startswith("claude-"):
        return _error(404, "not_found_error", f"model: {body.get('model')}")
    if fault and fault.startswith("429"):
        wait = fault.split(":", 1)[1] if ":" in fault else "0"
        return _error(429, "rate_limit_error", "Number of requests has exceeded your rate limit",
                      {"retry-after": wait, **_ratelimit_headers()})
    if fault == "529":
        return _error(529, "overloaded_error", "Overloaded")
    if fault == "500":
        return _error(500, "api_error", "Internal server error")
    if fault == "400":
        return _error(400, "invalid_request_error", "prompt is too long")
    return JSONResponse(message(body, fault), headers=_ratelimit_headers())


def _batch_view(batch: dict[str, Any], base: str) -> dict[str, Any]:
    ended = batch["polls_left"] <= 0
    counts = Counter(r["result"]["type"] for r in batch["results"]) if ended else Counter()
    return {"id": batch["id"], "type": "message_batch",
            "processing_status": "ended" if ended else "in_progress",
            "request_counts": {"processing": 0 if ended else len(batch["results"]),
                               "succeeded": counts["succeeded"], "errored": counts["errored"],
                               "canceled": counts["canceled"], "expired": counts["expired"]},
            "created_at": batch["created_at"], "ended_at": batch["ended_at"] if ended else None,
            "expires_at": batch["created_at"], "archived_at": None, "cancel_initiated_at": None,
            "results_url": f"{base}/v1/messages/batches/{batch['id']}/results" if ended
            else None}


def _item(custom_id: str, params: dict[str, Any]) -> dict[str, Any]:
    user = _user(params)
    outcome = next((v for k, v in STATE["items"].items() if k in user), None)
    if outcome in ("expired", "canceled"):
        result: dict[str, Any] = {"type": outcome}
    elif outcome == "errored":
        result = {"type": "errored", "error": {"type": "error", "error": {
            "type": "overloaded_error", "message": "Overloaded"}}}
    elif outcome == "invalid":
        result = {"type": "errored", "error": {"type": "error", "error": {
            "type": "invalid_request_error", "message": "prompt is too long"}}}
    else:
        result = {"type": "succeeded", "message": message(
            params, "refusal" if outcome == "refusal" else None)}
    return {"custom_id": custom_id, "result": result}


@app.post("/v1/messages/batches")
async def create_batch(request: Request) -> Response:
    if (bad := _checked(request)) is not None:
        return bad
    body = await request.json()
    items = body.get("requests")
    if not isinstance(items, list) or not items:
        return _error(400, "invalid_request_error", "requests: Field required")
    ids = [r.get("custom_id") for r in items]
    if len(set(ids)) != len(ids):
        return _error(400, "invalid_request_error", "custom_id values must be unique")
    for r in items:
        if (why := _invalid(r.get("params"))) is not None:
            return _error(400, "invalid_request_error", f"requests.{r.get('custom_id')}: {why}")
    STATE["submitted"].update(ids)
    batch_id = f"msgbatch_{len(STATE['order']) + 1:06d}"
    now = datetime.now(UTC)
    batch = {"id": batch_id, "created_at": _rfc3339(now), "ended_at": _rfc3339(now),
             "polls_left": STATE["polls"],
             "results": [_item(r["custom_id"], r["params"]) for r in items]}
    STATE["batches"][batch_id] = batch
    STATE["order"].append(batch_id)
    _log({"path": "/v1/messages/batches", "batch": batch_id, "custom_ids": ids})
    if STATE["submit_delay"] and len(STATE["order"]) > STATE["delay_after"]:
        await asyncio.sleep(STATE["submit_delay"])
    return JSONResponse(_batch_view(batch, str(request.base_url).rstrip("/")))


@app.get("/v1/messages/batches")
async def list_batches(request: Request, limit: int = 20, after_id: str | None = None,
                       before_id: str | None = None) -> Response:
    if (bad := _checked(request)) is not None:
        return bad
    newest = list(reversed(STATE["order"]))
    if after_id is not None:
        newest = newest[newest.index(after_id) + 1:] if after_id in newest else []
    if before_id is not None:
        newest = newest[:newest.index(before_id)] if before_id in newest else []
    page = newest[:limit]
    base = str(request.base_url).rstrip("/")
    data = [_batch_view(STATE["batches"][b], base) for b in page]
    return JSONResponse({"data": data, "has_more": len(newest) > limit,
                         "first_id": page[0] if page else None,
                         "last_id": page[-1] if page else None})


@app.get("/v1/messages/batches/{batch_id}")
async def get_batch(request: Request, batch_id: str) -> Response:
    if (bad := _checked(request)) is not None:
        return bad
    batch = STATE["batches"].get(batch_id)
    if batch is None:
        return _error(404, "not_found_error", f"batch {batch_id}")
    if batch["polls_left"] > 0:
        batch["polls_left"] -= 1
        if batch["polls_left"] == 0:
            batch["ended_at"] = _rfc3339(datetime.now(UTC))
        return JSONResponse(_batch_view({**batch, "polls_left": 1}, str(request.base_url)))
    return JSONResponse(_batch_view(batch, str(request.base_url).rstrip("/")))


@app.get("/v1/messages/batches/{batch_id}/results")
async def batch_results(request: Request, batch_id: str) -> Response:
    if (bad := _checked(request)) is not None:
        return bad
    batch = STATE["batches"].get(batch_id)
    if batch is None:
        return _error(404, "not_found_error", f"batch {batch_id}")
    if batch["polls_left"] > 0:
        return _error(400, "invalid_request_error", "batch is still in progress")
    lines = "".join(json.dumps(r) + "\n" for r in batch["results"])
    return Response(lines, media_type="application/binary")


@app.post("/_control/faults")
async def set_faults(request: Request) -> dict[str, bool]:
    spec = await request.json()
    STATE["rules"].append({"match": spec.get("match", ""), "faults": deque(spec["faults"])})
    return {"ok": True}


@app.post("/_control/replies")
async def set_replies(request: Request) -> dict[str, bool]:
    STATE["replies"] = await request.json()
    return {"ok": True}


@app.post("/_control/ratelimit")
async def set_ratelimit(request: Request) -> dict[str, bool]:
    STATE["ratelimit"] = await request.json()
    return {"ok": True}


@app.post("/_control/batch")
async def set_batch(request: Request) -> dict[str, bool]:
    spec = await request.json()
    for key in ("polls", "submit_delay", "delay_after", "items"):
        if key in spec:
            STATE[key] = spec[key]
    if spec.get("end_all"):  # every batch still in progress ends now
        for batch in STATE["batches"].values():
            batch["polls_left"] = 0
    return {"ok": True}


@app.get("/_control/submitted")
async def submitted() -> dict[str, Any]:
    return {"custom_ids": dict(STATE["submitted"]), "batches": list(STATE["order"])}


@dataclass
class AnthropicServer:
    """A running server (a subprocess, so a test can kill -9 its client and keep it)."""

    root: str  # the base URL, without /v1, as Anthropic's is given
    log: Path

    def control(self, what: str, spec: dict[str, Any]) -> None:
        httpx.post(f"{self.root}/_control/{what}", json=spec).raise_for_status()

    def faults(self, faults: list[str], match: str = "") -> None:
        self.control("faults", {"match": match, "faults": faults})

    def requests(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]

    def submitted(self) -> dict[str, Any]:
        return httpx.get(f"{self.root}/_control/submitted").json()


@contextmanager
def anthropic_server(tmp: Path, key: str | None = None,
                     model: str = "claude-test-1") -> Iterator[AnthropicServer]:
    """This file's server on a free port until the block ends; `key` is the x-api-key it wants."""
    from helpers.servers import free_port, wait_until_up

    port = free_port()
    log = tmp / f"anthropic-{port}.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_SERVER_KEY"}
    if key:
        env["ANTHROPIC_SERVER_KEY"] = key
    proc = subprocess.Popen([sys.executable, __file__, "--port", str(port), "--log", str(log),
                             "--model", model], env=env)
    root = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(proc, f"{root}/_control/submitted", 30, "the anthropic server")
        yield AnthropicServer(root, log)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:  # a held answer (submit_delay) outlived the test
            proc.kill()
            proc.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--log", default=None)
    ap.add_argument("--model", default="claude-test-1")
    args = ap.parse_args()
    STATE.update(log=args.log, model=args.model)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="critical", access_log=False,
                timeout_graceful_shutdown=1)


if __name__ == "__main__":
    main()
