"""OpenAI's Responses API (`POST /v1/responses`), stateless, over the local chat path.

A request is validated here (pydantic, lenient like `schemas.py` so that `--upstream` mode can
forward every field unchanged), checked for fields Seed does not honour (`unsupported_field`: a
400 naming the field, never a silent drop), translated into a chat-completions body
(`chat_request`: `instructions` become a system message, input items become messages, function
tools and `text.format` their chat forms) and answered by the local backend's chat. What comes
back becomes the response object in `responses_format.py`, or, streamed, the event sequence in
`responses_stream.py`.

Stateless: the server keeps no response, so `previous_response_id`, `conversation`, `store: true`
and `background: true` are refused; a client sends the whole conversation in `input` (the output
items of an earlier response can be sent back as they are). This module knows nothing of the
engine, the tokenizer or HTTP.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from seed.serve.errors import bad_request
from seed.serve.schemas import (
    MAX_MESSAGES,
    ChatCompletionRequest,
    JsonSchemaSpec,
    Name,
    Str,
)

MAX_TOOLS = 128  # OpenAI's bound on `tools`
MAX_METADATA = 16  # OpenAI's bound on `metadata` pairs


class InputPart(BaseModel):
    """One part of an input message's content: `input_text`, or `output_text` when an earlier
    response's message is sent back; any other type is refused when translated."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: Str
    text: Str | None = None


class InputItem(BaseModel):
    """One input item: a message (`type` "message" or absent), a `function_call` an earlier
    response made, its `function_call_output`, or a `reasoning` item sent back."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: Str | None = None
    role: Str | None = None
    content: Str | list[InputPart] | None = None
    call_id: Name | None = None
    name: Name | None = None
    arguments: Str | None = None
    output: Str | list[InputPart] | None = None


class ResponsesTool(BaseModel):
    """A tool in Responses' flat shape; only `function` tools run here (a built-in one such as
    `web_search` is refused locally and forwarded in upstream mode)."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: Str
    name: Name | None = None
    description: Str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    type: Str
    name: Name | None = None


class TextFormat(JsonSchemaSpec):
    """`text.format`: text, json_object, or json_schema with its fields flat beside `type`."""

    type: Literal["text", "json_object", "json_schema"]


class TextConfig(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)

    format: TextFormat | None = None


class ResponsesRequest(BaseModel):
    """The body of `POST /v1/responses`. Fields not declared here are kept (`model_extra`) for
    `unsupported_field` to refuse, or for an upstream to read."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, strict=True)

    model: Name
    input: Str | Annotated[list[InputItem], Field(min_length=1, max_length=MAX_MESSAGES)]
    instructions: Str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    text: TextConfig | None = None
    tools: Annotated[list[ResponsesTool], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    stream: bool = False
    # Echoed back and otherwise unused: a stateless server stores no response to tag or filter.
    metadata: Annotated[dict[Name, Str], Field(max_length=MAX_METADATA)] | None = None
    # Echoed back and written to nothing: Seed has no per-user policy; the usage log names keys.
    user: Name | None = None


# Fields of OpenAI's request that Seed takes at these values only, which mean what a stateless
# local server does anyway (a null is always fine: openai-python omits what it is not given).
_FINE_AT: dict[str, tuple[Any, ...]] = {
    "store": (False,), "background": (False,), "include": ([],), "truncation": ("disabled",),
    "service_tier": ("auto", "default"), "top_logprobs": (0,),
    "stream_options": ({}, {"include_obfuscation": False}),
}
# Fields accepted as no-ops, and why nothing is lost.
_NO_OPS = {
    "safety_identifier": "Seed has no abuse monitoring to report a user to",
    "prompt_cache_key": "Seed keeps no prompt cache to route by",
}
_REFUSED = {
    "previous_response_id": "this server is stateless and keeps no responses; send the whole "
                            "conversation in `input` (earlier output items can be sent back)",
    "conversation": "this server is stateless and keeps no conversations; send the whole "
                    "conversation in `input`",
    "store": "this server is stateless and stores no responses; send `store: false` or omit it",
    "background": "this server answers in the request only; omit `background`",
    "include": "Seed returns no extra output data (encrypted reasoning, logprobs, sources); "
               "omit `include`",
    "truncation": "Seed never truncates a conversation (one too long for the context is a 400); "
                  "send `truncation: \"disabled\"` or omit it",
    "service_tier": "Seed has one tier; send `auto`, `default` or omit it",
    "top_logprobs": "Seed's /v1/responses returns no logprobs (use /v1/chat/completions with "
                    "`logprobs`); omit it",
    "stream_options": "Seed does not obfuscate streamed deltas; send "
                      "`include_obfuscation: false` or omit `stream_options`",
    "reasoning": "a served model thinks as its chat template says; Seed cannot set a reasoning "
                 "effort or summary, so omit `reasoning`",
    "max_tool_calls": "Seed cannot cap the number of tool calls; use `parallel_tool_calls: "
                      "false` for at most one, or omit it",
    "prompt": "Seed has no stored prompt templates; send the prompt in `input`",
}


def unsupported_field(req: ResponsesRequest) -> tuple[str, str] | None:
    """The first field of `req` the local backend does not honour and what to do instead, or
    None. Unknown fields are refused too: Seed never silently drops a field."""
    for name, value in (req.model_extra or {}).items():
        if value is None or name in _NO_OPS:
            continue
        if name in _FINE_AT and value in _FINE_AT[name]:
            continue
        why = _REFUSED.get(name)
        if why is None:
            return name, f"`{name}` is not a field Seed's /v1/responses knows; remove it"
        if name in _FINE_AT:
            return name, f"`{name}: {json.dumps(value)}` is not supported: {why}"
        return name, f"`{name}` is not supported: {why}"
    for name, value in ((req.text.model_extra or {}) if req.text else {}).items():
        if value is not None:  # `verbosity`: a served model has one way of answering
            return f"text.{name}", (f"`text.{name}` is not supported: Seed cannot change how "
                                    f"much a model says; omit it")
    return None


# -- the request as a chat completion -------------------------------------------------------------

def chat_request(req: ResponsesRequest) -> ChatCompletionRequest:
    """The chat-completions request that answers `req` (400 for what cannot be translated)."""
    refused = unsupported_field(req)
    if refused:
        raise bad_request(refused[1][0].upper() + refused[1][1:] + ".", refused[0])
    messages: list[dict[str, Any]] = []
    if req.instructions:
        messages.append({"role": "system", "content": req.instructions})
    messages += _messages(req.input)
    body: dict[str, Any] = {"model": req.model, "messages": messages, "stream": req.stream}
    if req.stream:
        body["stream_options"] = {"include_usage": True}  # response.completed carries usage
    for key, value in [("max_completion_tokens", req.max_output_tokens),
                       ("temperature", req.temperature), ("top_p", req.top_p),
                       ("user", req.user)]:
        if value is not None:
            body[key] = value
    if req.text is not None and req.text.format is not None:
        body["response_format"] = _response_format(req.text.format)
    if req.tools:
        body["tools"] = [_chat_tool(i, t) for i, t in enumerate(req.tools)]
        if req.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = req.parallel_tool_calls
    if req.tool_choice is not None:
        body["tool_choice"] = _chat_tool_choice(req.tool_choice)
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ()))
        raise bad_request(f"This request cannot be answered as a chat: {where}: "
                          f"{first.get('msg', 'invalid value')}.", "input") from None


def _messages(items: str | list[InputItem]) -> list[dict[str, Any]]:
    """Input items as chat messages: consecutive function calls join one assistant message (with
    the text before them), each output a `tool` message."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    messages: list[dict[str, Any]] = []
    reasoning: str | None = None  # a reasoning item sent back, for the next assistant message
    for i, item in enumerate(items):
        kind = item.type or "message"
        if kind == "message":
            messages.append(_message(i, item))
        elif kind == "function_call":
            call = {"id": _need(item.call_id, i, "call_id"), "type": "function", "function": {
                "name": _need(item.name, i, "name"), "arguments": item.arguments or "{}"}}
            last = messages[-1] if messages else None
            if last is None or last["role"] != "assistant":
                last = {"role": "assistant", "content": None}
                messages.append(last)
            last.setdefault("tool_calls", []).append(call)
        elif kind == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": _need(item.call_id, i, "call_id"),
                             "content": _text(i, item.output, "output")})
        elif kind == "reasoning":
            reasoning = _reasoning_text(item)
            continue
        else:
            raise bad_request(f"Input items of type `{kind}` are not supported; send messages, "
                              "function_call and function_call_output items.", f"input.{i}.type")
        if reasoning is not None and messages[-1]["role"] == "assistant":
            messages[-1]["reasoning_content"] = reasoning
        reasoning = None
    return messages


def _message(i: int, item: InputItem) -> dict[str, Any]:
    role = item.role or "user"
    if role not in ("user", "assistant", "system", "developer"):
        raise bad_request(f"An input message's role must be user, assistant, system or "
                          f"developer, not `{role}`.", f"input.{i}.role")
    return {"role": role, "content": _text(i, item.content, "content")}


def _text(i: int, content: str | list[InputPart] | None, field: str) -> str:
    """A content string, or its text parts joined; an image, file or audio part is a 400."""
    if content is None or isinstance(content, str):
        return content or ""
    texts = []
    for j, part in enumerate(content):
        if part.type not in ("input_text", "output_text", "text") or part.text is None:
            raise bad_request(f"Content parts of type `{part.type}` are not supported (this "
                              "model reads text); send input_text parts.",
                              f"input.{i}.{field}.{j}.type")
        texts.append(part.text)
    return "".join(texts)


def _reasoning_text(item: InputItem) -> str:
    """A reasoning item's text (its `reasoning_text` parts); a summary alone is not the thought."""
    if isinstance(item.content, str):
        return item.content
    return "".join(p.text or "" for p in item.content or [])


def _need(value: str | None, i: int, field: str) -> str:
    if not value:
        raise bad_request(f"This input item needs a `{field}`.", f"input.{i}.{field}")
    return value


def _response_format(f: TextFormat) -> dict[str, Any]:
    if f.type != "json_schema":
        return {"type": f.type}
    spec: dict[str, Any] = {"name": f.name, "schema": f.schema_}
    if f.description is not None:
        spec["description"] = f.description
    if f.strict is not None:
        spec["strict"] = f.strict
    return {"type": "json_schema", "json_schema": spec}


def _chat_tool(i: int, tool: ResponsesTool) -> dict[str, Any]:
    if tool.type != "function":
        raise bad_request(f"Tools of type `{tool.type}` are not supported (Seed runs no built-in "
                          "tools); send function tools.", f"tools.{i}.type")
    function: dict[str, Any] = {"name": _need_tool_name(i, tool)}
    for key in ("description", "parameters", "strict"):
        value = getattr(tool, key)
        if value is not None:
            function[key] = value
    return {"type": "function", "function": function}


def _need_tool_name(i: int, tool: ResponsesTool) -> str:
    if not tool.name:
        raise bad_request("A function tool needs a `name`.", f"tools.{i}.name")
    return tool.name


def _chat_tool_choice(choice: str | NamedToolChoice) -> Any:
    if isinstance(choice, str):
        return choice
    if choice.type != "function" or not choice.name:
        raise bad_request(f"tool_choice of type `{choice.type}` is not supported; send auto, "
                          "none, required or {\"type\": \"function\", \"name\": ...}.",
                          "tool_choice")
    return {"type": "function", "function": {"name": choice.name}}


def _field_names(models: tuple[type[BaseModel], ...]) -> frozenset[str]:
    return frozenset(info.alias or name for model in models
                     for name, info in model.model_fields.items())


_FIELDS = _field_names((ResponsesRequest, InputItem, InputPart, ResponsesTool, NamedToolChoice,
                        TextConfig, TextFormat))


def error_param(loc: tuple[int | str, ...]) -> str:
    """A validation error's location as the field a client wrote (`input.2.call_id`), without
    the body prefix and the union members pydantic names on the way."""
    return ".".join(str(p) for p in loc if isinstance(p, int) or p in _FIELDS) or "body"
