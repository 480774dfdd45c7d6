"""A rule-based judge: a real OpenAI-compatible server (FastAPI + uvicorn, in a thread) whose
verdicts can be worked out by hand.

The answer with more words wins (much better at twice the words), equal answers go to whichever is
shown first (a position bias the two orders must cancel), and an answer A containing GARBLE gets a
reply with no verdict in it. Single grading scores by length. It answers plain questions as a
baseline. Every request body is appended to the log the caller passes.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import uvicorn
from fastapi import FastAPI, Request

from helpers.servers import free_port


def _between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0].strip()


def rule_judge_app(log: list[dict]) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict:
        body = await request.json()
        log.append(body)
        system, user = body["messages"][0]["content"], body["messages"][-1]["content"]
        as_json = "response_format" in body
        if "Compare two AI assistants" in system:
            a = _between(user, "[Assistant A's answer]", "[End of Assistant A's answer]")
            b = _between(user, "[Assistant B's answer]", "[End of Assistant B's answer]")
            la, lb = len(a.split()), len(b.split())
            verdict = ("A>>B" if la >= 2 * lb else "A>B" if la >= lb else
                       "B>>A" if lb >= 2 * la else "B>A")
            reason = f"A has {la} words, B has {lb}"
            text = (json.dumps({"verdict": verdict, "reason": reason}) if as_json
                    else f"{reason}. Final verdict: [[{verdict[0] if '>' in verdict else 'C'}]]")
            if "GARBLE" in a:
                text = "I would rather not say."
        elif "Rate the AI assistant" in system:
            answer = _between(user, "[Assistant's answer]", "[End of assistant's answer]")
            score = min(10, 1 + len(answer.split()) // 3)
            text = (json.dumps({"score": score, "reason": "by length"}) if as_json
                    else f"By length. Rating: [[{score}]]")
        else:
            text = f"A baseline answer with several words about: {user[:40]}"
        return {"id": "x", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}}

    return app


@contextmanager
def judge_server() -> Iterator[tuple[str, list[dict]]]:
    """The rule judge on a free port: its base URL (ending in /v1) and its request log."""
    log: list[dict] = []
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(rule_judge_app(log), host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "judge server did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}/v1", log
    finally:
        server.should_exit = True
        thread.join(timeout=10)
