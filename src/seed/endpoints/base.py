"""The endpoint interface: messages in, completions out, plus who answered (for provenance).

Three kinds share it: `openai` (any OpenAI-compatible HTTP server), `local` (a model directory in
process) and `tasks` (reasoning-gym generators). Stages depend on this interface only and call every
part of it on any kind: `EndpointDefaults` gives the parts a kind has nothing to do for (no
connection to close, no headers to report) a default, so no caller asks which kind it holds.
`TransientError` is the one failure callers retry. This module builds no endpoint
(`seed.endpoints.factory` does) and does not retry or pace (`seed.generate.engine` does).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from seed.records import Teacher

HeaderListener = Callable[[Mapping[str, str]], None]


class TransientError(Exception):
    """A failure worth retrying; `retry_after` is the server's requested wait in seconds, if any.

    `paid` holds the texts of an answer that arrived but cannot be used (it fails its schema, it
    has no choices) with the usage it came with: the teacher bills it all the same.
    """

    def __init__(self, reason: str, retry_after: float | None = None,
                 paid: tuple[list[str], dict[str, Any]] | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.paid = paid


class PromptRefused(Exception):
    """The teacher refuses this one prompt (a moderation block): the prompt fails, the run goes
    on, and retrying the same prompt would be refused again."""


@dataclass
class Completion:
    """One answer to a chat request."""

    text: str
    finish_reason: str = "stop"
    model: str | None = None
    system_fingerprint: str | None = None
    # The token counts as the server sent them (any JSON); the engine replaces them with what it
    # charged (`seed.generate.budget.billed_usage`), and says whether it counted them itself.
    usage: dict[str, Any] = field(default_factory=dict)
    logprobs: list[dict[str, Any]] | None = None
    usage_estimated: bool = False
    # The thinking trace, apart from `text` however the teacher sent it (a `reasoning_content` or
    # `reasoning` field, or `<think>...</think>` inline); None when the answer has none.
    reasoning: str | None = None


class Endpoint(Protocol):
    """Answers chat messages; `teacher()` says who it is, never with a secret."""

    on_headers: HeaderListener | None
    """Called with each HTTP response's headers (rate-limit hints); never by a kind without any."""

    def teacher(self) -> Teacher:
        """Who answers, for provenance and the terms gate."""
        ...

    def identity(self) -> dict[str, Any]:
        """What, besides the request, decides the answer: part of every cache key. No secret."""
        ...

    async def complete(self, messages: list[dict[str, str]], **params: Any) -> list[Completion]:
        """Answers to one conversation (`n` of them when `params` asks); `TransientError` on a
        failure worth retrying, `seed.errors.UserError` on one retrying cannot fix."""
        ...

    def answer_batch(self, conversations: list[list[dict[str, str]]],
                     max_tokens: int) -> list[str] | None:
        """Greedy answers to many conversations at once where the kind batches them in process
        (a local model); None where each request goes through the engine on its own."""
        ...

    async def check_reachable(self) -> None:
        """Fail fast, with a one-line error, when nothing answers at the configured address."""
        ...

    async def aclose(self) -> None:
        """Release connections; the endpoint is not used afterwards."""
        ...


class EndpointDefaults(ABC):
    """`Endpoint` with defaults for the parts a kind may have nothing to do for: no HTTP headers,
    no connection to check or close, one request at a time, an identity that is the teacher.
    A kind writes `teacher` and `complete` and overrides what it does differently."""

    on_headers: HeaderListener | None = None

    @abstractmethod
    def teacher(self) -> Teacher: ...

    @abstractmethod
    async def complete(self, messages: list[dict[str, str]], **params: Any) -> list[Completion]:
        ...

    def identity(self) -> dict[str, Any]:
        return self.teacher().model_dump(mode="json")

    def answer_batch(self, conversations: list[list[dict[str, str]]],
                     max_tokens: int) -> list[str] | None:
        return None

    async def check_reachable(self) -> None:
        return None

    async def aclose(self) -> None:
        return None
