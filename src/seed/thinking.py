"""A thinking model's reasoning marked in its text: the part inside `<think>...</think>`.

The one splitter of such text, used wherever a reply may carry its thought inline: `seed serve`
splits what its model writes (`seed.serve.reasoning` wraps `ThoughtStream` for streamed replies), an
`openai` teacher that sends `<think>` in its content and a `local` model are split with
`split_thought`, and training finds the thought's span in a rendered chat by the same markers.

A reply thinks from its first character when the prompt itself ends inside `<think>` (DeepSeek-R1's
template and thinking Qwen3 templates open it in the generation prompt), or when the reply opens
with `<think>`; a reply that opens with anything else is content throughout. The content starts
after the blank lines that follow `</think>`. Text that may be the start of a marker is held back,
so a streamed reply's pieces add up to the whole one. This module knows nothing of HTTP, models or
templates beyond the markers.
"""

from __future__ import annotations

from typing import Literal

OPEN, CLOSE = "<think>", "</think>"
WHITESPACE = " \t\r\n"
ThoughtKind = Literal["reasoning", "content"]


def template_thinks(template: str) -> bool:
    """The chat template writes `<think>` (the `auto` reasoning parser's test)."""
    return OPEN in template


def opens_thinking(prompt_end: str) -> bool:
    """The rendered prompt (its last characters will do) leaves the reply inside `<think>`."""
    return prompt_end.rstrip(WHITESPACE).endswith(OPEN)


def partial_suffix(text: str, marker: str) -> int:
    """The length of the longest end of `text` that is a start of `marker` (held back)."""
    for k in range(min(len(marker) - 1, len(text)), 0, -1):
        if text.endswith(marker[:k]):
            return k
    return 0


class ThoughtStream:
    """One reply's text in, `(kind, text)` pieces out: reasoning until `</think>`, then content."""

    def __init__(self, inside: bool):
        self.state = "inside" if inside else "start"  # start | inside | after | content
        self.opened = inside  # the reply has reasoning (it may be empty)
        self.buf = ""

    @property
    def thinking(self) -> bool:
        """The reply is (or may still be) inside its reasoning."""
        return self.state in ("start", "inside")

    def feed(self, text: str) -> list[tuple[ThoughtKind, str]]:
        self.buf += text
        out: list[tuple[ThoughtKind, str]] = []
        while self._step(out, final=False):
            pass
        return out

    def finish(self) -> list[tuple[ThoughtKind, str]]:
        out: list[tuple[ThoughtKind, str]] = []
        while self._step(out, final=True):
            pass
        if self.buf:
            out.append(("reasoning" if self.state == "inside" else "content", self.buf))
        self.buf = ""
        return out

    def _step(self, out: list[tuple[ThoughtKind, str]], final: bool) -> bool:
        if not self.buf:
            return False
        if self.state == "start":
            text = self.buf.lstrip(WHITESPACE)
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
                    out.append(("reasoning", self.buf[:at]))
                self.buf, self.state = self.buf[at + len(CLOSE):], "after"
                return True
            keep = 0 if final else partial_suffix(self.buf, CLOSE)
            if len(self.buf) > keep:
                out.append(("reasoning", self.buf[:len(self.buf) - keep]))
                self.buf = self.buf[len(self.buf) - keep:]
            return False
        if self.state == "after":  # the answer starts after the blank lines that follow `</think>`
            self.buf = self.buf.lstrip(WHITESPACE)
            if not self.buf:
                return False
            self.state = "content"
        out.append(("content", self.buf))
        self.buf = ""
        return False


def split_thought(text: str, inside: bool = False) -> tuple[str | None, str]:
    """A whole reply as (reasoning, content): reasoning None when the reply has none; the
    reasoning without the blank lines around it (as chat templates write them back)."""
    stream = ThoughtStream(inside)
    pieces = [*stream.feed(text), *stream.finish()]
    content = "".join(t for k, t in pieces if k == "content")
    if not stream.opened:
        return None, content
    return "".join(t for k, t in pieces if k == "reasoning").strip(WHITESPACE), content
