"""The OpenAI response shapes `seed serve` sends, each declared once and built by one function here.

A shape is a TypedDict: the server builds plain dicts of it, mypy checks every builder against the
declaration, and FastAPI publishes the same declarations as the app's OpenAPI schema (which the
schemathesis test holds the server to). Dicts, not pydantic models, because a stream chunk built
as a dict and written with `json.dumps` costs 6.5 us against 7.4 us for a model and its
`model_dump_json` (docs/LOG.md, "One serve config"), and a reply is one chunk per token.

Request bodies are validated, so they are pydantic models, in `schemas.py`. This module knows
nothing of the engine, the tokenizer (token texts come from a `TokenTexts`) or HTTP.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal, NotRequired, Protocol

from typing_extensions import TypedDict  # pydantic reads only this one on Python 3.11

if TYPE_CHECKING:
    from seed.serve.engine_types import TokenLogprob

FinishReason = Literal["stop", "length", "tool_calls"]


class ErrorBody(TypedDict):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(TypedDict):
    error: ErrorBody


class CompletionTokensDetails(TypedDict):
    reasoning_tokens: int  # of completion_tokens, those inside <think>...</think>


class Usage(TypedDict):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    completion_tokens_details: NotRequired[CompletionTokensDetails]  # with a reasoning parser


class TopLogprob(TypedDict):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChoiceLogprobs(TypedDict):
    content: list[ChatTokenLogprob] | None


class FunctionCall(TypedDict):
    name: str
    arguments: str  # a JSON object, as the model wrote it


class ToolCall(TypedDict):
    id: str
    type: Literal["function"]
    function: FunctionCall


class AssistantMessage(TypedDict):
    role: Literal["assistant"]
    content: str | None
    refusal: str | None
    tool_calls: NotRequired[list[ToolCall]]  # present when the reply calls tools
    # the thought of a thinking model, under both names clients read (with a reasoning parser)
    reasoning_content: NotRequired[str | None]
    reasoning: NotRequired[str | None]


class ResponseMeta(TypedDict):
    """What every response and chunk of one request shares."""

    id: str
    created: int
    model: str
    system_fingerprint: str | None


class ChatChoice(TypedDict):
    index: int
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None
    finish_reason: FinishReason


class ChatCompletion(ResponseMeta):
    object: Literal["chat.completion"]
    choices: list[ChatChoice]
    usage: Usage


class FunctionCallDelta(TypedDict, total=False):
    name: str
    arguments: str


class ToolCallDelta(TypedDict):
    """A piece of a streamed call: its first has `id`, `type` and the name (arguments ""), the
    rest pieces of its arguments."""

    index: int
    id: NotRequired[str]
    type: NotRequired[Literal["function"]]
    function: FunctionCallDelta


class ChatDelta(TypedDict, total=False):
    role: Literal["assistant"]
    content: str
    refusal: None
    tool_calls: list[ToolCallDelta]
    reasoning_content: str
    reasoning: str


class ChatChunkChoice(TypedDict):
    index: int
    delta: ChatDelta
    logprobs: ChoiceLogprobs | None
    finish_reason: FinishReason | None


class ChatChunkHead(ResponseMeta):
    object: Literal["chat.completion.chunk"]


class ChatCompletionChunk(ChatChunkHead):
    choices: list[ChatChunkChoice]
    usage: NotRequired[Usage | None]  # present (null until the last chunk) with include_usage


class CompletionLogprobs(TypedDict):
    tokens: list[str]
    token_logprobs: list[float | None]  # null for an echoed prompt's first token
    top_logprobs: list[dict[str, float] | None] | None
    text_offset: list[int]


class CompletionChoice(TypedDict):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: FinishReason


class CompletionHead(ResponseMeta):
    object: Literal["text_completion"]


class Completion(CompletionHead):
    choices: list[CompletionChoice]
    usage: Usage


class CompletionChunkChoice(TypedDict):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: FinishReason | None


class CompletionChunk(CompletionHead):
    choices: list[CompletionChunkChoice]
    usage: NotRequired[Usage | None]


class ModelWatermark(TypedDict):
    """How a served model's replies are watermarked (seed.protect.watermark): the key's id only."""

    key_id: str
    gamma: float
    delta: float
    context: int


class ModelCard(TypedDict):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    watermark: NotRequired[ModelWatermark]  # present when its replies are watermarked


class ModelList(TypedDict):
    object: Literal["list"]
    data: list[ModelCard]


class Health(TypedDict):
    status: str


class TokenizeResponse(TypedDict):
    """vLLM's `/tokenize` answer; `token_strs` (the vocabulary's pieces) only when asked."""

    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None


class DetokenizeResponse(TypedDict):
    prompt: str


class Reply(TypedDict):
    """One finished sequence as the engine's events add up: its text, logprobs, finish reason
    and tokens."""

    text: str
    logprobs: list[TokenLogprob]
    finish_reason: FinishReason
    token_ids: list[int]


class TokenTexts(Protocol):
    """What a logprobs shape needs of the tokenizer."""

    def token_text(self, token_id: int) -> str: ...
    def token_bytes(self, token_id: int) -> list[int]: ...


def sse(data: object) -> str:
    """One server-sent event: `data` as compact JSON, or a string (`[DONE]`) as it is."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"),
                                                            ensure_ascii=False)
    return f"data: {payload}\n\n"


def error_body(message: str, type_: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> ErrorResponse:
    """OpenAI's error shape."""
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def response_meta(prefix: str, model: str, fingerprint: str | None) -> ResponseMeta:
    """A new response id (`chatcmpl-...`, `cmpl-...`), the time, the model and its fingerprint."""
    return {"id": f"{prefix}-{uuid.uuid4().hex}", "created": int(time.time()), "model": model,
            "system_fingerprint": fingerprint}


def usage(prompt_tokens: int, completion_tokens: int) -> Usage:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def total_usage(usages: Sequence[Usage]) -> Usage:
    return usage(sum(u["prompt_tokens"] for u in usages),
                 sum(u["completion_tokens"] for u in usages))


def model_list(name: str, created: int, watermark: ModelWatermark | None = None) -> ModelList:
    """The served model; `watermark` (its key id, gamma, delta, context; never the key) when its
    replies are watermarked."""
    card: ModelCard = {"id": name, "object": "model", "created": created, "owned_by": "seed"}
    if watermark is not None:
        card["watermark"] = watermark
    return {"object": "list", "data": [card]}


def chat_logprobs(logprobs: Sequence[TokenLogprob], texts: TokenTexts) -> list[ChatTokenLogprob]:
    def one(tid: int, lp: float) -> TopLogprob:
        return {"token": texts.token_text(tid), "logprob": lp, "bytes": texts.token_bytes(tid)}
    return [{**one(lp.token_id, lp.logprob), "top_logprobs": [one(t, v) for t, v in lp.top]}
            for lp in logprobs]


def completion_logprobs(logprobs: Sequence[TokenLogprob], texts: TokenTexts,
                        offset: int = 0) -> CompletionLogprobs:
    """The legacy completions shape; `offset` is where this piece starts in the choice's text."""
    tokens, offsets = [], []
    for lp in logprobs:
        offsets.append(offset)
        tokens.append(texts.token_text(lp.token_id))
        offset += len(tokens[-1])
    return {"tokens": tokens, "token_logprobs": [lp.logprob for lp in logprobs],
            "top_logprobs": [{texts.token_text(t): v for t, v in lp.top} for lp in logprobs],
            "text_offset": offsets}


def echo_logprobs(first_token: int, prompt: Sequence[TokenLogprob],
                  completion: Sequence[TokenLogprob], texts: TokenTexts,
                  completion_offset: int) -> CompletionLogprobs:
    """The legacy shape for an echoed prompt and its completion: the prompt's tokens first (the
    first has nothing before it, so its logprob and alternatives are null), then the completion's
    from `completion_offset`, the length of the echoed text."""
    head = completion_logprobs(prompt, texts, len(texts.token_text(first_token)))
    tail = completion_logprobs(completion, texts, completion_offset)
    tops = [None, *(head["top_logprobs"] or []), *(tail["top_logprobs"] or [])]
    return {"tokens": [texts.token_text(first_token), *head["tokens"], *tail["tokens"]],
            "token_logprobs": [None, *head["token_logprobs"], *tail["token_logprobs"]],
            "top_logprobs": tops, "text_offset": [0, *head["text_offset"], *tail["text_offset"]]}


def tokenized(ids: list[int], context: int, pieces: list[str] | None) -> TokenizeResponse:
    return {"count": len(ids), "max_model_len": context, "tokens": ids, "token_strs": pieces}


def chat_completion(meta: ResponseMeta, replies: Sequence[Reply], with_logprobs: bool,
                    texts: TokenTexts, used: Usage,
                    messages: Sequence[AssistantMessage] | None = None) -> ChatCompletion:
    """`messages`: each reply's message when its text was split (reasoning, tool calls); else
    each is the reply's text as content."""
    choices: list[ChatChoice] = [
        {"index": i, "message": messages[i] if messages else assistant_message(r["text"]),
         "logprobs": {"content": chat_logprobs(r["logprobs"], texts)} if with_logprobs else None,
         "finish_reason": r["finish_reason"]} for i, r in enumerate(replies)]
    return {**meta, "object": "chat.completion", "choices": choices, "usage": used}


def assistant_message(content: str | None, tool_calls: list[ToolCall] | None = None,
                      reasoning: str | None = None, with_reasoning: bool = False
                      ) -> AssistantMessage:
    """A reply's message; `with_reasoning` (a reasoning parser is on) adds both reasoning names,
    null when the reply did not think."""
    out: AssistantMessage = {"role": "assistant", "content": content, "refusal": None}
    if tool_calls:
        out["tool_calls"] = tool_calls
    if with_reasoning:
        out["reasoning_content"] = out["reasoning"] = reasoning
    return out


def with_reasoning_tokens(used: Usage, reasoning_tokens: int) -> Usage:
    return {**used, "completion_tokens_details": {"reasoning_tokens": reasoning_tokens}}


def tool_call_start(index: int, call_id: str, name: str) -> ToolCallDelta:
    return {"index": index, "id": call_id, "type": "function",
            "function": {"name": name, "arguments": ""}}


def tool_call_arguments(index: int, text: str) -> ToolCallDelta:
    return {"index": index, "function": {"arguments": text}}


def completion(meta: ResponseMeta, choices: list[CompletionChoice], used: Usage) -> Completion:
    return {**meta, "object": "text_completion", "choices": choices, "usage": used}


def completion_choice(index: int, text: str, logprobs: CompletionLogprobs | None,
                      finish_reason: FinishReason) -> CompletionChoice:
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


class ChatChunks:
    """The events of one streamed chat completion, each a `chat.completion.chunk` SSE line."""

    def __init__(self, meta: ResponseMeta, include_usage: bool):
        self.head: ChatChunkHead = {**meta, "object": "chat.completion.chunk"}
        self.include_usage = include_usage

    def chunk(self, index: int, delta: ChatDelta, logprobs: ChoiceLogprobs | None = None,
              finish_reason: FinishReason | None = None) -> str:
        out: ChatCompletionChunk = {**self.head, "choices": [
            {"index": index, "delta": delta, "logprobs": logprobs,
             "finish_reason": finish_reason}]}
        if self.include_usage:
            out["usage"] = None
        return sse(out)

    def role(self, index: int) -> str:
        """The first chunk of a choice: the assistant's role, no text yet."""
        return self.chunk(index, {"role": "assistant", "content": "", "refusal": None})

    def usage(self, used: Usage) -> str:
        """The last chunk with include_usage: no choices, the request's token counts."""
        return sse({**self.head, "choices": [], "usage": used})


class CompletionChunks:
    """The events of one streamed completion, each a `text_completion` SSE line."""

    def __init__(self, meta: ResponseMeta, include_usage: bool):
        self.head: CompletionHead = {**meta, "object": "text_completion"}
        self.include_usage = include_usage

    def chunk(self, index: int, text: str, logprobs: CompletionLogprobs | None = None,
              finish_reason: FinishReason | None = None) -> str:
        out: CompletionChunk = {**self.head, "choices": [
            {"index": index, "text": text, "logprobs": logprobs,
             "finish_reason": finish_reason}]}
        if self.include_usage:
            out["usage"] = None
        return sse(out)

    def usage(self, used: Usage) -> str:
        return sse({**self.head, "choices": [], "usage": used})
