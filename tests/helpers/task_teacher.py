"""A teacher that answers known questions right only part of the time (verified generation's tests).

`task_teacher(answers, wrong=0.4)` serves `POST /v1/chat/completions` and `GET /v1/models` on a
free port, in a thread. For a question in `answers` (question -> right answer), choice i of `n`
is `reply.format(answer)` (default `<answer>{}</answer>`, the reasoning-gym convention) with the
right answer, unless `corrupted(question, i, wrong)` says that sample is wrong: then the right
answer with a `1` appended (never right, whatever the answer). `corrupted` is a hash, so a test
knows which samples are right without asking the server; an unknown question gets "I don't know".
Each choice also carries a `reasoning_content` thought that argues for the opposite answer.
Each request's question is appended to `server.asked` as it arrives; an optional `latency`
(seconds) before each answer lets a kill land mid-run.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request

from helpers.thread_server import app_in_thread


def corrupted(question: str, sample: int, wrong: float) -> bool:
    """Whether sample `sample` of `question` is answered wrong (deterministic, share `wrong`)."""
    digest = hashlib.sha256(f"{question}\0{sample}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < wrong


@dataclass
class TaskTeacher:
    """The running server: its base URL, what it knows and how it answers (a test may change
    these between runs), and the questions it was asked, in order."""

    base_url: str
    answers: dict[str, str]
    wrong: float
    latency: float
    reply: str
    asked: list[str] = field(default_factory=list)

    def thought(self, question: str, sample: int) -> str:
        """A thinking trace (DeepSeek's `reasoning_content`) that argues for the opposite answer:
        a verifier that read it instead of the content would flip every verdict."""
        if question not in self.answers:
            return "No idea."
        right = self.answers[question]
        other = right if corrupted(question, sample, self.wrong) else right + "1"
        return f"First guess: {self.reply.format(other)}"

    def answer(self, question: str, sample: int) -> str:
        if question not in self.answers:
            return "I don't know."
        right = self.answers[question]
        return self.reply.format(right + "1" if corrupted(question, sample, self.wrong) else right)


@contextmanager
def task_teacher(answers: dict[str, str], wrong: float = 0.4, latency: float = 0.0,
                 reply: str = "<answer>{}</answer>") -> Iterator[TaskTeacher]:
    app = FastAPI()
    server = TaskTeacher("", dict(answers), wrong, latency, reply)

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": "task-model", "object": "model"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict[str, Any]:
        body = await request.json()
        question = body["messages"][-1]["content"]
        server.asked.append(question)
        if server.latency:
            await asyncio.sleep(server.latency)
        texts = [server.answer(question, i) for i in range(int(body.get("n", 1)))]
        choices = [{"index": i, "finish_reason": "stop",
                    "message": {"role": "assistant", "content": text,
                                "reasoning_content": server.thought(question, i)}}
                   for i, text in enumerate(texts)]
        words = sum(len(text.split()) for text in texts)
        return {"id": "chatcmpl-task", "object": "chat.completion", "created": int(time.time()),
                "model": "task-model", "choices": choices,
                "usage": {"prompt_tokens": len(question.split()), "completion_tokens": words,
                          "total_tokens": len(question.split()) + words}}

    with app_in_thread(app, "the task teacher") as url:
        server.base_url = url
        yield server
