"""Tool calls in a chat model's own words: found in its text as it streams, split from content.

Models write calls in the format their chat template teaches them; three families are known:

- `hermes` (Hermes, Qwen2.5, Qwen3): `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`
  (with newlines inside) after any text, one block per call;
- `llama3_json` (Llama 3.1 and later): the whole reply is `{"name": ..., "parameters": {...}}`
  (calls joined by `;`), optionally after `<|python_tag|>`;
- `mistral`: `[TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]` after any text.

`ToolCallStream` follows one choice's text and splits it into content and calls, holding back text
that may be the start of a call's marker (as stop strings are held back). A reply sent whole is
the same stream fed at once, so a streamed reply's pieces always add up to the whole one. A call's
arguments are passed on as the model wrote them, piece by piece, so the streamed pieces concatenate
to the whole reply's `arguments` string. The grammar that makes calls follow their functions'
schemas is in `tool_grammar.py`; this module knows nothing of HTTP, the engine or templates.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from seed.serve.openai_format import ToolCall
from seed.thinking import partial_suffix

PieceKind = Literal["content", "reasoning", "call", "arguments"]


@dataclass(frozen=True)
class ToolFormat:
    """How one family writes its calls: `start` opens them (`anywhere` in the reply, or only at
    its start), `prefix` follows it, calls are joined by `sep` (None: one call per `start`) and
    `end` closes them ("": the reply's end)."""

    name: str
    start: str
    prefix: str
    sep: str | None
    end: str
    anywhere: bool
    args_key: str  # what the template's instructions call the arguments


HERMES = ToolFormat("hermes", "<tool_call>", "", None, "</tool_call>", True, "arguments")
LLAMA3_JSON = ToolFormat("llama3_json", "<|python_tag|>", "", ";", "", False, "parameters")
MISTRAL = ToolFormat("mistral", "[TOOL_CALLS]", "[", ",", "]", True, "arguments")
FORMATS = {f.name: f for f in (HERMES, LLAMA3_JSON, MISTRAL)}


def detect_format(template: str) -> ToolFormat | None:
    """The family a chat template's source teaches, or None when it names none of their markers."""
    if "<tool_call>" in template:
        return HERMES
    if "[TOOL_CALLS]" in template:
        return MISTRAL
    if "<|python_tag|>" in template or '"parameters"' in template:
        return LLAMA3_JSON
    return None


@dataclass
class Piece:
    """A part of a reply: content or reasoning text, a call's head (index, id, name), or a piece
    of a call's arguments."""

    kind: PieceKind
    text: str = ""
    index: int = 0
    id: str = ""
    name: str = ""


def drain(step: Callable[[list[Piece], bool], bool], final: bool) -> list[Piece]:
    """The pieces a splitter's `step` hands out, run until it can do no more (`final`: the
    reply has ended, so nothing is held back for text still to come)."""
    out: list[Piece] = []
    while step(out, final):
        pass
    return out


def call_id() -> str:
    """A tool call's id: `call_` and 24 random characters, like OpenAI's."""
    return "call_" + secrets.token_hex(12)


_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"')
_WS = " \t\r\n"
_OK, _WAIT, _BAD = "ok", "wait", "bad"


def _skip_ws(text: str, i: int) -> int:
    while i < len(text) and text[i] in _WS:
        i += 1
    return i


def _head(text: str) -> tuple[str, int, str]:
    """Read `{"name": "...", "arguments": ` (or "parameters") from `text`: ok (with where the
    arguments start and the name), wait (text may still become one) or bad (it will not)."""
    i, name = 0, ""
    for part in ("{", '"name"', ":", None, ",", ('"arguments"', '"parameters"'), ":"):
        i = _skip_ws(text, i)
        if i == len(text):
            return _WAIT, i, name
        if part is None:
            m = _STRING.match(text, i)
            if m is None:
                return (_WAIT if text[i] == '"' and "\n" not in text[i:] else _BAD), i, name
            name, i = json.loads(m.group()), m.end()
            continue
        options = (part,) if isinstance(part, str) else part
        rest = text[i:i + max(len(o) for o in options)]
        full = [o for o in options if rest.startswith(o)]
        if full:
            i += len(full[0])
        elif any(o.startswith(rest) for o in options):
            return _WAIT, i, name
        else:
            return _BAD, i, name
    i = _skip_ws(text, i)
    return (_OK if i < len(text) else _WAIT), i, name


@dataclass
class _Scan:
    """Where a JSON value ends, found one character at a time (strings and escapes respected)."""

    depth: int = 0
    in_string: bool = False
    escaped: bool = False
    started: bool = False

    def feed(self, text: str) -> int:
        """How many characters of `text` belong to the value; -1: all of them, and more to come."""
        for i, c in enumerate(text):
            if not self.started:
                self.started = True
                if c not in "{[\"":  # a bare number, true, false or null
                    self.depth = -1
            if self.depth == -1:
                if c in ",}] \t\r\n":
                    return i
                continue
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif c == "\\":
                    self.escaped = True
                elif c == '"':
                    self.in_string = False
                    if self.depth == 0:
                        return i + 1
            elif c == '"':
                self.in_string = True
            elif c in "{[":
                self.depth += 1
            elif c in "}]":
                self.depth -= 1
                if self.depth <= 0:
                    return i + 1
        return -1


@dataclass
class ToolCallStream:
    """One choice's text in, content and tool-call pieces out (see the module docstring)."""

    fmt: ToolFormat
    buf: str = ""  # text received and not yet handed out
    state: str = "text"  # text | open | head | args | close | after | fallback | plain
    raw: str = ""  # the calls' text since their marker, while no call has been handed out
    calls: int = 0
    started: bool = False  # llama3_json: the reply's first text has been seen
    after_call: bool = False  # whitespace right after a call is dropped, not content
    scan: _Scan = field(default_factory=_Scan)

    def feed(self, text: str) -> list[Piece]:
        self.buf += text
        return drain(self._step, final=False)

    def finish(self) -> list[Piece]:
        """What is left once the reply has ended: held text as content, a cut-off call's text
        as content (unless its head was already handed out)."""
        out = drain(self._step, final=True)
        if self.state == "fallback":
            self._fallback(out, final=True)
        if self.state in ("open", "head", "fallback"):
            self._content(out, self.raw + self.buf)
        elif self.state in ("text", "plain"):
            self._content(out, self.buf)
        self.buf = ""
        return out

    # -- states -------------------------------------------------------------------------------

    def _step(self, out: list[Piece], final: bool) -> bool:
        """Move on through the buffer once; False when nothing more can be done yet."""
        if not self.buf and self.state != "text":
            return False
        handler = getattr(self, "_" + self.state)
        return bool(handler(out, final))

    def _plain(self, out: list[Piece], final: bool) -> bool:
        self._content(out, self.buf)
        self.buf = ""
        return False

    def _text(self, out: list[Piece], final: bool) -> bool:
        if not self.fmt.anywhere and not self.started:
            return self._reply_start(out)
        at = self.buf.find(self.fmt.start)
        if at >= 0:
            self._content(out, self.buf[:at])
            self._enter(self.buf[at:at + len(self.fmt.start)], self.buf[at + len(self.fmt.start):])
            self.state = "open"
            return True
        keep = 0 if final else partial_suffix(self.buf, self.fmt.start)
        self._content(out, self.buf[:len(self.buf) - keep])
        self.buf = self.buf[len(self.buf) - keep:]
        return False

    def _reply_start(self, out: list[Piece]) -> bool:
        """llama3_json: a reply whose first text is `{` or `<|python_tag|>` is calls; any other
        reply is content throughout."""
        text = self.buf.lstrip(_WS)
        if not text:
            return False
        if text.startswith(self.fmt.start):
            self.started = True
            self._enter(self.buf[:len(self.buf) - len(text) + len(self.fmt.start)],
                        text[len(self.fmt.start):])
            self.state = "head"
            return True
        if text.startswith("{"):
            self.started = True
            self._enter("", self.buf)
            self.state = "head"
            return True
        if self.fmt.start.startswith(text):
            return False
        self.started = True
        self.state = "plain"
        return True

    def _enter(self, marker: str, rest: str) -> None:
        self.raw, self.buf = marker, rest

    def _open(self, out: list[Piece], final: bool) -> bool:
        i = _skip_ws(self.buf, 0)
        rest = self.buf[i:i + len(self.fmt.prefix)]
        if rest == self.fmt.prefix:
            self._take_raw(i + len(self.fmt.prefix))
            self.state = "head"
            return True
        if self.fmt.prefix.startswith(rest):
            return False
        self.state = "fallback"
        return True

    def _head(self, out: list[Piece], final: bool) -> bool:
        verdict, at, name = _head(self.buf)
        if verdict == _WAIT:
            return False
        if verdict == _BAD:
            self.state = "fallback"
            return True
        out.append(Piece("call", index=self.calls, id=call_id(), name=name))
        self.raw, self.buf = "", self.buf[at:]
        self.scan = _Scan()
        self.state = "args"
        return True

    def _args(self, out: list[Piece], final: bool) -> bool:
        n = self.scan.feed(self.buf)
        piece = self.buf if n < 0 else self.buf[:n]
        if piece:
            out.append(Piece("arguments", piece, index=self.calls))
        self.buf = "" if n < 0 else self.buf[n:]
        if n < 0:
            return False
        self.calls += 1
        self.scan = _Scan(depth=1, started=True)  # the call's object is still open
        self.state = "close"
        return True

    def _close(self, out: list[Piece], final: bool) -> bool:
        n = self.scan.feed(self.buf)  # up to the call object's `}`, skipping any other keys
        self.buf = "" if n < 0 else self.buf[n:]
        if n < 0:
            return False
        self.state = "after"
        return True

    def _after(self, out: list[Piece], final: bool) -> bool:
        i = _skip_ws(self.buf, 0)
        rest = self.buf[i:]
        for mark, state in ((self.fmt.sep, "head"), (self.fmt.end, "text")):
            if mark and rest.startswith(mark):
                self.buf = rest[len(mark):]
                self.state = state
                self.after_call = True
                return True
        if not rest or any(m and m.startswith(rest) for m in (self.fmt.sep, self.fmt.end)):
            return False
        self.buf = rest  # whatever follows the calls is content
        self.after_call = True
        self.state = "plain" if not self.fmt.anywhere else "text"
        return True

    def _fallback(self, out: list[Piece], final: bool) -> bool:
        """A call not written `{"name": ..., "arguments": ...}` in that order: parsed whole once
        it is complete, its arguments handed out as one piece."""
        text = self.buf.lstrip(_WS)
        try:
            value, used = json.JSONDecoder().raw_decode(text)
        except ValueError:
            return False
        calls = value if isinstance(value, list) else [value]
        if not all(isinstance(c, dict) and isinstance(c.get("name"), str) for c in calls):
            return False  # not calls: content, once the reply ends
        for c in calls:
            args = c.get("arguments", c.get("parameters", {}))
            out.append(Piece("call", index=self.calls, id=call_id(), name=c["name"]))
            out.append(Piece("arguments", args if isinstance(args, str) else json.dumps(args),
                             index=self.calls))
            self.calls += 1
        self.raw, self.buf = "", text[used:]
        if isinstance(value, list) and self.fmt.prefix:  # the array closed the calls
            self.state = "text"
            self.after_call = True
        else:
            self.state = "after"
        return True

    def _take_raw(self, n: int) -> None:
        self.raw += self.buf[:n]
        self.buf = self.buf[n:]

    def _content(self, out: list[Piece], text: str) -> None:
        if self.after_call:  # the whitespace between and after calls is not content
            text = text.lstrip(_WS)
            self.after_call = not text
        if text:
            out.append(Piece("content", text))


def restore_markers(text: str, token_ids: list[int], markers: Mapping[int, str],
                    decode: Callable[[list[int]], str]) -> str:
    """`text`, which the engine decoded without special tokens, with the markers among
    `token_ids` that are special tokens (Mistral's `[TOOL_CALLS]`, Llama's `<|python_tag|>`) put
    back where they were; `decode` spells tokens as the engine does."""
    out, used, start = [], 0, 0
    for k, token in enumerate(token_ids):
        mark = markers.get(token)
        if mark is None:
            continue
        cut = min(len(text), used + len(decode(token_ids[start:k]))) if k > start else used
        out += [text[used:cut], mark]
        used, start = cut, k + 1
    return "".join(out) + text[used:]


@dataclass
class ParsedReply:
    """A whole reply's pieces put together: OpenAI's message fields."""

    content: str | None
    reasoning: str | None
    tool_calls: list[ToolCall]


def assemble(pieces: list[Piece]) -> ParsedReply:
    """The message a whole reply gives: its content (None when it is only calls), reasoning
    (None when there is none) and calls in order."""
    content = "".join(p.text for p in pieces if p.kind == "content")
    reasoning = "".join(p.text for p in pieces if p.kind == "reasoning")
    calls: list[ToolCall] = []
    for p in pieces:
        if p.kind == "call":
            calls.append({"id": p.id, "type": "function",
                          "function": {"name": p.name, "arguments": ""}})
        elif p.kind == "arguments":
            calls[p.index]["function"]["arguments"] += p.text
    return ParsedReply(content if content or not calls else None,
                       reasoning if reasoning else None, calls)
