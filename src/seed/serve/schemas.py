"""The OpenAI request bodies `seed serve` accepts, as pydantic models (validated on arrival).

A malformed body is a 400 naming the field; the same models are the requests in the app's OpenAPI
schema. Every string is whole Unicode (a lone surrogate sent as a JSON escape could be neither
tokenized nor written back as UTF-8), and each string Seed echoes or keeps (the model name in
errors and the usage log, stop strings, `user`) has a length bound, as do lists and the nesting
of a JSON schema. A field a body does not declare is kept, so an upstream gets it as sent;
`fields.unsupported` names the first field the local backend would otherwise drop. The response
shapes are declared and built in `openai_format.py`, not here.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    field_validator,
)
from pydantic_core import PydanticCustomError

MAX_NAME_CHARS = 256  # model, user, a message's name, a JSON schema's name
MAX_STOP_CHARS = 1000  # each stop string
# OpenAI takes 4 stop strings; lm-evaluation-harness sends a task's `until` strings plus the EOS
# text (5 or more), so Seed takes more, bounded (each is checked against every new token's text).
MAX_STOPS = 64
MAX_MESSAGES = 2048  # OpenAI's own bound on `messages`
MAX_SCHEMA_DEPTH = 64  # nested objects and arrays in a response_format schema
MAX_SEED = 2**63 - 1  # a signed 64-bit seed, as OpenAI documents it
MAX_TOOLS = 128  # OpenAI's bound on `tools` (also on the calls of one history message)
MAX_LOGIT_BIAS = 1024  # token ids in one logit_bias map
MAX_DETOKENIZE = 1 << 20  # token ids in one /detokenize body

_SURROGATE = re.compile("[\ud800-\udfff]")


def _whole_unicode(text: str) -> str:
    if not text.isascii() and _SURROGATE.search(text):
        raise PydanticCustomError("unicode", "the text holds a lone surrogate (U+D800-U+DFFF); "
                                  "send valid Unicode")
    return text


def _texts(value: Any) -> Any:
    """Check the strings of a union field (str | list[...]) once it is validated; a validator on
    each member would put its own name in the error's location."""
    for text in [value] if isinstance(value, str) else value or []:
        if isinstance(text, str):
            _whole_unicode(text)
    return value


Str = Annotated[str, AfterValidator(_whole_unicode)]
Name = Annotated[str, Field(max_length=MAX_NAME_CHARS), AfterValidator(_whole_unicode)]
Text = Annotated[str, Field(min_length=1)]  # in a union field, which _texts checks
Stop = Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
TokenId = Annotated[int, Field(ge=0)]


class _Request(BaseModel):
    # strict: `true` is not a number and "1" is not an int, as the published schema says. Fields
    # not declared are kept (`model_extra`): `fields.unsupported` refuses them for the local
    # backend, and an upstream gets the body as it came.
    model_config = ConfigDict(extra="allow", populate_by_name=True, strict=True)


class _Part(BaseModel):
    """A nested object of a request, typed as strictly as the body."""

    model_config = ConfigDict(strict=True)


class TextPart(_Part):
    type: Literal["text"]
    text: Str


class ToolCallFunction(_Part):
    name: Name
    arguments: Str  # a JSON object as a string, as OpenAI returns it


class ToolCall(_Part):
    """A call in an assistant message of the history (what a client replays)."""

    id: Name
    type: Literal["function"] = "function"
    function: ToolCallFunction


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # extras: see `unsupported`

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Annotated[str | list[TextPart] | None, AfterValidator(_texts)] = None
    name: Name | None = None
    tool_calls: Annotated[list[ToolCall], Field(max_length=MAX_TOOLS)] | None = None
    tool_call_id: Name | None = None  # role "tool": the call this message answers
    # An assistant message as openai-python replays it: its reasoning goes to the template (which
    # renders it for recent turns, or drops it); the local backend takes the fields Seed never
    # sends only when null or empty (`replayed_extra`), an upstream gets them as they are.
    reasoning_content: Str | None = None
    reasoning: Str | None = None
    refusal: Str | None = None
    annotations: Annotated[list[Any], Field(max_length=MAX_TOOLS)] | None = None
    audio: dict[str, Any] | None = None
    function_call: dict[str, Any] | None = None

    def replayed_extra(self) -> str | None:
        """The first of the replayed fields Seed never sends that holds something, or None."""
        for name in ("refusal", "annotations", "audio", "function_call"):
            if getattr(self, name):
                return name
        return None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow", strict=True)  # extras: see `unsupported`

    include_usage: bool = False


class JsonSchemaSpec(BaseModel):
    model_config = ConfigDict(populate_by_name=True, strict=True)

    name: Name = "response"
    description: Str | None = None
    schema_: dict[str, Any] = Field(default_factory=dict, alias="schema")
    strict: bool | None = None

    @field_validator("schema_")
    @classmethod
    def _plain_json(cls, schema: dict[str, Any]) -> dict[str, Any]:
        _check_json(schema)
        return schema


class ResponseFormat(_Part):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaSpec | None = None


class _Sampling(_Request):
    model: Name
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    stop: Annotated[Stop | Annotated[list[Stop], Field(max_length=MAX_STOPS)] | None,
                    AfterValidator(_texts)] = None
    seed: int | None = Field(None, ge=-MAX_SEED - 1, le=MAX_SEED)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    user: Name | None = None
    # vLLM's sampling fields: 0 or -1 keeps every token, as does min_p 0 or a penalty of 1
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = Field(None, ge=0, le=1)
    # at least 0.01: a penalty of 5e-324 divided a logit into inf, and the sampler into NaN
    repetition_penalty: float | None = Field(None, ge=0.01, le=2)
    # OpenAI's: a token id (as a JSON key) to a bias added to its logit before sampling
    logit_bias: Annotated[dict[Annotated[str, Field(pattern=r"^[0-9]{1,10}$")],
                               Annotated[float, Field(ge=-100, le=100)]],
                          Field(max_length=MAX_LOGIT_BIAS)] | None = None
    # Seed's: false asks a watermarking server not to watermark this reply (only a key whose
    # policy allows it may; seed.protect.watermark)
    watermarking: bool | None = None


class FunctionDefinition(_Part):
    name: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]  # OpenAI's rule, and `.`
    description: Str | None = None
    parameters: dict[str, Any] | None = None  # a JSON schema; none: the function takes no arguments
    strict: bool | None = None  # Seed always holds a call to its schema

    @field_validator("parameters")
    @classmethod
    def _plain_json(cls, schema: dict[str, Any] | None) -> dict[str, Any] | None:
        _check_json(schema)
        return schema


class FunctionTool(_Part):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Part):
    name: Name


class NamedToolChoice(_Part):
    type: Literal["function"]
    function: NamedFunction


class ChatCompletionRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    response_format: ResponseFormat | None = None
    # A tool or choice of another kind (OpenAI's `custom`, `allowed_tools`) is kept for an
    # upstream; the local backend serves function tools only and refuses it by name.
    tools: Annotated[list[FunctionTool | dict[str, Any]], Field(max_length=MAX_TOOLS)] | None = None
    tool_choice: (Literal["none", "auto", "required"] | NamedToolChoice | dict[str, Any]
                  | None) = None
    parallel_tool_calls: bool | None = None  # default true, as OpenAI's
    # vLLM's: variables for the chat template (`enable_thinking`); Seed's own are refused
    chat_template_kwargs: dict[str, Any] | None = None

    @field_validator("chat_template_kwargs")
    @classmethod
    def _plain_kwargs(cls, kwargs: dict[str, Any] | None) -> dict[str, Any] | None:
        _check_json(kwargs)
        return kwargs


class CompletionRequest(_Sampling):
    prompt: Annotated[Text | Annotated[list[Text], Field(min_length=1, max_length=16)]
                      | Annotated[list[TokenId], Field(min_length=1)]
                      | Annotated[list[Annotated[list[TokenId], Field(min_length=1)]],
                                  Field(min_length=1, max_length=16)],
                      AfterValidator(_texts)]
    max_tokens: int | None = Field(16, ge=0)  # 0 only with echo: the prompt scored, nothing more
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False


class TokenizeCompletionRequest(BaseModel):
    """vLLM's `/tokenize` body for a text. Lenient like the /v1 bodies (an upstream gets every
    field); the local backend refuses a field it does not know."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: Name | None = None
    prompt: Str
    add_special_tokens: bool = True
    return_token_strs: bool = False


class TokenizeChatRequest(BaseModel):
    """vLLM's `/tokenize` body for a chat, rendered with the model's chat template."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: Name | None = None
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    add_generation_prompt: bool = True
    add_special_tokens: bool = False
    return_token_strs: bool = False


def _tokenize_kind(body: Any) -> str:
    if isinstance(body, dict):
        return "chat" if "messages" in body else "completion"
    return "chat" if isinstance(body, TokenizeChatRequest) else "completion"


# a body with `messages` is a chat, any other a text (so an error names the body's own field)
TokenizeRequest = Annotated[Annotated[TokenizeCompletionRequest, Tag("completion")]
                            | Annotated[TokenizeChatRequest, Tag("chat")],
                            Discriminator(_tokenize_kind)]


class DetokenizeRequest(BaseModel):
    """vLLM's `/detokenize` body: token ids back to text."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: Name | None = None
    tokens: Annotated[list[TokenId], Field(max_length=MAX_DETOKENIZE)]


def _check_json(value: Any) -> None:
    """A JSON value with whole-Unicode strings (keys too), nested at most MAX_SCHEMA_DEPTH deep;
    walked without recursion, so no nesting can exhaust the stack."""
    todo = [(value, 1)]
    while todo:
        item, depth = todo.pop()
        if isinstance(item, str):
            _whole_unicode(item)
        elif isinstance(item, dict | list):
            if depth > MAX_SCHEMA_DEPTH:
                raise PydanticCustomError("depth", "nested more than {depth} levels deep",
                                          {"depth": MAX_SCHEMA_DEPTH})
            if isinstance(item, dict):
                todo += [(k, depth) for k in item]
            todo += [(v, depth + 1) for v in (item.values() if isinstance(item, dict) else item)]


def _field_names(models: tuple[type[BaseModel], ...]) -> frozenset[str]:
    names: set[str] = set()
    for model in models:
        for name, info in model.model_fields.items():
            names.add(info.alias or name)
    return frozenset(names)


_FIELDS = _field_names((ChatCompletionRequest, CompletionRequest, ChatMessage, TextPart,
                        ToolCall, ToolCallFunction, FunctionTool, FunctionDefinition,
                        NamedToolChoice, NamedFunction,
                        StreamOptions, JsonSchemaSpec, ResponseFormat, TokenizeCompletionRequest,
                        TokenizeChatRequest, DetokenizeRequest))


def error_param(loc: tuple[int | str, ...]) -> str:
    """A validation error's location as the field a client wrote: `messages.0.content`, without
    the body prefix and the union members pydantic names on the way (`str`, `constrained-str`)."""
    parts = [str(p) for p in loc if isinstance(p, int) or p in _FIELDS]
    return ".".join(parts) or "body"
