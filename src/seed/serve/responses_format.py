"""The Responses API's response shapes: the response object and its output items, built here.

Declared once as TypedDicts (as `openai_format.py` does for chat and completions: plain dicts that
mypy checks and FastAPI publishes in the OpenAPI schema) and built by one function each: the
echoed settings (`response_head`), a finished or failed response, each output item (a `message`
with `output_text`, a `reasoning` item, a `function_call`), the usage in the Responses API's
names, and the whole response for a `chat.completion` (`from_chat_completion`). The request side
is `responses.py`; the streamed events are `responses_stream.py`. Nothing here knows HTTP.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal, NotRequired

from typing_extensions import TypedDict  # pydantic reads only this one on Python 3.11

from seed.serve.errors import APIError
from seed.serve.responses import NamedToolChoice, ResponsesRequest


class OutputText(TypedDict):
    type: Literal["output_text"]
    text: str
    annotations: list[dict[str, Any]]
    logprobs: list[dict[str, Any]]


class MessageItem(TypedDict):
    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[OutputText]


class ReasoningText(TypedDict):
    type: Literal["reasoning_text"]
    text: str


class ReasoningItem(TypedDict):
    id: str
    type: Literal["reasoning"]
    summary: list[dict[str, Any]]
    content: list[ReasoningText]
    status: Literal["in_progress", "completed", "incomplete"]


class FunctionCallItem(TypedDict):
    id: str
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]


OutputItem = MessageItem | ReasoningItem | FunctionCallItem


class InputTokensDetails(TypedDict):
    cached_tokens: int  # what the chat reports (Seed caches no prompts: 0)
    cache_write_tokens: int


class OutputTokensDetails(TypedDict):
    reasoning_tokens: int


class ResponseUsage(TypedDict):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(TypedDict):
    reason: Literal["max_output_tokens"]


class ResponseError(TypedDict):
    code: str
    message: str


class ResponseSettings(TypedDict):
    """What a response echoes of its request, as OpenAI does (defaults filled in)."""

    instructions: str | None
    max_output_tokens: int | None
    metadata: dict[str, str]
    parallel_tool_calls: bool
    temperature: float
    top_p: float
    text: dict[str, Any]
    tool_choice: str | dict[str, Any]
    tools: list[dict[str, Any]]
    truncation: Literal["disabled"]
    user: str | None
    previous_response_id: None
    reasoning: dict[str, Any]
    background: bool
    store: bool


class ResponseHead(ResponseSettings):
    id: str
    object: Literal["response"]
    created_at: int
    model: str


class ResponseObject(ResponseHead):
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: ResponseError | None
    incomplete_details: IncompleteDetails | None
    output: list[OutputItem]
    usage: ResponseUsage | None
    completed_at: NotRequired[int]


def item_id(prefix: str) -> str:
    """A new output item id: `msg_...`, `rs_...`, `fc_...`."""
    return f"{prefix}_{uuid.uuid4().hex}"


def response_head(req: ResponsesRequest, temperature: float, top_p: float) -> ResponseHead:
    """A new response id and time, and the request's settings as the response echoes them;
    `temperature` and `top_p` are the server's defaults for those the request left out."""
    text: dict[str, Any] = {"format": {"type": "text"}}
    if req.text is not None and req.text.format is not None:
        text = {"format": req.text.format.model_dump(by_alias=True, exclude_none=True)}
    return {
        "id": item_id("resp"), "object": "response", "created_at": int(time.time()),
        "model": req.model, "instructions": req.instructions,
        "max_output_tokens": req.max_output_tokens, "metadata": dict(req.metadata or {}),
        "parallel_tool_calls": True if req.parallel_tool_calls is None else req.parallel_tool_calls,
        "temperature": temperature if req.temperature is None else req.temperature,
        "top_p": top_p if req.top_p is None else req.top_p, "text": text,
        "tool_choice": _echo_tool_choice(req.tool_choice),
        "tools": [t.model_dump(exclude_none=True) for t in req.tools or []],
        "truncation": "disabled", "user": req.user, "previous_response_id": None,
        "reasoning": {"effort": None, "summary": None}, "background": False, "store": False}


def _echo_tool_choice(choice: str | NamedToolChoice | None) -> str | dict[str, Any]:
    if choice is None:
        return "auto"
    return choice if isinstance(choice, str) else choice.model_dump(exclude_none=True)


def response_usage(chat_usage: dict[str, Any] | None) -> ResponseUsage | None:
    """A chat completion's usage in the Responses API's names."""
    if chat_usage is None:
        return None
    prompt = chat_usage.get("prompt_tokens_details") or {}
    completion = chat_usage.get("completion_tokens_details") or {}
    return {"input_tokens": chat_usage["prompt_tokens"],
            "input_tokens_details": {"cached_tokens": prompt.get("cached_tokens") or 0,
                                     "cache_write_tokens": 0},
            "output_tokens": chat_usage["completion_tokens"],
            "output_tokens_details": {"reasoning_tokens": completion.get("reasoning_tokens") or 0},
            "total_tokens": chat_usage["total_tokens"]}


def finished(head: ResponseHead, output: list[OutputItem], finish_reason: str | None,
             usage: ResponseUsage | None) -> ResponseObject:
    """The response once generation ended: incomplete when it ran out of tokens."""
    cut = finish_reason == "length"
    return {**head, "status": "incomplete" if cut else "completed", "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if cut else None,
            "output": output, "usage": usage, "completed_at": int(time.time())}


def from_chat_completion(head: ResponseHead, completion: dict[str, Any]) -> ResponseObject:
    """The response object for a `chat.completion` (one choice)."""
    choice = completion["choices"][0]
    message = choice["message"]
    status: Literal["completed", "incomplete"] = (
        "incomplete" if choice["finish_reason"] == "length" else "completed")
    output: list[OutputItem] = []
    thought = message.get("reasoning_content") or message.get("reasoning")
    if thought:
        output.append(reasoning_item(item_id("rs"), thought, status))
    calls = message.get("tool_calls") or []
    if message.get("content") or not (calls or output):  # a reply with nothing says ""
        output.append(message_item(item_id("msg"), message.get("content") or "", status))
    for call in calls:
        output.append(function_call_item(item_id("fc"), call["id"], call["function"]["name"],
                                         call["function"]["arguments"], status))
    return finished(head, output, choice["finish_reason"], response_usage(completion.get("usage")))


def message_item(id_: str, text: str | None,
                 status: Literal["in_progress", "completed", "incomplete"]) -> MessageItem:
    """A message output item; `text` None while it is in progress (no content part yet)."""
    content: list[OutputText] = [] if text is None else [output_text(text)]
    return {"id": id_, "type": "message", "role": "assistant", "status": status,
            "content": content}


def output_text(text: str) -> OutputText:
    return {"type": "output_text", "text": text, "annotations": [], "logprobs": []}


def reasoning_item(id_: str, text: str | None,
                   status: Literal["in_progress", "completed", "incomplete"]) -> ReasoningItem:
    content: list[ReasoningText] = [] if text is None else [{"type": "reasoning_text",
                                                             "text": text}]
    return {"id": id_, "type": "reasoning", "summary": [], "content": content, "status": status}


def function_call_item(id_: str, call_id: str, name: str, arguments: str,
                       status: Literal["in_progress", "completed", "incomplete"]
                       ) -> FunctionCallItem:
    return {"id": id_, "type": "function_call", "call_id": call_id, "name": name,
            "arguments": arguments, "status": status}


def failed(head: ResponseHead, output: list[OutputItem], error: APIError) -> ResponseObject:
    """The response when generation failed part way (the engine stopped, the queue was full)."""
    return {**head, "status": "failed", "error": {"code": error.code or error.type,
                                                  "message": error.message},
            "incomplete_details": None, "output": output, "usage": None}


def dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
