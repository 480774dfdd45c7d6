"""Training data: chats rendered with the chat template, an assistant-only loss mask, and packing.

The mask is computed by rendering prefixes of the conversation: the tokens an assistant turn adds
are those of `messages[:i+1]` beyond `messages[:i]` plus the generation prompt. That works for any
template without generation markers in it, and it checks that each prefix tokenizes to a prefix of
the ids (a template where it does not cannot be masked this way, and says so).

An assistant turn's thinking trace (`reasoning_content`) is rendered by the template (Seed's writes
it as `<think>\n...\n</think>\n\n` before the answer, as Qwen3's does) and trained as
`train.reasoning` says: `train` keeps the thought and the answer in the loss, `answer` masks the
thought's tokens (from `<think>` to the blank lines after `</think>`, found in the rendered text and
mapped to tokens by their offsets), `drop` removes the trace before rendering. A template that
does not write a turn's trace cannot train on it, and says so.

Tool use renders through the template too: a chat's `tools` (OpenAI's function tools) go to it as
`tools`, and an assistant turn's `tool_calls` are trained like its content. A call's `arguments`
(JSON text) are parsed first, so the template writes them with the separators `seed serve`'s tool
grammar holds a served call to (`", "`, `": "`); text that is not JSON is passed on as it is. An
assistant turn with `weight: 0` (a fine-tuning file's key, OpenAI's meaning) stays in the context
and out of the loss.

Packing puts several examples in one fixed-length row with `position_ids` restarting at 0 for each,
which is how transformers' attention keeps packed examples from attending to each other when no
attention mask is passed; `fit` drops the examples with a trace that `seq_len` would cut (their
answer would be lost). This module knows nothing about models, optimizers or the loop.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from transformers import PreTrainedTokenizerBase

from seed.errors import UserError
from seed.thinking import CLOSE, OPEN, WHITESPACE, opens_thinking

Chat = list[dict[str, Any]]
Tools = list[dict[str, Any]]
Reasoning = Literal["train", "answer", "drop"]
TEMPLATE_SETTING = "train.student.chat_template"  # the key that fixes a template problem
REASONING_SETTING = "train.reasoning"


@dataclass
class Example:
    """One rendered conversation: token ids and, per token, 1 where the loss is taken; `thought`
    counts the tokens of its thinking traces (trained or not)."""

    ids: list[int]
    mask: list[int]
    thought: int = 0


@dataclass
class Batch:
    """Packed rows: ids, loss mask and position ids, each of shape (rows, seq_len)."""

    input_ids: torch.Tensor
    mask: torch.Tensor
    position_ids: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def rows(self, start: int, stop: int) -> Batch:
        return Batch(self.input_ids[start:stop], self.mask[start:stop],
                     self.position_ids[start:stop])


def render(tokenizer: PreTrainedTokenizerBase, chats: Sequence[Chat],
           source: str = "the records", reasoning: Reasoning = "train",
           tools: Sequence[Tools | None] | None = None) -> list[Example]:
    """Each chat's ids with an assistant-only mask, found by rendering and diffing prefixes.

    For assistant message i, the ids of `chat[:i]` with the generation prompt must be a prefix of
    the ids of `chat[:i+1]`, which must be a prefix of the whole chat's; the difference is trained,
    but for the thought of a turn with a trace when `reasoning` is "answer", and for a turn with
    `weight: 0` (module docstring). `tools[n]`: the tools offered in chat n (None: none).
    A template for which that fails is a UserError naming `source` (the records file) and the chat.
    """
    skipped = [[m.get("weight") == 0 for m in chat] for chat in chats]
    chats = [[template_turn(m, reasoning) for m in chat] for chat in chats]
    offered = list(tools) if tools is not None else [None] * len(chats)
    prompts: list[Chat] = []  # chat[:i], rendered with the generation prompt
    turns: list[Chat] = []  # chat[:i+1]; the last one of each chat is the whole chat
    prompt_tools: list[Tools | None] = []
    turn_tools: list[Tools | None] = []
    plan: list[tuple[list[tuple[int, int, bool]], int]] = []  # [(prompt, turn, skip)], whole
    for chat, weightless, chat_tools in zip(chats, skipped, offered, strict=True):
        pairs = []
        for i, m in enumerate(chat):
            if m["role"] == "assistant":
                prompts.append(chat[:i])
                turns.append(chat[: i + 1])
                prompt_tools.append(chat_tools)
                turn_tools.append(chat_tools)
                pairs.append((len(prompts) - 1, len(turns) - 1, weightless[i]))
        if not pairs or len(chat) != len(turns[-1]):
            turns.append(chat)
            turn_tools.append(chat_tools)
        plan.append((pairs, len(turns) - 1))
    texts = (_render_texts(tokenizer, turns, turn_tools, False)
             + _render_texts(tokenizer, prompts, prompt_tools, True))
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    turn_ids, prompt_ids = ids[: len(turns)], ids[len(turns):]
    turn_texts, prompt_texts = texts[: len(turns)], texts[len(turns):]

    examples = []
    for n, (pairs, whole) in enumerate(plan, 1):
        full = turn_ids[whole]
        mask = [0] * len(full)
        thought = 0
        for p, t, skip in pairs:
            prefix, turn = prompt_ids[p], turn_ids[t]
            if turn[: len(prefix)] != prefix or full[: len(turn)] != turn:
                raise UserError(f"{source} record {n}: the chat template does not render the "
                                "conversation's prefixes as prefixes of its tokens, so the "
                                "assistant mask cannot be computed; set "
                                f"{TEMPLATE_SETTING} to a template that does")
            if len(turn) == len(prefix):
                raise UserError(f"{source} record {n}: an assistant turn renders to no tokens "
                                f"with this chat template; set {TEMPLATE_SETTING} to one that "
                                "keeps the assistant's content")
            if not skip:
                mask[len(prefix): len(turn)] = [1] * (len(turn) - len(prefix))
            trace = turns[t][-1].get("reasoning_content")
            if trace is None:
                continue
            span = thought_span(turn_texts[t], prompt_texts[p], trace)
            if span is None:
                raise UserError(f"{source} record {n}: the chat template does not write the "
                                "assistant's reasoning_content, so its trace cannot be trained; "
                                f"set {TEMPLATE_SETTING} to one that does (Seed's and Qwen3's "
                                f"do) or {REASONING_SETTING} = \"drop\"")
            inside = thought_tokens(tokenizer, turn_texts[t], span, len(prefix), len(turn))
            thought += len(inside)
            if reasoning == "answer":
                for i in inside:
                    mask[i] = 0
        examples.append(Example(full, mask, thought))
    return examples


def template_turn(message: dict[str, Any], reasoning: Reasoning = "train") -> dict[str, Any]:
    """A chat turn as the template is given it: without its `weight` (which only the mask reads),
    without its trace when `reasoning` is "drop", and with each tool call's `arguments` parsed
    when they are JSON (so the template writes them in the serve grammar's separators)."""
    out = {k: v for k, v in message.items()
           if k != "weight" and not (k == "reasoning_content" and reasoning == "drop")}
    if out.get("tool_calls"):
        out["tool_calls"] = [_parsed_arguments(c) for c in out["tool_calls"]]
    return out


def corpus_texts(chat: Chat, tools: Tools | None = None) -> Iterator[str]:
    """The texts a new student's tokenizer is fitted on for one chat: each turn's content and
    trace, each call as the template writes its JSON, and each tool offered."""
    for m in chat:
        yield from (t for t in (m.get("content"), m.get("reasoning_content")) if t)
        for call in template_turn(m).get("tool_calls") or []:
            function = call.get("function") or {}
            args = function.get("arguments")
            yield json.dumps({"name": function.get("name"), "arguments": args},
                             ensure_ascii=False) if not isinstance(args, str) else args
    yield from (json.dumps(t, ensure_ascii=False) for t in tools or [])


def _parsed_arguments(call: dict[str, Any]) -> dict[str, Any]:
    function = call.get("function") or {}
    args = function.get("arguments")
    if not isinstance(args, str):
        return call
    try:
        value = json.loads(args)
    except ValueError:
        return call
    return {**call, "function": {**function, "arguments": value}}


def thought_span(turn_text: str, prompt_text: str, trace: str) -> tuple[int, int] | None:
    """Where a turn's thought lies in its rendered text, `<think>` through the blank lines after
    `</think>` (from the turn's start when the prompt opened `<think>`); None when the template
    did not write the trace there."""
    base = len(prompt_text) if turn_text.startswith(prompt_text) else 0
    start = base if opens_thinking(prompt_text) else turn_text.find(OPEN, base)
    if start < 0:
        return None
    body = trace.strip(WHITESPACE)
    at = turn_text.find(body, start) if body else start
    close = turn_text.find(CLOSE, at + len(body)) if at >= 0 else -1
    if close < 0:
        return None
    end = close + len(CLOSE)
    while end < len(turn_text) and turn_text[end] in WHITESPACE:
        end += 1
    return start, end


def thought_tokens(tokenizer: PreTrainedTokenizerBase, text: str, span: tuple[int, int],
                   first: int, stop: int) -> list[int]:
    """The positions among tokens `first`..`stop` of `text` whose characters overlap `span`."""
    if not tokenizer.is_fast:
        raise UserError(f"{REASONING_SETTING} needs a fast tokenizer (tokenizer.json) to find a "
                        "trace's tokens; save the student's tokenizer as one")
    offsets = tokenizer(text, add_special_tokens=False,
                        return_offsets_mapping=True)["offset_mapping"]
    return [i for i in range(first, stop) if offsets[i][0] < span[1] and offsets[i][1] > span[0]]


def fit(examples: Sequence[Example], seq_len: int) -> tuple[list[Example], int]:
    """The examples `pack` can take whole or cut harmlessly, and how many were dropped: one with
    a thinking trace that is longer than `seq_len` would lose its answer (or the end of its
    thought) to the cut and teach the student to think without end, so it is dropped."""
    kept = [ex for ex in examples if not (ex.thought and len(ex.ids) > seq_len)]
    return kept, len(examples) - len(kept)


def _render_texts(tokenizer: PreTrainedTokenizerBase, chats: list[Chat],
                  tools: list[Tools | None], generation_prompt: bool) -> list[str]:
    """Each chat's text, with its tools; chats offered the same tools render in one call."""
    groups: dict[str, list[int]] = {}
    for i, chat_tools in enumerate(tools):
        groups.setdefault(json.dumps(chat_tools, sort_keys=True), []).append(i)
    out = [""] * len(chats)
    for members in groups.values():
        # One batched call renders far faster than one call per chat.
        offered = tools[members[0]]
        texts = tokenizer.apply_chat_template([chats[i] for i in members],
                                              tools=None if offered is None else [*offered],
                                              tokenize=False,
                                              add_generation_prompt=generation_prompt)
        for i, text in zip(members, texts, strict=True):
            out[i] = text
    return out


def assistant_mask(tokenizer: PreTrainedTokenizerBase, chat: Chat,
                   reasoning: Reasoning = "train", tools: Tools | None = None) -> Example:
    """One chat's ids and assistant-only mask."""
    return render(tokenizer, [chat], reasoning=reasoning, tools=[tools])[0]


def pack(examples: Sequence[Example], seq_len: int, pad_id: int) -> Batch:
    """Greedy, in order: fill rows of `seq_len` with whole examples; a longer one is truncated.

    Padding gets mask 0 and its own positions from 0, so it is a separate (ignored) sequence.
    """
    rows: list[tuple[list[int], list[int], list[int]]] = []
    ids: list[int] = []
    mask: list[int] = []
    pos: list[int] = []

    def flush() -> None:
        if ids:
            pad = seq_len - len(ids)
            rows.append((ids + [pad_id] * pad, mask + [0] * pad, pos + list(range(pad))))

    for ex in examples:
        n = min(len(ex.ids), seq_len)
        if len(ids) + n > seq_len:
            flush()
            ids, mask, pos = [], [], []
        ids.extend(ex.ids[:n])
        mask.extend(ex.mask[:n])
        pos.extend(range(n))
    flush()
    if not rows:
        raise ValueError("nothing to pack: no examples")
    return Batch(torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows]),
                 torch.tensor([r[2] for r in rows]))
