"""What a chat request's `tools` ask of the reply, and the llguidance grammar that holds calls to
their functions' JSON schemas.

`tool_plan` checks `tools`, `tool_choice` and `parallel_tool_calls` against each other and the
model's template (a 400 naming the field otherwise) and says what the template renders, which
format to parse and which functions the grammar allows.

With `tool_choice` `required` or a named function the whole reply is forced to be calls in the
model's format (`tools.py`), one when `parallel_tool_calls` is false; with `auto` the reply is free
text until the model writes a call's marker, and from there the call is completed under the schema
(a lazy lexeme: the free text ends at the marker, as vLLM and llama.cpp do it). A reply that the
prompt left inside `<think>` reasons freely until `</think>` first. Arguments are written with the
separators the templates render (`", "`, `": "`) and no other whitespace. The grammar is a string
that travels to the engine process, which builds one matcher per sequence; this module knows
nothing of the engine or HTTP.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import llguidance

from seed.serve.errors import bad_request
from seed.serve.grammar import GrammarTokenizer
from seed.serve.reasoning import CLOSE
from seed.serve.schemas import ChatCompletionRequest, FunctionTool, NamedToolChoice
from seed.serve.tools import ToolFormat

_JSON_STYLE = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


# OpenAI: a function without `parameters` takes none
_NO_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}


@dataclass(frozen=True)
class FunctionSchema:
    name: str
    parameters: dict[str, Any]


@dataclass(frozen=True)
class ToolPlan:
    """`template_tools` for the chat template; `format` to parse the reply's calls in (None: no
    tools, or tool_choice none); `functions` the grammar allows, `required` (the reply must be
    calls) and `parallel` (more than one call allowed)."""

    template_tools: list[dict[str, Any]] | None = None
    format: ToolFormat | None = None
    functions: tuple[FunctionSchema, ...] = ()
    required: bool = False
    parallel: bool = True

    def lark(self, thinking: bool, marker_ids: Mapping[str, int]) -> str | None:
        """The grammar's Lark source, or None when nothing is constrained."""
        if self.format is None or not self.functions:
            return None
        return tool_lark(self.format, list(self.functions), required=self.required,
                         parallel=self.parallel, thinking=thinking, marker_ids=marker_ids)


def tool_plan(req: ChatCompletionRequest, fmt: ToolFormat | None,
              renders_tools: bool) -> ToolPlan:
    """What `req`'s tools ask for, served by a model whose template renders tools (or not) and
    writes calls in `fmt` (None: unknown); a 400 naming the field when they cannot be served."""
    choice = req.tool_choice
    if not req.tools:
        if choice is not None:
            raise bad_request("tool_choice needs tools: send the functions in `tools`, or drop "
                              "tool_choice.", "tool_choice")
        return ToolPlan()
    for i, tool in enumerate(req.tools):
        if not isinstance(tool, FunctionTool):
            raise bad_request(f"tools.{i} is not a function tool; Seed serves tools of type "
                              "`function` with a `function.name` only.", f"tools.{i}")
    if isinstance(choice, dict):
        raise bad_request("tool_choice is none of `none`, `auto`, `required` or a named function "
                          '(`{"type": "function", "function": {"name": ...}}`); send one of '
                          "them.", "tool_choice")
    if not renders_tools:
        raise bad_request("This model's chat template does not render tools, so the model cannot "
                          "be told about them; drop `tools` or serve a model whose template "
                          "supports them.", "tools")
    tools = [t for t in req.tools if isinstance(t, FunctionTool)]
    functions = [FunctionSchema(t.function.name, t.function.parameters or _NO_PARAMETERS)
                 for t in tools]
    template_tools = [t.model_dump(exclude_none=True) for t in tools]
    if isinstance(choice, NamedToolChoice):
        named = [f for f in functions if f.name == choice.function.name]
        if not named:
            raise bad_request(f"tool_choice names the function `{choice.function.name}`, which is "
                              "not among `tools`; name one of them.", "tool_choice")
        functions = named
    if choice == "none":
        return ToolPlan(template_tools)
    if fmt is None:
        raise bad_request("Seed cannot tell from this model's chat template how it writes tool "
                          "calls; start `seed serve` with --tool-parser hermes, llama3_json or "
                          "mistral.", "tools")
    if req.response_format is not None and req.response_format.type != "text":
        raise bad_request("response_format with tools is not supported unless tool_choice is "
                          "none; drop one of them.", "response_format")
    return ToolPlan(template_tools, fmt, tuple(functions), required=choice not in (None, "auto"),
                    parallel=req.parallel_tool_calls is not False)


def _lit(text: str) -> str:
    return json.dumps(text)


def _function(fmt: ToolFormat, f: FunctionSchema) -> str:
    schema = {**(f.parameters or {"type": "object"}), "x-guidance": _JSON_STYLE}
    head = "{" + f'"name": {json.dumps(f.name)}, "{fmt.args_key}": '
    return f"{_lit(head)} %json {json.dumps(schema)} {_lit('}')}"


def tool_lark(fmt: ToolFormat, functions: list[FunctionSchema], *, required: bool,
              parallel: bool, thinking: bool, marker_ids: Mapping[str, int] | None = None) -> str:
    """The Lark grammar (llguidance's dialect) for replies that call `functions`.

    `marker_ids`: the markers the tokenizer holds as one added token (Qwen3's `<tool_call>`),
    which llguidance matches only as that token: the grammar takes the token or the text.
    """
    ids = marker_ids or {}

    def mark(text: str) -> str:
        return f"({_lit(text)} | <[{ids[text]}]>)" if text in ids else _lit(text)

    rules = [f"fn_{i}: {_function(fmt, f)}" for i, f in enumerate(functions)]
    rules.append("fn: " + " | ".join(f"fn_{i}" for i in range(len(functions))))
    rules.append("TEXT: /(.|\\n)*/")
    if fmt.sep is None:  # hermes: each call in its own block
        body = f'"\\n" fn "\\n" {mark(fmt.end)}'
        calls = f"{mark(fmt.start)} {body}" + (f' ("\\n" {mark(fmt.start)} {body})*'
                                                if parallel else "")
    else:
        joined = f"fn ({_lit(fmt.sep + ' ')} fn)*" if parallel else "fn"
        body = f"{_lit(fmt.prefix)} {joined} {_lit(fmt.end)}" if fmt.prefix or fmt.end else joined
        calls = f"{mark(fmt.start)} {body}" if fmt.anywhere else body
    if required:
        rules += [f"start: {_after_thinking(rules, ids)} calls" if thinking else "start: calls",
                  f"calls: {calls}"]
    elif fmt.anywhere:  # free text; a call the model starts is held to its schema
        rules += ["start: call* TEXT" if parallel else "start: TEXT | call",
                  f"call: trigger {body}" + (f" | TEXT <[{ids[fmt.start]}]> {body}"
                                             if fmt.start in ids else ""),
                  f"trigger[lazy]: TEXT {_lit(fmt.start)}"]
    else:  # llama3_json: a reply that opens with `{` is its calls
        rules += ["start: calls | PLAIN | EMPTY", f"calls: {calls}", "PLAIN: /[^{\\s](.|\\n)*/",
                  'EMPTY: ""']
    return "%llguidance {}\n" + "\n".join(rules) + "\n"


def _after_thinking(rules: list[str], ids: Mapping[str, int]) -> str:
    """Add the rules of free reasoning up to `</think>` (the prompt opened it); returns what
    the start rule begins with."""
    rules.append("think_text[lazy]: TEXT " + _lit(CLOSE))
    rules.append("think: think_text" + (f" | TEXT <[{ids[CLOSE]}]>"
                                        if CLOSE in ids else ""))
    rules.append("WS: /[ \\n]*/")
    return "think WS"


def json_after_thinking(schema: dict[str, Any], marker_ids: Mapping[str, int] | None = None
                        ) -> str:
    """The Lark grammar for a `response_format` schema's JSON after the reply's `</think>`."""
    schema = {**schema, "x-guidance": {"whitespace_flexible": False}}
    rules = ["TEXT: /(.|\\n)*/", f"answer: %json {json.dumps(schema)}"]
    rules.append(f"start: {_after_thinking(rules, marker_ids or {})} answer")
    return "%llguidance {}\n" + "\n".join(rules) + "\n"


def compile_lark(tokenizer: GrammarTokenizer, lark: str) -> str:
    """The grammar for `lark`; ValueError (with llguidance's reason) when a schema cannot be
    enforced."""
    grammar = llguidance.LLMatcher.grammar_from_lark(lark)
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar, tokenizer.ll)
    if is_error:
        raise ValueError(messages[0] if messages else "invalid tool grammar")
    return grammar
