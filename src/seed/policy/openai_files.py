"""OpenAI's files as records: chat fine-tuning JSONL, preference (DPO) JSONL, stored completions.

Three shapes, for teams leaving OpenAI's fine-tuning with the data they gave it or kept from it:

- a chat fine-tuning item, `{"messages", "tools"?, "parallel_tool_calls"?, "functions"?}`:
  system, user, assistant and tool turns, assistant `tool_calls`, tool turns' `tool_call_id`,
  assistant `weight` (0: not trained on) and participant `name`s are kept as they are; the legacy
  `functions`, assistant `function_call` and `function` turns become `tools`, `tool_calls` (ids
  `call_0`, `call_1`, ... in the order of the conversation) and tool turns answering them;
  `developer` turns become `system` turns, text content parts are joined, an assistant's `refusal`
  is its content;
- a preference item, `{"input": {"messages", "tools"?, ...}, "preferred_output": [assistant],
  "non_preferred_output": [assistant]}`: the input is the record's messages and the two answers
  its `meta.chosen` / `meta.rejected`, which `mode = "dpo"` trains on (text answers only);
- a stored chat completion as `GET /v1/chat/completions/{id}` returns it (or a page of them,
  `{"object": "list", "data": [...]}`, as `GET /v1/chat/completions` returns it), with the request's
  messages added under `messages`: the list, or the page `GET /v1/chat/completions/{id}/messages`
  returns (`{"object": "list", "data": [...], "has_more": false}`). Each choice is one record, its
  teacher the completion's `model` (route `direct`, host `api.openai.com`, `requested_at` from
  `created`), so a file that mixes models is judged model by model.

`ft_item` writes a record back in the fine-tuning (or preference) shape. Anything the records cannot
hold (images, audio, a weight that is not 0 or 1) is an error naming the line and the field, never
dropped; the one exception is a stored answer's citations (`annotations`), which are left out.
This module parses and labels; judging is `gate.py`'s job, reading the file is `importers.py`'s.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

from pydantic import ValidationError

from seed.records import Message, Provenance, Record, Source, Teacher, record_id

OPENAI_HOST = "api.openai.com"
_MESSAGE_KEYS = {"role", "content", "tool_calls", "tool_call_id", "name", "weight",
                 "function_call", "refusal"}
_EMPTY: tuple[Any, ...] = (None, [], {})  # what an API object holds in fields it does not use
_FT_KEYS = {"messages", "tools", "functions", "parallel_tool_calls"}
# What the stored-completion endpoints add to a message: its id, the parts of its content (the
# content holds their text) and the answer's citations (url annotations), which records do not keep
_STORED_ONLY = {"id", "content_parts", "annotations"}
_PARAMS = ("temperature", "top_p", "seed", "presence_penalty", "frequency_penalty",
           "max_completion_tokens", "max_tokens", "reasoning_effort", "service_tier")


class Bad(ValueError):
    """A field of one item that Seed cannot read: where (a JSON path) and why."""

    def __init__(self, where: str, why: str) -> None:
        super().__init__(f"{where}: {why}")
        self.where, self.why = where, why


def _where(loc: Iterable[Any]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _object(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise Bad(where, f"is {type(value).__name__}, should be an object")
    return value


def _list(value: Any, where: str) -> list[Any]:
    if not isinstance(value, list):
        raise Bad(where, f"is {type(value).__name__}, should be a list")
    return value


def _text(content: Any, where: str) -> str:
    """A message's content as text: a string, null (""), or text parts joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for k, part in enumerate(_list(content, where)):
        part = _object(part, f"{where}[{k}]")
        if part.get("type") != "text" or not isinstance(part.get("text"), str):
            raise Bad(f"{where}[{k}]", f"a {part.get('type')!r} part; Seed's records hold text "
                      "and tool calls only, so remove it")
        parts.append(part["text"])
    return "".join(parts)


def _tools(value: Any, where: str) -> list[dict[str, Any]]:
    tools = _list(value, where)
    for k, tool in enumerate(tools):
        tool = _object(tool, f"{where}[{k}]")
        function = _object(tool.get("function"), f"{where}[{k}].function")
        if tool.get("type") != "function" or not isinstance(function.get("name"), str):
            raise Bad(f"{where}[{k}]", 'should be {"type": "function", "function": {"name": '
                      "...}}")
    return tools


class _Calls:
    """Ids for legacy `function_call`s, and the call each `function` turn answers."""

    def __init__(self) -> None:
        self.made = 0
        self.open: dict[str, list[str]] = {}

    def call(self, fc: dict[str, Any]) -> dict[str, Any]:
        call_id = f"call_{self.made}"
        self.made += 1
        self.open.setdefault(str(fc.get("name")), []).append(call_id)
        return {"id": call_id, "type": "function", "function": fc}

    def answer(self, name: Any, where: str) -> str:
        waiting = self.open.get(str(name))
        if not waiting:
            raise Bad(where, f"a function turn answers {name!r}, which no earlier "
                      "function_call called")
        return waiting.pop(0)


def _message(raw: Any, where: str, calls: _Calls, stored: bool = False) -> dict[str, Any]:
    """One OpenAI chat message as a record's message dict (see the module docstring)."""
    m = _object(raw, where)
    extra = sorted(k for k, v in m.items() if k not in _MESSAGE_KEYS and v not in _EMPTY
                   and not (stored and k in _STORED_ONLY))
    if extra:
        raise Bad(f"{where}.{extra[0]}", "Seed's records hold text and tool calls only; "
                  "remove the field")
    role = m.get("role")
    out: dict[str, Any] = {"role": "system" if role == "developer" else role,
                           "content": _text(m.get("content"), f"{where}.content")}
    if role == "assistant" and not out["content"] and isinstance(m.get("refusal"), str):
        out["content"] = m["refusal"]
    for key in ("tool_calls", "tool_call_id", "name", "weight"):
        if m.get(key) is not None:
            out[key] = m[key]
    if m.get("function_call") is not None:
        if m.get("tool_calls"):
            raise Bad(f"{where}.function_call", "a turn holds both tool_calls and the legacy "
                      "function_call; keep one")
        out["tool_calls"] = [calls.call(_object(m["function_call"], f"{where}.function_call"))]
    if role == "function":
        out = {"role": "tool", "content": out["content"],
               "tool_call_id": calls.answer(m.get("name"), where)}
    return out


def _validated(turn: dict[str, Any], where: str) -> Message:
    try:
        return Message.model_validate(turn)
    except ValidationError as e:
        err = e.errors()[0]
        loc = _where(err["loc"])
        raise Bad(where + (f".{loc}" if loc else ""),
                  err["msg"].removeprefix("Value error, ")) from None


def _messages(raw: Any, where: str, stored: bool = False) -> list[Message]:
    calls = _Calls()
    out = [_validated(_message(m, f"{where}[{j}]", calls, stored), f"{where}[{j}]")
           for j, m in enumerate(_list(raw, where))]
    if not out:
        raise Bad(where, "holds no messages")
    return out


def _offered(item: dict[str, Any], where: str) -> list[dict[str, Any]] | None:
    """The item's tools: `tools`, or the legacy `functions` as function tools."""
    if item.get("tools") not in _EMPTY and item.get("functions") not in _EMPTY:
        raise Bad(f"{where}functions", "an item holds both tools and the legacy functions; keep "
                  "one")
    if item.get("functions") not in _EMPTY:
        functions = _list(item["functions"], f"{where}functions")
        return _tools([{"type": "function", "function": f} for f in functions],
                      f"{where}functions")
    if item.get("tools") not in _EMPTY:
        return _tools(item["tools"], f"{where}tools")
    return None


def _answer(raw: Any, where: str) -> str:
    turns = _list(raw, where)
    if len(turns) != 1:
        raise Bad(where, f"holds {len(turns)} messages; Seed's dpo mode takes one assistant "
                  "answer")
    m = _object(turns[0], f"{where}[0]")
    if m.get("role") != "assistant":
        raise Bad(f"{where}[0].role", "should be assistant")
    if m.get("tool_calls") or m.get("function_call"):
        raise Bad(f"{where}[0].tool_calls", "Seed's dpo mode trains text answers, not tool "
                  "calls; train such pairs elsewhere or drop them")
    return _text(m.get("content"), f"{where}[0].content")


def ft_record(row: Any, prov: Provenance, index: int) -> Record:
    """One fine-tuning or preference item as a record (Bad names the field that is wrong)."""
    item = _object(row, "item")
    meta: dict[str, Any] = {"import_index": index}
    if "preferred_output" in item or "input" in item:
        unknown = sorted(set(item) - {"input", "preferred_output", "non_preferred_output"})
        if unknown:
            raise Bad(unknown[0], "is not a key of OpenAI's preference format")
        inp = _object(item.get("input"), "input")
        messages = _messages(inp.get("messages"), "input.messages")
        tools = _offered(inp, "input.")
        meta["chosen"] = _answer(item.get("preferred_output"), "preferred_output")
        meta["rejected"] = _answer(item.get("non_preferred_output"), "non_preferred_output")
        if isinstance(inp.get("parallel_tool_calls"), bool):
            meta["parallel_tool_calls"] = inp["parallel_tool_calls"]
        return Record(id=record_id(messages, tools), messages=messages, tools=tools,
                      provenance=prov, meta=meta)
    unknown = sorted(set(item) - _FT_KEYS)
    if unknown:
        raise Bad(unknown[0], "is not a key of OpenAI's chat fine-tuning format (messages, "
                  "tools, parallel_tool_calls, functions)")
    messages = _messages(item.get("messages"), "messages")
    tools = _offered(item, "")
    if item.get("parallel_tool_calls") is not None:
        if not isinstance(item["parallel_tool_calls"], bool):
            raise Bad("parallel_tool_calls", "should be true or false")
        meta["parallel_tool_calls"] = item["parallel_tool_calls"]
    return Record(id=record_id(messages, tools), messages=messages, tools=tools,
                  provenance=prov, meta=meta)


def _iso(created: Any, where: str) -> str:
    if type(created) is not int:
        raise Bad(where, "should be the completion's Unix time in seconds")
    return datetime.fromtimestamp(created, UTC).isoformat(timespec="seconds")


def stored_completions(row: Any) -> list[tuple[str, dict[str, Any]]]:
    """The completions one item holds, with where each is: itself, or a list page's data."""
    item = _object(row, "item")
    if item.get("object") == "list":
        return [(f"data[{k}]", _object(c, f"data[{k}]"))
                for k, c in enumerate(_list(item.get("data"), "data"))]
    return [("", item)]


def stored_records(completion: dict[str, Any], where: str, source: Source,
                   index: int) -> list[Record]:
    """One stored chat completion (with its `messages`) as records, one per choice."""
    at = f"{where}." if where else ""
    model = completion.get("model")
    if not isinstance(model, str) or not model:
        raise Bad(f"{at}model", "missing; a stored completion names the model that wrote it")
    asked = completion.get("messages")
    if isinstance(asked, dict):  # the page GET /v1/chat/completions/{id}/messages returns
        if asked.get("has_more"):
            raise Bad(f"{at}messages.has_more", "is true: fetch every page of the messages "
                      "(after=last_id) before exporting")
        asked = asked.get("data")
    if asked is None:
        raise Bad(f"{at}messages", "missing; add the request's messages (GET "
                  "/v1/chat/completions/{id}/messages) to each completion")
    prompt = _messages(asked, f"{at}messages", stored=True)
    tools = _offered(completion, at)
    teacher = Teacher.model_validate({
        "route": "direct", "host": OPENAI_HOST, "model_returned": model,
        "system_fingerprint": completion.get("system_fingerprint"),
        "params": {k: completion[k] for k in _PARAMS if completion.get(k) is not None},
        "requested_at": _iso(completion.get("created"), f"{at}created"),
        "declared_by": "OpenAI stored completion"})
    prov = Provenance(teacher=teacher, source=source, purpose="train")
    records = []
    for k, choice in enumerate(_list(completion.get("choices"), f"{at}choices")):
        choice = _object(choice, f"{at}choices[{k}]")
        said = f"{at}choices[{k}].message"
        answer = [_validated(_message(choice.get("message"), said, _Calls(), stored=True), said)]
        meta: dict[str, Any] = {"import_index": index, "openai_id": completion.get("id"),
                                "choice": choice.get("index", k)}
        if choice.get("finish_reason") is not None:
            meta["finish_reason"] = choice["finish_reason"]
        if completion.get("metadata") not in _EMPTY:
            meta["metadata"] = completion["metadata"]
        messages = [*prompt, *answer]
        records.append(Record(id=record_id(messages, tools), messages=messages, tools=tools,
                              provenance=prov, meta=meta))
    if not records:
        raise Bad(f"{at}choices", "is empty")
    return records


def ft_item(record: Record) -> dict[str, Any]:
    """A record in OpenAI's fine-tuning shape (the preference shape for a record with
    `meta.chosen` / `meta.rejected`): an assistant turn whose content is empty and that calls
    tools gets content null, as OpenAI writes it; reasoning traces are not part of the format."""
    messages = []
    for m in record.messages:
        turn = {k: v for k, v in m.chat(weight=True).items() if k != "reasoning_content"}
        if m.tool_calls and not m.content:
            turn["content"] = None
        messages.append(turn)
    body: dict[str, Any] = {"messages": messages}
    if record.tools is not None:
        body["tools"] = record.tools
    if isinstance(record.meta.get("parallel_tool_calls"), bool):
        body["parallel_tool_calls"] = record.meta["parallel_tool_calls"]
    if isinstance(record.meta.get("chosen"), str) and isinstance(record.meta.get("rejected"), str):
        return {"input": body,
                "preferred_output": [{"role": "assistant", "content": record.meta["chosen"]}],
                "non_preferred_output": [{"role": "assistant",
                                          "content": record.meta["rejected"]}]}
    return body
