"""A local OpenAI-compatible teacher with known token counts and a known refusal share, for the
forecast's tests and benchmark (an app for helpers.thread_server.app_in_thread).

Each prompt's fate is fixed by a hash of its text, so a sample and the full run see the same
answers: `refusal_share` of the prompts get a refusal ("I'm sorry, but I can't help with that.");
the others an answer of 5 to 64 words. Usage: `prompt_tokens` = the words of the request's
messages (plus `system_words`, a fixed prefix the teacher reports as cached), `completion_tokens`
= the answer's words; `prompt_tokens_details.cached_tokens` = `system_words`. `app.state.sent`
counts the requests per prompt (the last user message), so a test can prove nothing was asked
twice. It does not throttle, fail or stream.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from typing import Any

from fastapi import FastAPI, Request

REFUSAL = "I'm sorry, but I can't help with that."
WORDS = ["amber", "basalt", "cobalt", "delta", "ember", "fjord", "garnet", "helix", "indigo"]


def fate(text: str) -> int:
    """0-9999 from the prompt's text, the same in every process."""
    return int(hashlib.sha256(text.encode()).hexdigest()[:8], 16) % 10_000


def answer_for(text: str, refusal_share: float) -> str:
    h = fate(text)
    if h < refusal_share * 10_000:
        return REFUSAL
    return " ".join(WORDS[(h + i) % len(WORDS)] for i in range(5 + h % 60))


def priced_teacher(model: str = "priced-model", refusal_share: float = 0.15,
                   system_words: int = 0, latency: float = 0.0) -> FastAPI:
    app = FastAPI()
    app.state.sent = Counter()

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": model, "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        body = await request.json()
        messages = body["messages"]
        user = next(m["content"] for m in reversed(messages) if m["role"] == "user")
        app.state.sent[user] += 1
        if latency:
            await asyncio.sleep(latency)
        text = answer_for(user, refusal_share)
        prompt = sum(len(str(m.get("content", "")).split()) for m in messages) + system_words
        completion = len(text.split())
        return {"id": "cmpl-priced", "object": "chat.completion", "model": model,
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion,
                          "prompt_tokens_details": {"cached_tokens": system_words}}}

    return app
