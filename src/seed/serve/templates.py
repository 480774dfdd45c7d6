"""What the local backend reads from a tokenizer and its chat template, and how a history
message is put to the template.

The template's source (to detect tool and reasoning formats and the variables it reads), the
markers held as one added token, the longest token (which bounds how many characters a context can
hold), byte-level BPE's byte table (for logprobs' `bytes`), and `template_message`, which turns a
validated chat message into the dict chat templates read. This module renders nothing itself and
knows nothing of HTTP or the engine.
"""

from __future__ import annotations

import json
from typing import Any

from seed.serve.errors import bad_request
from seed.serve.reasoning import CLOSE, OPEN
from seed.serve.schemas import ChatMessage
from seed.serve.tools import ToolFormat


def longest_token_chars(tokenizer: Any) -> int:
    """The most characters of text one token can stand for: its vocabulary's longest piece (a
    byte-level piece spells one character per byte, a SentencePiece byte token `<0xE3>` or a
    WordPiece `##ing` more than it stands for), so `context` x this bounds what can fit."""
    return max((len(piece) for piece in tokenizer.get_vocab()), default=1)


def _byte_level_table() -> dict[str, int]:
    """GPT-2's byte-to-printable-character map, inverted (byte-level BPE stores tokens this way)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    chars, extra = [], 0
    for b in range(256):
        if b in keep:
            chars.append((chr(b), b))
        else:
            chars.append((chr(256 + extra), b))
            extra += 1
    return dict(chars)


UNICODE_TO_BYTE = _byte_level_table()


# What the server passes to the chat template itself (chat_template_kwargs may not set them)
TEMPLATE_OWN = frozenset({"messages", "conversation", "tools", "documents", "chat_template",
                           "add_generation_prompt", "continue_final_message", "tokenize",
                           "return_dict", "return_tensors", "padding", "truncation", "max_length",
                           "tokenizer_kwargs", "return_assistant_tokens_mask",
                           "sanitize_control_tokens", "bos_token", "eos_token"})


def template_source(tokenizer: Any) -> str:
    """The chat template's source (every named template when there are several)."""
    template = tokenizer.chat_template
    if isinstance(template, dict):
        return "\n".join(str(t) for t in template.values())
    return str(template or "")


def marker_ids(tokenizer: Any, tools: ToolFormat | None) -> dict[str, int]:
    """The tool and reasoning markers this tokenizer holds as one added token (llguidance
    matches those only as the token)."""
    added = tokenizer.get_added_vocab()
    marks = [OPEN, CLOSE, *((tools.start, tools.end) if tools else ())]
    return {m: added[m] for m in marks if m in added}


def special_markers(tokenizer: Any, marker_ids: dict[str, int]) -> dict[int, str]:
    """Those of the markers that are special tokens, which the engine's decoding drops."""
    added = tokenizer.added_tokens_decoder
    return {i: m for m, i in marker_ids.items() if i in added and added[i].special}


def template_message(i: int, m: ChatMessage) -> dict[str, Any]:
    """A history message as chat templates read it: an assistant's calls with their arguments
    as objects (templates write them with `tojson`), a tool's answer with its call's id, a
    replayed reasoning as `reasoning_content`, the speaker's `name` when it has one."""
    extra = m.replayed_extra()
    if extra:
        raise bad_request(f"messages.{i}.{extra}: Seed never sends this field and cannot render "
                          "it; send it null (or empty) or drop it.", f"messages.{i}.{extra}")
    out: dict[str, Any] = {"role": m.role, "content": m.text()}
    if m.name is not None:  # a template that names speakers renders it; others leave it out
        out["name"] = m.name
    if m.tool_calls:
        calls = []
        for j, c in enumerate(m.tool_calls):
            try:
                arguments = json.loads(c.function.arguments)
            except json.JSONDecodeError:
                raise bad_request(f"messages.{i}.tool_calls.{j}: the function's arguments are not "
                                  "JSON; send them as the reply gave them.",
                                  f"messages.{i}.tool_calls.{j}") from None
            calls.append({"id": c.id, "type": "function",
                          "function": {"name": c.function.name, "arguments": arguments}})
        out["tool_calls"] = calls
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    reasoning = m.reasoning_content or m.reasoning
    if reasoning:
        out["reasoning_content"] = reasoning
    return out
