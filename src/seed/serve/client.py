"""`seed chat URL`: a terminal chat with a running server (`seed serve` or any OpenAI-compatible).

The conversation loop is `seed.chat.repl`; this module only turns the server's stream
(server-sent events from /v1/chat/completions) into text pieces.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx

from seed.chat import repl
from seed.errors import UserError


def chat_with_server(url: str, *, system: str | None = None, max_tokens: int = 256,
                     temperature: float = 0.0, api_key: str | None = None) -> None:
    """Run the chat until `/exit` or end of input."""
    base = url.rstrip("/")
    base = base if base.endswith("/v1") else base + "/v1"
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    client = httpx.Client(base_url=base, headers=headers, timeout=600)
    try:
        r = client.get("/models")
    except httpx.HTTPError as e:
        raise UserError(f"{url}: no server answers there; start one with `seed serve`") from e
    if r.status_code == 401:
        raise UserError(f"{url}: the server wants an API key; pass --api-key or set SEED_API_KEY")
    if r.status_code != 200:
        raise UserError(f"{url}: GET /v1/models answered {r.status_code}; is it an OpenAI-"
                        "compatible server?")
    model = r.json()["data"][0]["id"]
    repl(f"chatting with {model} at {url}",
         lambda history: _stream_reply(client, {"model": model, "messages": history,
                                                "stream": True, "max_tokens": max_tokens,
                                                "temperature": temperature}),
         system)


def _stream_reply(client: httpx.Client, body: dict) -> Iterator[str]:
    """The reply's text pieces as the server streams them; an error is one bracketed piece."""
    with client.stream("POST", "/chat/completions", json=body) as r:
        if r.status_code != 200:
            r.read()
            message = r.json().get("error", {}).get("message", r.text)
            yield f"[error {r.status_code}: {message}]"
            return
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[len("data: "):])
            for choice in chunk.get("choices", []):
                piece = (choice.get("delta") or {}).get("content")
                if piece:
                    yield piece
