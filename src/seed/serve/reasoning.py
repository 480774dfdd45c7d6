"""A thinking model's reasoning, kept out of its answer: the text inside `<think>...</think>`.

`ReasoningStream` follows one choice's text: reasoning until `</think>`, content after it. A reply
thinks from its first token when the prompt itself ends inside `<think>` (DeepSeek-R1's template
and thinking Qwen3 templates open it in the generation prompt), or when the reply opens with
`<think>`; a reply that opens with anything else is content throughout. Text that may be the
start of a marker is held back, so a streamed reply's pieces add up to the whole one.

`ReplySplitter` puts the two splits of a reply in order: reasoning first, then the content's tool
calls (`tools.py`). This module knows nothing of HTTP, the engine or templates beyond the markers.
"""

from __future__ import annotations

from seed.serve.tools import Piece, ToolCallStream, ToolFormat, drain, partial_suffix

OPEN, CLOSE = "<think>", "</think>"
_WS = " \t\r\n"


def template_thinks(template: str) -> bool:
    """The chat template writes `<think>` (the `auto` reasoning parser's test)."""
    return OPEN in template


def opens_thinking(prompt_end: str) -> bool:
    """The rendered prompt (its last characters will do) leaves the reply inside `<think>`."""
    return prompt_end.rstrip(_WS).endswith(OPEN)


class ReasoningStream:
    """One choice's text in, reasoning and content pieces out."""

    def __init__(self, inside: bool):
        self.state = "inside" if inside else "start"  # start | inside | after | content
        self.opened = inside  # the reply has reasoning (it may be empty)
        self.buf = ""

    @property
    def thinking(self) -> bool:
        """The reply is (or may still be) inside its reasoning."""
        return self.state in ("start", "inside")

    def feed(self, text: str) -> list[Piece]:
        self.buf += text
        return drain(self._step, final=False)

    def finish(self) -> list[Piece]:
        out = drain(self._step, final=True)
        if self.buf:
            out.append(Piece("reasoning" if self.state == "inside" else "content", self.buf))
        self.buf = ""
        return out

    def _step(self, out: list[Piece], final: bool) -> bool:
        if not self.buf:
            return False
        if self.state == "start":
            text = self.buf.lstrip(_WS)
            if text.startswith(OPEN):
                self.buf, self.state, self.opened = text[len(OPEN):], "inside", True
                return True
            if (text and not OPEN.startswith(text)) or final:
                self.state = "content"
                return True
            return False
        if self.state == "inside":
            at = self.buf.find(CLOSE)
            if at >= 0:
                if at:
                    out.append(Piece("reasoning", self.buf[:at]))
                self.buf, self.state = self.buf[at + len(CLOSE):], "after"
                return True
            keep = 0 if final else partial_suffix(self.buf, CLOSE)
            if len(self.buf) > keep:
                out.append(Piece("reasoning", self.buf[:len(self.buf) - keep]))
                self.buf = self.buf[len(self.buf) - keep:]
            return False
        if self.state == "after":  # the answer starts after the blank lines that follow `</think>`
            self.buf = self.buf.lstrip(_WS)
            if not self.buf:
                return False
            self.state = "content"
        out.append(Piece("content", self.buf))
        self.buf = ""
        return False


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
