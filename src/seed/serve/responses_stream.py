"""The Responses API's streamed event sequence, built from a streamed chat completion's chunks.

`ResponseEvents` reads each `chat.completion.chunk` (OpenAI's documented shape: `delta.content`,
`delta.reasoning_content` or `delta.reasoning`, `delta.tool_calls` pieces by index, the finish
reason, the usage chunk) and writes the events OpenAI sends, in its order, each with its
`sequence_number`: response.created, response.in_progress; per output item
response.output_item.added, then for a message response.content_part.added,
response.output_text.delta ..., response.output_text.done, response.content_part.done, for a
reasoning item the same with response.reasoning_text.*, for a function call
response.function_call_arguments.delta ... and .done; response.output_item.done; and at the end
response.completed, response.incomplete (out of tokens) or response.failed. An item is closed
when an item of another kind starts; function calls stay open until the end (their pieces come by
index). The item shapes and the final response object are `responses_format.py`'s.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any, Literal

from seed.serve.errors import APIError
from seed.serve.responses_format import (
    FunctionCallItem,
    MessageItem,
    OutputItem,
    ReasoningItem,
    ResponseHead,
    ResponseUsage,
    dumps,
    failed,
    finished,
    function_call_item,
    item_id,
    message_item,
    output_text,
    reasoning_item,
    response_usage,
)

Status = Literal["in_progress", "completed", "incomplete"]


class ResponseEvents:
    """The events of one streamed response, as SSE strings (`event:` and `data:` lines)."""

    def __init__(self, head: ResponseHead):
        self.head = head
        self.sequence = 0
        self.output: list[OutputItem] = []
        self.open: dict[int, str] = {}  # output index -> the text gathered so far (not calls)
        self.calls: dict[int, int] = {}  # a chat tool call's index -> its output index
        self.finish_reason: str | None = None
        self.usage: ResponseUsage | None = None

    def event(self, type_: str, **fields: Any) -> str:
        data = {"type": type_, "sequence_number": self.sequence, **fields}
        self.sequence += 1
        return f"event: {type_}\ndata: {dumps(data)}\n\n"

    def start(self) -> list[str]:
        snapshot = {**self.head, "status": "in_progress", "error": None,
                    "incomplete_details": None, "output": [], "usage": None}
        return [self.event("response.created", response=snapshot),
                self.event("response.in_progress", response=snapshot)]

    def chunk(self, chunk: dict[str, Any]) -> list[str]:
        """The events for one chat chunk (its first choice; a usage chunk has none)."""
        if chunk.get("usage"):
            self.usage = response_usage(chunk["usage"])
        out: list[str] = []
        for choice in chunk.get("choices") or []:
            delta = choice.get("delta") or {}
            thought = delta.get("reasoning_content") or delta.get("reasoning")
            if thought:
                out += self._text("reasoning", thought)
            if delta.get("content"):
                out += self._text("message", delta["content"])
            for piece in delta.get("tool_calls") or []:
                out += self._call_piece(piece)
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
        return out

    def end(self) -> list[str]:
        """Close every open item, then response.completed or response.incomplete (a reply with
        nothing in it is an empty message, as the response object says)."""
        out = [] if self.output else self._text("message", "")
        out += self._close_all()
        response = finished(self.head, self.output, self.finish_reason, self.usage)
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        return [*out, self.event(kind, response=response)]

    def fail(self, error: APIError) -> list[str]:
        return [self.event("response.failed", response=failed(self.head, self.output, error))]

    # -- items ------------------------------------------------------------------------------------

    def _text(self, kind: Literal["message", "reasoning"], text: str) -> list[str]:
        """A piece of the message's or the reasoning's text, opening its item if need be."""
        out: list[str] = []
        index = next((i for i in self.open if self.output[i]["type"] == kind), None)
        if index is None:
            out += self._close_all()
            index = len(self.output)
            item: OutputItem = (message_item(item_id("msg"), None, "in_progress")
                                if kind == "message"
                                else reasoning_item(item_id("rs"), None, "in_progress"))
            self.output.append(item)
            self.open[index] = ""
            part = output_text("") if kind == "message" else {"type": "reasoning_text",
                                                                 "text": ""}
            out += [self.event("response.output_item.added", output_index=index, item=item),
                    self.event("response.content_part.added", item_id=item["id"],
                               output_index=index, content_index=0, part=part)]
        if not text:
            return out
        self.open[index] += text
        item_id_ = self.output[index]["id"]
        if kind == "message":
            out.append(self.event("response.output_text.delta", item_id=item_id_,
                                  output_index=index, content_index=0, delta=text, logprobs=[]))
        else:
            out.append(self.event("response.reasoning_text.delta", item_id=item_id_,
                                  output_index=index, content_index=0, delta=text))
        return out

    def _call_piece(self, piece: dict[str, Any]) -> list[str]:
        out: list[str] = []
        index = self.calls.get(piece.get("index", 0))
        function = piece.get("function") or {}
        if index is None:
            out += self._close_all()
            index = len(self.output)
            item = function_call_item(item_id("fc"), piece.get("id") or item_id("call"),
                                      function.get("name") or "", "", "in_progress")
            self.output.append(item)
            self.calls[piece.get("index", 0)] = index
            out.append(self.event("response.output_item.added", output_index=index, item=item))
        call = self.output[index]
        assert call["type"] == "function_call"
        if function.get("arguments"):
            call["arguments"] += function["arguments"]
            out.append(self.event("response.function_call_arguments.delta", item_id=call["id"],
                                  output_index=index, delta=function["arguments"]))
        return out

    def _close_all(self) -> list[str]:
        """The .done events of every open item, in output order."""
        out: list[str] = []
        status: Status = "incomplete" if self.finish_reason == "length" else "completed"
        for index in sorted([*self.open, *self.calls.values()]):
            item = self.output[index]
            if item["type"] == "function_call":
                out.append(self._close_call(index, item, status))
            else:
                out += self._close_text(index, item, self.open[index], status)
        self.open.clear()
        self.calls.clear()
        return out

    def _close_text(self, index: int, item: MessageItem | ReasoningItem, text: str,
                    status: Status) -> list[str]:
        item["status"] = status
        if item["type"] == "message":
            item["content"] = [output_text(text)]
            return [self.event("response.output_text.done", item_id=item["id"],
                               output_index=index, content_index=0, text=text, logprobs=[]),
                    self.event("response.content_part.done", item_id=item["id"],
                               output_index=index, content_index=0, part=item["content"][0]),
                    self.event("response.output_item.done", output_index=index, item=item)]
        item["content"] = [{"type": "reasoning_text", "text": text}]
        return [self.event("response.reasoning_text.done", item_id=item["id"],
                           output_index=index, content_index=0, text=text),
                self.event("response.content_part.done", item_id=item["id"],
                           output_index=index, content_index=0, part=item["content"][0]),
                self.event("response.output_item.done", output_index=index, item=item)]

    def _close_call(self, index: int, item: FunctionCallItem, status: Status) -> str:
        item["status"] = status
        done = self.event("response.function_call_arguments.done", item_id=item["id"],
                          output_index=index, name=item["name"], arguments=item["arguments"])
        return done + self.event("response.output_item.done", output_index=index, item=item)


async def response_events(head: ResponseHead,
                          chat_sse: AsyncIterable[str | bytes | memoryview]) -> AsyncIterator[str]:
    """The Responses events for a streamed chat completion's server-sent events."""
    events = ResponseEvents(head)
    for e in events.start():
        yield e
    buffer = ""
    try:
        async for piece in chat_sse:
            buffer += piece if isinstance(piece, str) else bytes(piece).decode("utf-8")
            while "\n\n" in buffer:
                raw, buffer = buffer.split("\n\n", 1)
                data = _data(raw)
                if data is None:
                    continue
                if data == "[DONE]":
                    for e in events.end():
                        yield e
                    return
                chunk = json.loads(data)
                error = chunk.get("error") if isinstance(chunk, dict) else None
                if isinstance(error, dict):
                    failure = APIError(500, str(error.get("message")),
                                       type_=str(error.get("type") or "server_error"),
                                       code=error.get("code"))
                    for e in events.fail(failure):
                        yield e
                    return
                for e in events.chunk(chunk):
                    yield e
    finally:
        aclose = getattr(chat_sse, "aclose", None)
        if aclose is not None:
            await aclose()


def _data(raw: str) -> str | None:
    """The `data:` payload of one server-sent event, or None for an event without one."""
    for line in raw.splitlines():
        if line.startswith("data: "):
            return line[len("data: "):]
    return None
