"""The `openai` endpoint: any OpenAI-compatible chat-completions server over HTTP (`httpx`).

OpenAI, Azure OpenAI (deployments and `api-version`), OpenRouter, vLLM, SGLang, llama.cpp, Ollama,
`transformers serve` and `seed serve` all speak this protocol. One call sends one request and turns
the answer into `Completion`s, or raises:

- `TransientError` for what is worth retrying (429, 5xx, timeouts, dropped connections, a body
  that is not valid JSON, an answer that fails its JSON schema), with the server's `Retry-After`;
- `seed.errors.UserError` for what retrying cannot fix (400, 401, 403, 404), with the server's
  message.

A body is read defensively: choices that are not objects, content that is not text, fields of the
wrong type are a `TransientError`, never a crash. `usage` is passed on as the server sent it; what
it is worth is the budget's call (`seed.generate.budget.billed_usage`). A reasoning teacher's
thinking trace is kept apart from the answer (`Completion.reasoning`) however it comes
(`answer_and_reasoning`), and is never sent back in a request.

The API key is read from an environment variable or a file when the endpoint is built, kept only in
the client's headers, and never logged, cached or written: `teacher()` and `identity()` omit it.
This module does not retry, pace or cache; that is the engine's job (`seed.generate.engine`).
"""

from __future__ import annotations

import json
import os
import re
import ssl
from ipaddress import ip_address
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import certifi
import httpx
from pydantic import BaseModel, PydanticUserError, ValidationError, create_model

from seed.endpoints.base import Completion, EndpointDefaults, HeaderListener, TransientError
from seed.endpoints.http import (
    check_base_url,
    check_reachable,
    retry_after,
    server_message,
    transport_errors,
)
from seed.errors import UserError, first_line
from seed.records import Teacher
from seed.thinking import CLOSE, OPEN, split_thought

FATAL_STATUS = {400, 401, 403, 404, 422}
_SURROGATE = re.compile("[\ud800-\udfff]")
SHARD = 8  # connections per httpx client


def infer_route(base_url: str) -> str:
    """direct, azure, openrouter, bedrock or local, from the host of the base URL."""
    host = (urlparse(base_url).hostname or "").lower()
    if host.endswith(".openai.azure.com") or host.endswith(".azure.com"):
        return "azure"
    if host.endswith("openrouter.ai"):
        return "openrouter"
    if "bedrock" in host:
        return "bedrock"
    if host in ("localhost", "") or host.endswith(".local"):
        return "local"
    try:
        addr = ip_address(host)
    except ValueError:
        return "direct"
    return "local" if addr.is_private or addr.is_loopback else "direct"


def read_api_key(env: str | None, file: str | None, what: str) -> str | None:
    """The key from the named environment variable or file; None when neither is configured.

    `what` names the recipe section in errors.
    """
    if env:
        key = os.environ.get(env, "").strip()
        if not key:
            raise UserError(f"the API key variable {env} is not set; export it or set "
                            f"{what}.api_key_file")
    elif file:
        path = Path(file).expanduser()
        if not path.is_file():
            raise UserError(f"{file}: API key file not found; check {what}.api_key_file")
        try:
            key = path.read_text(encoding="utf-8").strip()
        except UnicodeDecodeError:
            raise UserError(f"{file}: the API key file is not UTF-8 text; write the key alone "
                            "on one line") from None
        if not key:
            raise UserError(f"{file}: the API key file is empty")
    else:
        return None
    if not key.isascii() or any(c.isspace() for c in key):
        where = env or file
        raise UserError(f"{where}: the API key holds spaces or non-ASCII characters, which no "
                        "HTTP header can carry; give the key alone, as the provider issued it")
    return key


def _clean(text: str) -> str:
    """`text` with each lone half of a surrogate pair as U+FFFD.

    JSON can escape half of a pair alone (`"\\ud800"`), which no UTF-8 file can hold and no
    reader of records would accept: a paid answer is kept, and can be written, without it.
    """
    return _SURROGATE.sub("\ufffd", text)


def _logprobs(choice: dict[str, Any]) -> list[dict[str, Any]] | None:
    content = (choice.get("logprobs") or {}).get("content")
    if content is None:
        return None
    return [
        {"token": _clean(t["token"]), "logprob": float(t["logprob"]),
         "top_logprobs": [{"token": _clean(a["token"]), "logprob": float(a["logprob"])}
                          for a in t.get("top_logprobs") or []]}
        for t in content
    ]


def _text(message: Any) -> str:
    """A choice's message content: a string, null (nothing said), or a list of text parts."""
    content = message.get("content") if isinstance(message, dict) else None
    if content is None:
        return ""
    if isinstance(content, list) and all(isinstance(p, dict) for p in content):
        content = "".join(p["text"] for p in content if isinstance(p.get("text"), str))
    if not isinstance(content, str):
        raise TypeError("message.content is not text")
    return _clean(content)


def _optional_str(value: Any) -> str | None:
    return _clean(value) if isinstance(value, str) else None


def answer_and_reasoning(message: Any) -> tuple[str, str | None]:
    """A choice's answer and thinking trace, whichever way the server sent the trace:
    `reasoning_content` (DeepSeek's API, `seed serve`), `reasoning` (vLLM, OpenRouter), or inline
    in the content as `<think>...</think>` (a server without a reasoning parser; a reply that only
    closes `</think>` began inside it, its template having opened `<think>` in the prompt)."""
    text = _text(message)
    fields = message if isinstance(message, dict) else {}
    for key in ("reasoning_content", "reasoning"):
        if isinstance(fields.get(key), str):
            return text, _clean(fields[key]).strip("\n") or None
    inside = CLOSE in text and OPEN not in text.split(CLOSE, 1)[0]
    reasoning, content = split_thought(text, inside)
    return (text, None) if reasoning is None else (content, reasoning)


USAGE_KEYS = ("prompt_tokens", "completion_tokens", "total_tokens", "completion_tokens_details",
              "prompt_tokens_details", "cached_tokens")  # cache reads: seed.generate.budget


def parse_choices(data: Any) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """A chat completion body's choices (in index order) and its usage as sent (only the counts'
    keys, and `completion_tokens_details`, which holds `reasoning_tokens`; what they hold is the
    budget's to judge). TypeError, KeyError or AttributeError when the body is not a chat
    completion."""
    choices = data["choices"]
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise TypeError("choices is not a list of objects")
    usage = data.get("usage")
    usage = {k: usage[k] for k in USAGE_KEYS if k in usage} if isinstance(usage, dict) else {}
    index = [c.get("index", 0) if isinstance(c.get("index", 0), int) else 0 for c in choices]
    return [c for _, c in sorted(zip(index, choices, strict=True), key=lambda p: p[0])], usage


_JSON_TYPES: dict[str, Any] = {"string": str, "integer": int, "number": float, "boolean": bool,
                               "array": list, "object": dict, "null": type(None)}


SCHEMA_HELP = ("generate.response_schema must be a JSON schema of type object with properties "
               "(each an object with a type)")


def _json_type(spec: dict[str, Any]) -> Any:
    typ = spec.get("type")
    return _JSON_TYPES.get(typ, Any) if isinstance(typ, str) else Any


def schema_model(schema: dict[str, Any], name: str = "Answer") -> type[BaseModel]:
    """A pydantic model checking an object JSON schema: its properties, their types, `required`."""
    props, required = schema.get("properties"), schema.get("required", [])
    if (schema.get("type") != "object" or not isinstance(props, dict)
            or not all(isinstance(k, str) and isinstance(v, dict) for k, v in props.items())
            or not isinstance(required, list)):
        raise UserError(SCHEMA_HELP)
    fields: dict[str, Any] = {}
    for key, spec in props.items():
        items = spec.get("items")
        if spec.get("type") == "object" and "properties" in spec:
            py: Any = schema_model(spec, name=f"{name}_{key}")
        elif spec.get("type") == "array" and isinstance(items, dict):
            inner = (schema_model(items, f"{name}_{key}") if items.get("type") == "object"
                     and "properties" in items else _json_type(items))
            py = list[inner]  # type: ignore[valid-type]  # a type built at run time
        else:
            py = _json_type(spec)
        fields[key] = (py, ...) if key in required else (py | None, None)
    try:
        return create_model(name, **fields)
    except (PydanticUserError, NameError, TypeError, ValueError) as e:  # `model_config`, ...
        raise UserError(f"generate.response_schema: {first_line(e)}; rename the property"
                        ) from None


class OpenAIEndpoint(EndpointDefaults):
    """One model behind an OpenAI-compatible base URL; `complete()` is one HTTP request."""

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str | None = None,
        api_key_file: str | None = None,
        headers: dict[str, str] | None = None,
        api_version: str | None = None,
        route: str | None = None,
        timeout: float = 120.0,
        max_connections: int = 256,
        what: str = "generate.teacher",
    ) -> None:
        check_base_url(base_url, what, "https://api.openai.com/v1")
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.route = route or infer_route(base_url)
        self.api_version = api_version
        self.what = what
        # Errors call it what the recipe does: the teacher, the judge (`eval.judge.endpoint`), ...
        self.role = what.removesuffix(".endpoint").rsplit(".", 1)[-1]
        if self.route == "azure" and not api_version:
            raise UserError(f"an Azure OpenAI endpoint needs {what}.api_version, "
                            "e.g. \"2024-10-21\"")
        key = read_api_key(api_key_env, api_key_file, what)
        for name, value in (headers or {}).items():
            line = name + value
            if not name.strip() or not line.isascii() or not line.isprintable():
                raise UserError(f"{what}.headers: {name!r}: an HTTP header is one line of ASCII; "
                                "fix its name or value")
        sent = {"Content-Type": "application/json", **(headers or {})}
        if key is not None:
            sent["api-key" if self.route == "azure" else "Authorization"] = (
                key if self.route == "azure" else f"Bearer {key}")
        self._validators: dict[str, type[BaseModel]] = {}
        self.on_headers: HeaderListener | None = None
        # httpx's connection pool scans all its connections on every request, which costs more
        # than the request itself past a few dozen connections; small pools, least busy first,
        # keep that cost flat (docs/LOG.md: 2.4x the requests/s at 64 in flight).
        shards = max(1, -(-max_connections // SHARD))
        tls = ssl.create_default_context(cafile=certifi.where())  # one, not one per client
        self._clients = [httpx.AsyncClient(
            headers=sent, verify=tls,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0)),
            limits=httpx.Limits(max_connections=4 * SHARD, max_keepalive_connections=4 * SHARD),
        ) for _ in range(shards)]
        self._busy = [0] * shards

    def teacher(self) -> Teacher:
        return Teacher(route=self.route, host=urlparse(self.base_url).hostname,
                       model_requested=self.model)

    def identity(self) -> dict[str, Any]:
        """What, besides the request, decides the answer: part of every cache key. No key."""
        return {"base_url": self.base_url, "model": self.model, "route": self.route,
                "api_version": self.api_version}

    def api_url(self, path: str) -> str:
        """The URL of one of the API's resources (`files`, `batches/ID`, ...): under `/openai/`
        with the `api-version` query on Azure, under the base URL elsewhere."""
        if self.route == "azure":
            return f"{self.base_url}/openai/{path}?api-version={self.api_version}"
        return f"{self.base_url}/{path}"

    def request_headers(self) -> dict[str, str]:
        """The headers every request carries, the API key's among them, but no Content-Type: for
        a client of the same API (the batch route's uploads). Never log or write them."""
        return {k: v for k, v in self._clients[0].headers.items() if k.lower() != "content-type"}

    def _url(self) -> str:
        if self.route == "azure":
            return (f"{self.base_url}/openai/deployments/{self.model}/chat/completions"
                    f"?api-version={self.api_version}")
        return f"{self.base_url}/chat/completions"

    def body(self, messages: list[dict[str, str]], params: dict[str, Any]) -> dict[str, Any]:
        """The JSON body of a request: model, messages, sampling parameters.

        `response_schema` (ours, not OpenAI's) becomes a strict `json_schema` response format.
        """
        params = dict(params)
        schema = params.pop("response_schema", None)
        # A trace is never sent back: DeepSeek's API refuses reasoning_content in its input.
        sent = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in messages]
        body: dict[str, Any] = {"messages": sent, **params}
        if self.route != "azure":
            body["model"] = self.model
        if schema is not None:
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "answer", "schema": schema, "strict": True}}
        return body

    def _validator(self, schema: dict[str, Any] | None) -> type[BaseModel] | None:
        if schema is None:
            return None
        blob = json.dumps(schema, sort_keys=True)
        if blob not in self._validators:
            self._validators[blob] = schema_model(schema)
        return self._validators[blob]

    async def _post(self, body: dict[str, Any]) -> httpx.Response:
        i = min(range(len(self._busy)), key=self._busy.__getitem__)
        self._busy[i] += 1
        try:
            return await self._clients[i].post(self._url(), json=body)
        finally:
            self._busy[i] -= 1

    async def complete(self, messages: list[dict[str, str]], **params: Any) -> list[Completion]:
        self._validator(params.get("response_schema"))  # a bad schema fails before it is sent
        with transport_errors(self.base_url):
            resp = await self._post(self.body(messages, params))
        if self.on_headers is not None:
            self.on_headers(resp.headers)
        if resp.status_code in FATAL_STATUS:
            raise UserError(f"the {self.role} at {self.base_url} refused the request (HTTP "
                            f"{resp.status_code}: {server_message(resp)}); fix the model name, "
                            "key or parameters")
        if resp.status_code == 429 or resp.status_code >= 500 or resp.status_code == 408:
            raise TransientError(f"HTTP {resp.status_code}: {server_message(resp)}",
                                 retry_after(resp.headers))
        if resp.status_code != 200:
            raise TransientError(f"HTTP {resp.status_code}: {server_message(resp)}")
        try:
            data = resp.json()
        except ValueError:  # a body that is not JSON, not UTF-8, or cut short
            raise TransientError("the response body is not a chat completion (truncated JSON?)")\
                from None
        return self.parse(data, params.get("response_schema"))

    def parse(self, data: Any, schema: dict[str, Any] | None = None) -> list[Completion]:
        """A chat-completion body (decoded JSON) as `Completion`s, each answer checked against
        `schema` (the request's `response_schema`) when given: the online reply and a batch
        job's answer (seed.endpoints.openai_batch) are read by this one function.
        `TransientError` when the body is not a chat completion, has no choices or an answer fails
        the schema (with what was billed, `paid`, where an answer arrived)."""
        validator = self._validator(schema)
        try:
            choices, usage = parse_choices(data)
            answers = [(answer_and_reasoning(c.get("message")), _logprobs(c)) for c in choices]
        except (ValueError, KeyError, TypeError, AttributeError):
            raise TransientError("the response body is not a chat completion (truncated JSON?)")\
                from None
        paid = ([text + (thought or "") for (text, thought), _ in answers], usage)
        out = []
        for choice, ((text, thought), logprobs) in zip(choices, answers, strict=True):
            if validator is not None:
                try:
                    validator.model_validate_json(text)
                except ValidationError as e:
                    raise TransientError(f"answer fails the response schema "
                                         f"({e.errors()[0]['msg']})", paid=paid) from None
            out.append(Completion(
                text=text, finish_reason=_optional_str(choice.get("finish_reason")) or "stop",
                model=_optional_str(data.get("model")),
                system_fingerprint=_optional_str(data.get("system_fingerprint")),
                usage=usage, logprobs=logprobs, reasoning=thought))
        if not out:
            raise TransientError("the response has no choices", paid=paid)
        return out

    async def check_reachable(self) -> None:
        """One cheap request to fail fast, with a clear message, on a base URL nothing answers."""
        await check_reachable(self._clients[0], f"{self.base_url}/models", self.role,
                              self.base_url, self.what)

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()
