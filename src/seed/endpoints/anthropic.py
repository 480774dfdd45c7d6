"""The `anthropic` endpoint: Claude through Anthropic's native Messages API (`POST /v1/messages`).

Anthropic's OpenAI-compatible layer drops prompt caching and thinking blocks, so Claude gets its own
kind, over plain `httpx` like the `openai` one (the official SDK would add a dependency and its own
retries, which the engine already does). One `complete()` turns Seed's OpenAI-shaped chat into one
Messages request per sample and the replies into the same `Completion`s the `openai` kind returns:

- system turns become the `system` parameter, one text block each, the last marked
  `cache_control: {type: ephemeral}` when `cache_system` is on, so a system prompt shared by a whole
  run is written to Anthropic's prompt cache once and read from it afterwards;
- text blocks are the answer; thinking blocks (asked for with `thinking_budget` or
  `adaptive_thinking`) are joined into `Completion.reasoning`; redacted thinking is encrypted, so it
  is counted (`redacted_thinking`) and warned about once, never put into a record;
- `usage` is mapped so the budget bills it right: `prompt_tokens` = input + cache reads + cache
  writes, `cached_tokens` = cache reads, `cache_write_tokens` = cache writes, `completion_tokens` =
  output (thinking included: Anthropic bills it as output);
- `stop_reason` becomes `finish_reason` (max_tokens -> length); a `refusal` stop is a
  `PromptRefused` (that prompt fails, the run goes on);
- `n` samples are `n` concurrent requests (the API has no `n`), their usage summed;
- Anthropic's rate-limit headers are translated into the `x-ratelimit-*` names the engine's limiter
  reads (reset times as seconds from now) before `on_headers` sees them;
- 429, 529 (overloaded) and other 5xx are a `TransientError` with the server's `retry-after`;
  400, 401, 403, 404 and 413 a `UserError` with the server's message; a parameter Seed cannot map
  (logprobs, a response schema, ...) is a `UserError` that names it, never silently dropped.

`body()` and `parse()` are public so the Message Batches provider (`seed.endpoints.anthropic_batch`)
builds and reads its items exactly as online requests are. The API key is read when the endpoint is
built, kept only in the client's `x-api-key` header, and never logged, cached or written. This
module does not retry, pace or cache (`seed.generate.engine` does).
"""

from __future__ import annotations

import asyncio
import logging
import re
import ssl
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlparse

import certifi
import httpx

from seed.endpoints.base import (
    Completion,
    EndpointDefaults,
    HeaderListener,
    PromptRefused,
    TransientError,
)
from seed.endpoints.http import (
    check_base_url,
    check_reachable,
    retry_after,
    server_message,
    transport_errors,
)
from seed.endpoints.openai import SHARD, infer_route, read_api_key
from seed.errors import UserError
from seed.records import Teacher

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.anthropic.com"
API_VERSION = "2023-06-01"
# The Messages API requires max_tokens; Seed sends this when generate.params sets neither
# max_tokens nor max_completion_tokens (plus the thinking budget, which counts inside max_tokens).
DEFAULT_MAX_TOKENS = 4096
MIN_THINKING_BUDGET = 1024  # Anthropic's least budget_tokens
FATAL_STATUS = {400, 401, 403, 404, 413, 422}
FINISH = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length",
          "model_context_window_exceeded": "length", "tool_use": "tool_calls",
          # a server tool paused a long turn: the answer so far is incomplete
          "pause_turn": "length"}
# generate.params (and the judge's) Seed maps onto the Messages API; anything else is refused.
PASSED = ("temperature", "top_p", "top_k")
UNMAPPED_HINT = {
    "response_format": "set eval.judge.json_schema = false (the judge's reply is read from its "
                       "text)",
    "response_schema": "drop generate.response_schema, or check answers with [generate.verify] "
                       "kind = \"json_schema\"",
    "logprobs": "Anthropic sends no logprobs; drop it (token-level distillation needs an openai "
                "teacher)",
    "top_logprobs": "Anthropic sends no logprobs; drop it",
}
_SURROGATE = re.compile("[\ud800-\udfff]")


def _clean(text: str) -> str:
    """`text` with each lone half of a surrogate pair as U+FFFD (no UTF-8 file can hold one)."""
    return _SURROGATE.sub("\ufffd", text)


def rate_limit_headers(headers: Mapping[str, str], now: datetime | None = None) -> dict[str, str]:
    """`headers` (lower-cased) plus Anthropic's `anthropic-ratelimit-*` under the engine's
    `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` names, resets (RFC 3339 times) as
    seconds from `now`. The tokens limit is Anthropic's combined `tokens-*` one (the most
    restrictive in effect), else its input-tokens one."""
    out = {k.lower(): v for k, v in headers.items()}
    now = now or datetime.now(UTC)
    for kind, sources in (("requests", ("requests",)),
                          ("tokens", ("tokens", "input-tokens"))):
        source = next((s for s in sources if f"anthropic-ratelimit-{s}-limit" in out
                       or f"anthropic-ratelimit-{s}-remaining" in out), None)
        if source is None:
            continue
        for part in ("limit", "remaining"):
            if (value := out.get(f"anthropic-ratelimit-{source}-{part}")) is not None:
                out.setdefault(f"x-ratelimit-{part}-{kind}", value)
        if (reset := out.get(f"anthropic-ratelimit-{source}-reset")) is not None:
            try:
                at = datetime.fromisoformat(reset)
                at = at if at.tzinfo else at.replace(tzinfo=UTC)
            except ValueError:
                continue
            seconds = max(0.0, (at - now).total_seconds())
            out.setdefault(f"x-ratelimit-reset-{kind}", f"{seconds:.3f}")
    return out


def usage_of(raw: Any) -> dict[str, int]:
    """Anthropic's `usage` in the budget's keys (see the module docstring); counts that are not
    whole numbers are left out, so the budget counts them itself."""
    raw = raw if isinstance(raw, dict) else {}

    def count(key: str) -> int | None:
        v = raw.get(key)
        return v if isinstance(v, int) and not isinstance(v, bool) and v >= 0 else None

    fresh, out = count("input_tokens"), count("output_tokens")
    read, write = count("cache_read_input_tokens") or 0, count("cache_creation_input_tokens") or 0
    usage: dict[str, int] = {}
    if fresh is not None:
        usage["prompt_tokens"] = fresh + read + write
        usage["cached_tokens"] = read
        usage["cache_write_tokens"] = write
    if out is not None:
        usage["completion_tokens"] = out
    if fresh is not None and out is not None:
        usage["total_tokens"] = usage["prompt_tokens"] + out
    return usage


def sum_usage(usages: list[dict[str, int]]) -> dict[str, int]:
    """Usage dicts added key by key (the samples of one prompt, billed together)."""
    total: dict[str, int] = {}
    for u in usages:
        for k, v in u.items():
            total[k] = total.get(k, 0) + v
    return total


def parse(data: Any) -> tuple[Completion, int]:
    """One Messages API response as a `Completion`, and how many redacted thinking blocks it held.

    `PromptRefused` on a `refusal` stop; TypeError, KeyError or AttributeError when the body is
    not a message."""
    if not isinstance(data, dict) or data.get("type", "message") != "message":
        raise TypeError("not a message")
    blocks = data["content"]
    if not isinstance(blocks, list) or not all(isinstance(b, dict) for b in blocks):
        raise TypeError("content is not a list of blocks")
    stop = data.get("stop_reason")
    if stop == "refusal":
        raise PromptRefused("the model declined to answer (stop_reason refusal)")
    text = "".join(b["text"] for b in blocks if b.get("type") == "text")
    thoughts = [b["thinking"] for b in blocks if b.get("type") == "thinking"]
    if not isinstance(text, str) or not all(isinstance(t, str) for t in thoughts):
        raise TypeError("a block's text is not text")
    redacted = sum(b.get("type") == "redacted_thinking" for b in blocks)
    reasoning = _clean("\n\n".join(thoughts)).strip("\n") or None
    model = data.get("model")
    return Completion(
        text=_clean(text), finish_reason=FINISH.get(str(stop), "stop"),
        model=_clean(model) if isinstance(model, str) else None,
        usage=usage_of(data.get("usage")), reasoning=reasoning), redacted


class AnthropicEndpoint(EndpointDefaults):
    """One Claude model behind the Messages API; `complete()` sends one request per sample."""

    def __init__(
        self,
        model: str,
        *,
        base_url: str = DEFAULT_BASE_URL,
        api_key_env: str | None = "ANTHROPIC_API_KEY",
        api_key_file: str | None = None,
        anthropic_version: str = API_VERSION,
        headers: dict[str, str] | None = None,
        route: str | None = None,
        thinking_budget: int | None = None,
        adaptive_thinking: bool = False,
        cache_system: bool = True,
        timeout: float = 120.0,
        max_connections: int = 256,
        what: str = "generate.teacher",
    ) -> None:
        check_base_url(base_url, what, DEFAULT_BASE_URL)
        if thinking_budget is not None and adaptive_thinking:
            raise UserError(f"{what}: set thinking_budget or adaptive_thinking, not both")
        if thinking_budget is not None and thinking_budget < MIN_THINKING_BUDGET:
            raise UserError(f"{what}.thinking_budget = {thinking_budget}: Anthropic's least "
                            f"thinking budget is {MIN_THINKING_BUDGET} tokens")
        root = base_url.rstrip("/")
        self.base_url = root.removesuffix("/v1")
        self.model = model
        self.route = route or infer_route(base_url)
        self.anthropic_version = anthropic_version
        self.thinking_budget = thinking_budget
        self.adaptive_thinking = adaptive_thinking
        self.cache_system = cache_system
        self.what = what
        self.role = what.removesuffix(".endpoint").rsplit(".", 1)[-1]
        self.redacted = 0  # redacted thinking blocks seen (encrypted: never in a record)
        key = read_api_key(api_key_env, api_key_file, what)
        for name, value in (headers or {}).items():
            line = name + value
            if not name.strip() or not line.isascii() or not line.isprintable():
                raise UserError(f"{what}.headers: {name!r}: an HTTP header is one line of ASCII; "
                                "fix its name or value")
        sent = {"content-type": "application/json", "anthropic-version": anthropic_version,
                **(headers or {})}
        if key is not None:
            sent["x-api-key"] = key
        self.on_headers: HeaderListener | None = None
        # Small pools, least busy first, as the openai kind does (docs/LOG.md: httpx scans every
        # connection of a pool per request).
        shards = max(1, -(-max_connections // SHARD))
        tls = ssl.create_default_context(cafile=certifi.where())
        self._clients = [httpx.AsyncClient(
            headers=sent, verify=tls, base_url=self.base_url,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0)),
            limits=httpx.Limits(max_connections=4 * SHARD, max_keepalive_connections=4 * SHARD),
        ) for _ in range(shards)]
        self._busy = [0] * shards

    def teacher(self) -> Teacher:
        """Who answers; the thinking asked for travels with it (it shapes every answer, and
        `generate.params` does not hold it)."""
        thinking = self.thinking()
        return Teacher(route=self.route, host=urlparse(self.base_url).hostname,
                       model_requested=self.model, **({"thinking": thinking} if thinking else {}))

    def thinking(self) -> dict[str, Any] | None:
        """The request's `thinking` parameter, or None when thinking is off."""
        if self.thinking_budget is not None:
            return {"type": "enabled", "budget_tokens": self.thinking_budget}
        return {"type": "adaptive"} if self.adaptive_thinking else None

    def identity(self) -> dict[str, Any]:
        """What, besides the request, decides the answer: part of every cache key. No key.
        (`cache_system` is left out: a cached prefix gives the same answer, cheaper.)"""
        return {"kind": "anthropic", "base_url": self.base_url, "model": self.model,
                "route": self.route, "anthropic_version": self.anthropic_version,
                "thinking_budget": self.thinking_budget,
                "adaptive_thinking": self.adaptive_thinking}

    def body(self, messages: list[dict[str, Any]], params: dict[str, Any]) -> dict[str, Any]:
        """The JSON body of one Messages request (one sample: `n` is the caller's business)."""
        params = {k: v for k, v in params.items() if k != "n"}
        system: list[dict[str, Any]] = []
        turns: list[dict[str, Any]] = []
        for m in messages:
            role, content = m.get("role"), m.get("content")
            if m.get("tool_calls") or role not in ("system", "developer", "user", "assistant"):
                raise UserError(f"{self.what}: a {role!r} turn (tools) has no mapping to "
                                "Anthropic's Messages API in Seed; give prompts of system, user "
                                "and assistant turns")
            if not isinstance(content, str):
                raise UserError(f"{self.what}: a {role} turn whose content is not text has no "
                                "mapping to Anthropic's Messages API in Seed; give text turns")
            if role in ("system", "developer"):
                system.append({"type": "text", "text": content})
            else:  # a thinking trace (reasoning_content) is never sent back
                turns.append({"role": role, "content": content})
        if system and self.cache_system:
            system[-1]["cache_control"] = {"type": "ephemeral"}
        asked = params.pop("max_tokens", None) or params.pop("max_completion_tokens", None)
        params.pop("max_completion_tokens", None)
        budget = self.thinking_budget
        max_tokens = asked or DEFAULT_MAX_TOKENS + (budget or 0)
        if budget is not None and max_tokens <= budget:
            raise UserError(f"{self.what}.thinking_budget = {budget} must be below max_tokens "
                            f"({max_tokens}); raise generate.params.max_tokens or lower it")
        body: dict[str, Any] = {"model": self.model, "max_tokens": max_tokens, "messages": turns}
        if system:
            body["system"] = system
        if (thinking := self.thinking()) is not None:
            body["thinking"] = thinking
        stop = params.pop("stop", None)
        if stop is not None:
            body["stop_sequences"] = [stop] if isinstance(stop, str) else list(stop)
        for key in PASSED:
            if key in params:
                body[key] = params.pop(key)
        if params:
            key = sorted(params)[0]
            hint = UNMAPPED_HINT.get(key, "drop it from generate.params")
            raise UserError(f"{self.what}: the parameter {key!r} has no mapping to Anthropic's "
                            f"Messages API in Seed; {hint}")
        return body

    def parse(self, data: Any) -> Completion:
        """`parse` for this endpoint: redacted thinking counted and warned about once."""
        completion, redacted = parse(data)
        if redacted:
            if not self.redacted:
                log.warning("the %s (model %r) sent redacted (encrypted) thinking; it is not "
                            "kept as reasoning, only counted", self.role, self.model)
            self.redacted += redacted
        return completion

    async def _post(self, body: dict[str, Any]) -> httpx.Response:
        i = min(range(len(self._busy)), key=self._busy.__getitem__)
        self._busy[i] += 1
        try:
            return await self._clients[i].post("/v1/messages", json=body)
        finally:
            self._busy[i] -= 1

    async def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One API request (the batch provider's), with this endpoint's headers and key;
        connection failures are a `TransientError`."""
        with transport_errors(self.base_url):
            return await self._clients[0].request(method, path, **kwargs)

    def check(self, resp: httpx.Response) -> None:
        """Raise for a response that is not a success: `UserError` for what retrying cannot fix,
        `TransientError` (with `retry-after`) for the rest."""
        if resp.status_code in FATAL_STATUS:
            raise UserError(f"the {self.role} at {self.base_url} refused the request (HTTP "
                            f"{resp.status_code}: {server_message(resp)}); fix the model name, "
                            "key or parameters")
        if resp.status_code != 200:
            raise TransientError(f"HTTP {resp.status_code}: {server_message(resp)}",
                                 retry_after(resp.headers))

    async def _one(self, body: dict[str, Any]) -> Completion:
        with transport_errors(self.base_url):
            resp = await self._post(body)
        if self.on_headers is not None:
            self.on_headers(rate_limit_headers(resp.headers))
        self.check(resp)
        try:
            return self.parse(resp.json())
        except (ValueError, KeyError, TypeError, AttributeError):
            raise TransientError("the response body is not a message (truncated JSON?)") from None

    async def complete(self, messages: list[dict[str, Any]], **params: Any) -> list[Completion]:
        body = self.body(messages, params)
        n = int(params.get("n", 1))
        got = await asyncio.gather(*(self._one(body) for _ in range(n)), return_exceptions=True)
        answers = [c for c in got if isinstance(c, Completion)]
        for failure in (UserError, PromptRefused, BaseException):
            # the worst failure wins; answers that did come are returned (the engine asks again
            # for the rest), and a refusal or a user error fails the prompt or the run
            first = next((e for e in got if isinstance(e, failure)), None)
            if first is not None and (failure is not BaseException or not answers):
                raise first
        usage = sum_usage([c.usage for c in answers])
        for c in answers:
            c.usage = usage
        return answers

    async def check_reachable(self) -> None:
        """One cheap request (`GET /v1/models`) to fail fast on a base URL nothing answers."""
        await check_reachable(self._clients[0], "/v1/models", self.role, self.base_url, self.what)

    async def aclose(self) -> None:
        for client in self._clients:
            await client.aclose()
