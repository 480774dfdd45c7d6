"""One request's sequences in the engine process, from submit to the last event.

`EngineRun` submits one prompt's sequences (a 429 when the queue is full, a 503 once the engine
process has stopped), yields their events (a slow reader gets a backlog merged per choice), counts
tokens in the request's usage record, and cancels what is left however the request ends.
`collect_replies` waits for whole replies while watching for the client to leave (a 499);
`EngineStream` is the server-sent-event response that cancels its runs when it ends. This module
builds no response shape (`openai_format.py` does) and knows nothing of prompts or templates.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterable, AsyncIterator
from typing import cast

from starlette.requests import Request
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from seed.serve import openai_format as fmt
from seed.serve.engine_types import Event, QueueFull, SamplingParams, TokenLogprob
from seed.serve.errors import APIError, overloaded
from seed.serve.usage import RequestRecord
from seed.serve.worker import QUEUE_FULL, EngineDead, EngineProcess

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class EngineRun:
    """One prompt's sequences in the engine: submitted at once (429 if the queue is full, 503 if
    the engine process stopped), cancelled when the client goes away, counted in the request's
    usage record."""

    def __init__(self, engine: EngineProcess, prompt_ids: list[int],
                 params: list[SamplingParams], grammar: str | None, rec: RequestRecord):
        self.engine, self.rec, self.params = engine, rec, params
        self.prompt_ids = prompt_ids
        self.prompt_logprobs: dict[int, list[TokenLogprob]] = {}  # by choice, once scored
        self.prompt_tokens = len(prompt_ids)
        self.completion_tokens = 0
        self.queue: asyncio.Queue[Event] = asyncio.Queue()
        self.error: APIError | None = None  # why the run ended early, once it has
        try:
            self.tag = engine.submit(prompt_ids, params, grammar, self.queue, rec.key)
        except QueueFull:
            raise overloaded() from None
        except EngineDead as e:
            raise APIError(503, str(e), type_="server_error", code="engine_unavailable") from None
        rec.prompt_tokens += self.prompt_tokens

    def cancel(self) -> None:
        self.engine.cancel(self.tag)

    async def __aenter__(self) -> EngineRun:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()

    async def events(self) -> AsyncIterator[Event]:
        """Events until every sequence has finished; a slow reader gets them merged per choice."""
        open_ = set(range(len(self.params)))
        while open_:
            pending = [await self.queue.get()]
            while not self.queue.empty():
                pending.append(self.queue.get_nowait())
            for ev in coalesce(pending):
                if ev.prompt_logprobs is not None:
                    self.prompt_logprobs[ev.index] = ev.prompt_logprobs
                self.rec.tokens((self.tag, ev.index), len(ev.token_ids), ev.finish_reason)
                if ev.token_ids:
                    self.completion_tokens += len(ev.token_ids)
                    self.rec.completion_tokens += len(ev.token_ids)
                if ev.finish_reason and ev.finish_reason.startswith("error"):
                    self.error = self._failure(ev.finish_reason)
                    return
                yield ev
                if ev.finish_reason:
                    open_.discard(ev.index)

    def _failure(self, reason: str) -> APIError:
        if reason == QUEUE_FULL:
            return overloaded()
        message = self.engine.dead or f"Generation failed ({reason}); please retry."
        return APIError(500, message, type_="server_error")

    async def collect(self) -> list[fmt.Reply]:
        """Every sequence's text, logprobs and finish reason."""
        # every sequence's last event sets its finish reason; "length" only holds the place
        results: list[fmt.Reply] = [{"text": "", "logprobs": [], "finish_reason": "length",
                                     "token_ids": []} for _ in self.params]
        async with self:
            async for ev in self.events():
                r = results[ev.index]
                r["text"] += ev.text
                r["logprobs"] += ev.logprobs
                r["token_ids"] += ev.token_ids
                if ev.finish_reason:
                    r["finish_reason"] = finish_reason(ev)
        if self.error:
            raise self.error
        return results

    def usage(self) -> fmt.Usage:
        return fmt.usage(self.prompt_tokens, self.completion_tokens)


async def collect_replies(runs: list[EngineRun], http: Request) -> list[list[fmt.Reply]]:
    """Every run's replies, for a response sent whole. A client that leaves first is noticed at
    once (its disconnect message, not a poll between events) and its runs are cancelled: 499."""
    tasks = [asyncio.ensure_future(run.collect()) for run in runs]
    gone = asyncio.ensure_future(_disconnected(http.receive))
    try:
        for task in tasks:
            await asyncio.wait([task, gone], return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                raise APIError(499, "The client closed the request.")
        return [task.result() for task in tasks]  # the first failure, if one failed
    finally:
        for job in [gone, *tasks]:  # a failed run ends the others too
            if not job.cancel() and not job.cancelled():
                job.exception()  # seen: a second failure is not logged as unretrieved
        for run in runs:
            run.cancel()


async def _disconnected(receive: Receive) -> None:
    """Return when the client has gone. The body has been read, so the only message left for
    the request is its disconnect."""
    while (await receive())["type"] != "http.disconnect":
        await asyncio.sleep(0.1)  # a server that repeats an empty body: do not spin


class EngineStream(StreamingResponse):
    """Server-sent events whose runs are cancelled however the response ends. A client that
    leaves before the first chunk cancels the response before its body starts, so the body's
    own cleanup (cancel, count the request) never runs; this does both."""

    def __init__(self, body: AsyncIterable[str], runs: list[EngineRun], rec: RequestRecord):
        super().__init__(body, media_type="text/event-stream", headers=SSE_HEADERS)
        self.runs, self.rec = runs, rec

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            for run in self.runs:
                run.cancel()
            self.rec.finish(499)  # a no-op when the stream ended and counted itself


def coalesce(events: list[Event]) -> list[Event]:
    """Merge consecutive events of the same choice (in order), so a backlog is one chunk each."""
    merged: dict[int, Event] = {}
    for ev in events:
        m = merged.get(ev.index)
        if m is None:  # each event was built for this request from the pipe: ours to extend
            merged[ev.index] = ev
            continue
        m.text += ev.text
        m.token_ids += ev.token_ids
        m.logprobs += ev.logprobs
        m.finish_reason = ev.finish_reason
        if ev.prompt_logprobs is not None:
            m.prompt_logprobs = ev.prompt_logprobs
    return list(merged.values())


def finish_reason(ev: Event) -> fmt.FinishReason:
    """A finished event's reason as a response gives it (`events()` ends a run at an
    "error: ..." reason, so what reaches a response is stop or length)."""
    return cast(fmt.FinishReason, ev.finish_reason)
