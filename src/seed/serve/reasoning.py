"""A thinking model's reasoning, kept out of its answer, as `seed serve` streams it.

`ReasoningStream` follows one choice's text and hands out `Piece`s: it is `seed.thinking`'s
`ThoughtStream` (the one splitter of `<think>...</think>`, shared with the endpoints and training)
in the serving pieces' shape. `ReplySplitter` puts the two splits of a reply in order: reasoning
first, then the content's tool calls (`tools.py`). This module knows nothing of HTTP, the engine or
templates beyond the markers.
"""

from __future__ import annotations

from seed.serve.tools import Piece, ToolCallStream, ToolFormat
from seed.thinking import CLOSE, OPEN, ThoughtStream, opens_thinking, template_thinks

__all__ = ["CLOSE", "OPEN", "ReasoningStream", "ReplySplitter", "opens_thinking",
           "template_thinks"]


class ReasoningStream:
    """One choice's text in, reasoning and content pieces out."""

    def __init__(self, inside: bool):
        self.thought = ThoughtStream(inside)

    @property
    def thinking(self) -> bool:
        """The reply is (or may still be) inside its reasoning."""
        return self.thought.thinking

    @property
    def opened(self) -> bool:
        """The reply has reasoning (it may be empty)."""
        return self.thought.opened

    @property
    def state(self) -> str:
        """start, inside (the reasoning), after (`</think>`) or content."""
        return self.thought.state

    def feed(self, text: str) -> list[Piece]:
        return [Piece(kind, t) for kind, t in self.thought.feed(text)]

    def finish(self) -> list[Piece]:
        return [Piece(kind, t) for kind, t in self.thought.finish()]


class ReplySplitter:
    """One choice's text split into reasoning, content and tool calls, in that order; either
    split may be off (None)."""

    def __init__(self, thinking: bool | None, tools: ToolFormat | None):
        self.reasoning = None if thinking is None else ReasoningStream(thinking)
        self.tools = None if tools is None else ToolCallStream(tools)

    @property
    def thinking(self) -> bool:
        return self.reasoning is not None and self.reasoning.thinking

    def feed(self, text: str) -> list[Piece]:
        pieces = self.reasoning.feed(text) if self.reasoning else [Piece("content", text)]
        return self._calls(pieces, final=False)

    def finish(self) -> list[Piece]:
        pieces = self.reasoning.finish() if self.reasoning else []
        return self._calls(pieces, final=True)

    def _calls(self, pieces: list[Piece], final: bool) -> list[Piece]:
        if self.tools is None:
            return [p for p in pieces if p.text]
        out: list[Piece] = []
        for p in pieces:
            out += self.tools.feed(p.text) if p.kind == "content" else [p]
        if final:
            out += self.tools.finish()
        return out
