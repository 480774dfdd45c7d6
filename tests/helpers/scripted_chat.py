"""A local server that streams scripted chat replies in OpenAI's documented chunk shape.

For the chat page's browser test: it stands where a thinking, tool-calling model would (vLLM,
SGLang, another `seed serve` with a tool template) behind `seed serve --upstream`. `GET /v1/models`
lists one model; `POST /v1/chat/completions` with `stream: true` answers the last user message:
one that mentions "weather" gets a tool call (`get_weather`, its arguments in pieces, finish
reason `tool_calls`), any other a reasoning trace in `delta.reasoning_content` and then the
content, a few characters per chunk. The replies are the module's constants, for a test to assert.
Runs in a thread of the test process (`scripted_chat()` yields its base URL).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL = "scripted"
REASONING = "The user greets me. I should greet back briefly."
CONTENT = "Hello! Nice to meet you."
TOOL_NAME = "get_weather"
TOOL_ARGUMENTS = '{"city": "Paris", "unit": "celsius"}'


def reply_chunks(last_user: str) -> list[dict[str, Any]]:
    """The chunks' `delta`s and finish reasons for one reply (without the envelope)."""
    if "weather" in last_user.lower():
        pieces = [TOOL_ARGUMENTS[i:i + 7] for i in range(0, len(TOOL_ARGUMENTS), 7)]
        return [{"delta": {"role": "assistant", "content": None}},
                {"delta": {"tool_calls": [{"index": 0, "id": "call_1", "type": "function",
                                           "function": {"name": TOOL_NAME, "arguments": ""}}]}},
                *[{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": p}}]}}
                  for p in pieces],
                {"delta": {}, "finish_reason": "tool_calls"}]
    thought = [REASONING[i:i + 6] for i in range(0, len(REASONING), 6)]
    said = [CONTENT[i:i + 5] for i in range(0, len(CONTENT), 5)]
    return [{"delta": {"role": "assistant", "content": ""}},
            *[{"delta": {"reasoning_content": t}} for t in thought],
            *[{"delta": {"content": s}} for s in said],
            {"delta": {}, "finish_reason": "stop"}]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args: Any) -> None:  # quiet in test output
        pass

    def _json(self, status: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.rstrip("/") == "/v1/models":
            self._json(200, {"object": "list", "data": [
                {"id": MODEL, "object": "model", "created": 0, "owned_by": "test"}]})
        else:
            self._json(404, {"error": {"message": "no such path", "type": "invalid_request_error",
                                       "param": None, "code": None}})

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
        if self.path != "/v1/chat/completions" or not body.get("stream"):
            self._json(400, {"error": {"message": "only streamed chats are scripted",
                                       "type": "invalid_request_error", "param": None,
                                       "code": None}})
            return
        users = [m for m in body["messages"] if m.get("role") == "user"]
        last = users[-1].get("content") if users else ""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        for i, part in enumerate(reply_chunks(last if isinstance(last, str) else "")):
            chunk = {"id": "chatcmpl-scripted", "object": "chat.completion.chunk", "created": i,
                     "model": MODEL, "choices": [{"index": 0, "logprobs": None,
                                                  "finish_reason": None, **part}]}
            self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
            self.wfile.flush()
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True


@contextmanager
def scripted_chat() -> Iterator[str]:
    """Serve the scripted replies on a free local port; yield the base URL (with /v1)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    finally:
        server.shutdown()
        server.server_close()
