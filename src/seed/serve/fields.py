"""What the local backend does with every field of OpenAI's request bodies it does not declare.

The request models in `schemas.py` keep the fields they do not declare (`model_extra`), so an
upstream gets every field as sent. The local backend asks `unsupported` first and refuses, by
name, any field it would otherwise drop: every field of OpenAI's chat-completions and completions
requests is declared there (and honoured) or named in one of the tables here, as a no-op with the
reason nothing is lost, as fine at the value Seed behaves as anyway, or as refused with what to do
instead. This module validates nothing else.
"""

from __future__ import annotations

import json
from typing import Any

from seed.serve.schemas import ChatCompletionRequest, CompletionRequest

# The request models keep what they do not declare (`model_extra`), so an upstream gets every field
# as sent; the local backend asks `unsupported` first and refuses, by name, any field it would
# otherwise drop. Every field of OpenAI's chat-completions and completions requests is declared
# (and honoured), or named in one of these tables. A null for a field named here is always fine:
# it asks for nothing (an unknown field is refused whatever its value).

# Accepted at any value, and why nothing is lost.
_NO_OPS = {
    "metadata": "tags for completions a provider stores; Seed stores none",
    "safety_identifier": "an end user's id for a provider's abuse monitoring; Seed has none",
    "prompt_cache_key": "a routing hint for a provider's prompt cache; Seed has one engine",
    "prompt_cache_retention": "how long a provider keeps a prompt cache; Seed keeps none",
    "prompt_cache_options": "how a provider caches prompts; Seed keeps no prompt cache",
}
# Accepted at these values only: what Seed does anyway.
_FINE_AT: dict[str, tuple[Any, ...]] = {
    "store": (False,), "service_tier": ("auto", "default"), "modalities": (["text"],),
    "suffix": ("",),
}
_REFUSED = {
    "store": "Seed stores no completions; send `store: false` or omit it",
    "service_tier": "Seed has one tier; send `auto`, `default` or omit it",
    "modalities": "Seed's models answer in text; send `[\"text\"]` or omit it",
    "audio": "Seed's models answer in text only; omit `audio`",
    "prediction": "Seed does not use predicted outputs; omit `prediction`",
    "web_search_options": "Seed has no web search; omit `web_search_options`",
    "functions": "it is OpenAI's deprecated form of `tools`; send `tools` instead",
    "function_call": "it is OpenAI's deprecated form of `tool_choice`; send `tool_choice` "
                     "(with `tools`) instead",
    "reasoning_effort": "a served model thinks as its chat template says; Seed cannot set a "
                        "reasoning effort (a template's own switch, such as `enable_thinking`, "
                        "goes in `chat_template_kwargs`); omit it",
    "verbosity": "Seed cannot change how much a model says; omit `verbosity`",
    "moderation": "Seed runs no moderation model; omit `moderation`",
    "suffix": "Seed does not insert text between a prompt and a suffix; omit `suffix`",
    "best_of": "Seed returns every completion it generates; omit `best_of` or set it to `n`",
}
# The fields each route refuses or takes as a no-op (any other undeclared field is unknown).
_CHAT_EXTRAS = frozenset(_NO_OPS) | {"store", "service_tier", "modalities", "audio", "prediction",
                                     "web_search_options", "functions", "function_call",
                                     "reasoning_effort", "verbosity", "moderation"}
_COMPLETION_EXTRAS = frozenset({"suffix", "best_of"})
# Fields of stream_options Seed takes at these values only.
_STREAM_OPTIONS_FINE_AT: dict[str, tuple[Any, ...]] = {"include_obfuscation": (False,)}


def unsupported(req: ChatCompletionRequest | CompletionRequest) -> tuple[str, str] | None:
    """The first field of `req` the local backend does not honour, as (param, one sentence that
    names it and says what to do), or None when it honours every field sent."""
    chat = isinstance(req, ChatCompletionRequest)
    route = "/v1/chat/completions" if chat else "/v1/completions"
    known = _CHAT_EXTRAS if chat else _COMPLETION_EXTRAS
    for name, value in (req.model_extra or {}).items():
        refused = _refused(name, value, known, route)
        if name == "best_of" and _one_of(value, (req.n,)):
            refused = None  # n completions generated and n returned: what Seed does anyway
        if refused:
            return _name(name), refused
    if req.stream_options is not None:
        for name, value in (req.stream_options.model_extra or {}).items():
            if value is not None and not _one_of(value, _STREAM_OPTIONS_FINE_AT.get(name, ())):
                param = f"stream_options.{_name(name)}"
                if name not in _STREAM_OPTIONS_FINE_AT:
                    return param, f"`{param}` is not a field Seed knows; remove it."
                return param, (f"`{param}: {_json(value)}` is not supported: Seed does not pad "
                               "streamed chunks; send `false` or omit it.")
    if isinstance(req, ChatCompletionRequest):
        for i, message in enumerate(req.messages):
            for name in message.model_extra or {}:
                param = f"messages.{i}.{_name(name)}"
                return param, f"`{param}` is not a field of a chat message Seed knows; remove it."
        if req.top_logprobs and not req.logprobs:
            return "top_logprobs", "`top_logprobs` needs `logprobs: true`; set it or omit both."
    return None


def _refused(name: str, value: Any, known: frozenset[str], route: str) -> str | None:
    if name not in known:
        return f"`{_name(name)}` is not a field Seed's {route} knows; remove it."
    if value is None or name in _NO_OPS or _one_of(value, _FINE_AT.get(name, ())):
        return None
    shown = f"`{name}: {_json(value)}`" if name in _FINE_AT or name == "best_of" else f"`{name}`"
    return f"{shown} is not supported: {_REFUSED[name]}."


def _one_of(value: Any, allowed: tuple[Any, ...]) -> bool:
    """`value` is one of `allowed`, type and all (JSON's 0 is not `false`)."""
    return any(type(value) is type(a) and value == a for a in allowed)


def _name(name: str) -> str:
    """A client's field name as an error may echo it: JSON-escaped (a lone surrogate cannot be
    written back as UTF-8) and cut to 64 characters."""
    text = json.dumps(name)[1:-1]
    return text if len(text) <= 64 else text[:61] + "..."


def _json(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."
