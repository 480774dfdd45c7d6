"""The endpoint interface: messages in, completions out, plus who answered (for provenance).

Three kinds share it: `openai` (any OpenAI-compatible HTTP server), `local` (a model directory in
process) and `tasks` (reasoning-gym generators). Stages depend on this interface only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from seed.records import Teacher


@dataclass
class Completion:
    """One answer to a chat request."""

    text: str
    finish_reason: str = "stop"
    model: str | None = None
    system_fingerprint: str | None = None
    usage: dict[str, int] = field(default_factory=dict)
    logprobs: list[dict[str, Any]] | None = None


class Endpoint(Protocol):
    """Answers chat messages; `teacher()` says who it is, never with a secret."""

    def teacher(self) -> Teacher: ...

    async def complete(self, messages: list[dict[str, str]], **params: Any) -> list[Completion]: ...
