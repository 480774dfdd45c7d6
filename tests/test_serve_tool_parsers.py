"""The tool-call and reasoning splits and the tool grammars on real-format text, in process.

Each family's text is written as its models write it (Qwen's `<tool_call>` blocks, Llama 3.1's
JSON after `<|python_tag|>`, Mistral's `[TOOL_CALLS]` list with ids); a split fed one character
at a time must give what the whole text gives. The grammars are checked with llguidance on a tiny
tokenizer: a valid call is accepted, a wrong argument refused.
"""

from __future__ import annotations

import json

import llguidance
import pytest
from transformers import AutoTokenizer

from helpers.models import HERMES_THINK, LLAMA31_JSON, MISTRAL_TOOLS, THINK_CHATML, tiny_model
from seed.serve.grammar import GrammarTokenizer
from seed.serve.reasoning import ReplySplitter, template_thinks
from seed.serve.tool_grammar import FunctionSchema, compile_lark, json_after_thinking, tool_lark
from seed.serve.tools import (
    FORMATS,
    HERMES,
    LLAMA3_JSON,
    MISTRAL,
    assemble,
    detect_format,
    restore_markers,
)

WEATHER = '{"city": "Paris", "days": 3}'
HERMES_TEXT = ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": ' + WEATHER
               + '}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": '
               '{"zone": "CET"}}\n</tool_call>')
LLAMA_TEXT = ('<|python_tag|>{"name": "get_weather", "parameters": ' + WEATHER + '}; '
              '{"name": "get_time", "parameters": {"zone": "CET"}}')
MISTRAL_TEXT = ('[TOOL_CALLS] [{"name": "get_weather", "arguments": ' + WEATHER
                + ', "id": "a1B2c3D4e"}, {"name": "get_time", "arguments": {"zone": "CET"}, '
                '"id": "f5G6h7I8j"}]')
BOTH = [("get_weather", WEATHER), ("get_time", '{"zone": "CET"}')]


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("parsers") / "tiny", template=HERMES_THINK,
                      added_tokens=("<tool_call>", "</tool_call>", "</think>"))


def split(text, fmt=None, thinking=None, step=None):
    """The message a reply gives, fed whole or `step` characters at a time."""
    s = ReplySplitter(thinking, fmt)
    pieces = []
    for i in range(0, len(text), step or len(text) or 1):
        pieces += s.feed(text[i:i + (step or len(text))])
    return assemble(pieces + s.finish())


def calls(parsed):
    return [(c["function"]["name"], c["function"]["arguments"]) for c in parsed.tool_calls]


@pytest.mark.parametrize(("fmt", "text", "content"), [
    (HERMES, HERMES_TEXT, "Let me check.\n"), (LLAMA3_JSON, LLAMA_TEXT, None),
    (LLAMA3_JSON, LLAMA_TEXT.removeprefix("<|python_tag|>"), None),
    (MISTRAL, MISTRAL_TEXT, None), (MISTRAL, "Sure. " + MISTRAL_TEXT, "Sure. ")])
def test_each_family_s_calls_are_read_with_their_arguments_as_written(fmt, text, content):
    for step in (None, 1, 3):
        parsed = split(text, fmt, step=step)
        assert calls(parsed) == BOTH and parsed.content == content
        assert all(c["id"].startswith("call_") and c["type"] == "function"
                   for c in parsed.tool_calls)


def test_text_after_a_call_is_content_without_the_blank_lines_before_it():
    for step in (None, 1):
        parsed = split(HERMES_TEXT + "\n\nI will wait for them.", HERMES, step=step)
        assert parsed.content == "Let me check.\nI will wait for them." and calls(parsed) == BOTH


def test_each_call_gets_its_own_id():
    parsed = split(HERMES_TEXT, HERMES)
    assert len({c["id"] for c in parsed.tool_calls}) == 2


@pytest.mark.parametrize("fmt", [HERMES, LLAMA3_JSON, MISTRAL])
def test_a_reply_without_calls_is_content_unchanged(fmt):
    text = "Paris is sunny {today}; no [tools] or <tags> needed."
    for step in (None, 1):
        parsed = split(text, fmt, step=step)
        assert parsed.content == text and parsed.tool_calls == []


def test_llama3_json_reads_calls_only_at_the_start_of_the_reply():
    text = 'Here: {"name": "get_time", "parameters": {}}'
    assert split(text, LLAMA3_JSON).content == text


def test_text_that_may_start_a_marker_is_held_back_until_it_cannot():
    s = ReplySplitter(None, HERMES)
    assert [p.text for p in s.feed("Hello <tool")] == ["Hello "]
    assert [p.text for p in s.feed("s>")] == ["<tools>"]
    assert [p.text for p in s.feed(" <tool_c")] == [" "]
    assert [p.text for p in s.finish()] == ["<tool_c"]


def test_a_call_written_arguments_first_is_still_read():
    text = '<tool_call>\n{"arguments": {"zone": "CET"}, "name": "get_time"}\n</tool_call>'
    for step in (None, 1):
        assert calls(split(text, HERMES, step=step)) == [("get_time", '{"zone": "CET"}')]


def test_a_call_cut_before_its_arguments_is_left_as_content():
    text = 'Ok <tool_call>\n{"name": "get_ti'
    parsed = split(text, HERMES, step=1)
    assert parsed.content == text and parsed.tool_calls == []


def test_a_call_cut_inside_its_arguments_keeps_what_was_written():
    parsed = split('<tool_call>\n{"name": "get_time", "arguments": {"zone": "C', HERMES, step=2)
    assert calls(parsed) == [("get_time", '{"zone": "C')]


@pytest.mark.parametrize(("text", "thinking", "reasoning", "content"), [
    ("<think>\nsum it up\n</think>\n\nIt is 4.", False, "\nsum it up\n", "It is 4."),
    ("sum it up\n</think>\n\nIt is 4.", True, "sum it up\n", "It is 4."),
    ("no thought, 2 < 3", False, None, "no thought, 2 < 3"),
    ("still thinking </thi", True, "still thinking </thi", ""),
    ("  <think>a</think>b", False, "a", "b"),
])
def test_reasoning_inside_think_is_split_from_the_answer(text, thinking, reasoning, content):
    for step in (None, 1):
        parsed = split(text, thinking=thinking, step=step)
        assert (parsed.reasoning, parsed.content) == (reasoning, content)


def test_reasoning_comes_first_then_the_answer_s_calls():
    text = "I need the weather.</think>\n\n" + HERMES_TEXT
    for step in (None, 1):
        parsed = split(text, HERMES, thinking=True, step=step)
        assert parsed.reasoning == "I need the weather."
        assert parsed.content == "Let me check.\n" and calls(parsed) == BOTH


def test_markers_that_are_special_tokens_are_put_back_where_they_were(tiny_path):
    """Mistral's [TOOL_CALLS] is a special token, which the engine's decoding drops."""
    tok = AutoTokenizer.from_pretrained(str(tiny_path))
    tok.add_special_tokens({"additional_special_tokens": ["[TOOL_CALLS]"]})
    mark = tok.convert_tokens_to_ids("[TOOL_CALLS]")
    ids = [*tok("Sure. ")["input_ids"], mark,
           *tok(MISTRAL_TEXT.removeprefix("[TOOL_CALLS]"))["input_ids"]]

    def decode(part):
        return tok.decode(part, skip_special_tokens=True)

    assert "[TOOL_CALLS]" not in decode(ids)
    whole = restore_markers(decode(ids), ids, {mark: "[TOOL_CALLS]"}, decode)
    assert whole == "Sure. " + MISTRAL_TEXT
    # one event per token, as the engine sends them
    pieces = [restore_markers(decode(ids[:k + 1])[len(decode(ids[:k])):], ids[k:k + 1],
                              {mark: "[TOOL_CALLS]"}, decode) for k in range(len(ids))]
    assert "".join(pieces) == whole
    assert calls(split(whole, MISTRAL)) == BOTH


def test_the_family_and_the_thinking_are_read_from_the_template():
    assert detect_format(HERMES_THINK) is HERMES
    assert detect_format(LLAMA31_JSON) is LLAMA3_JSON
    assert detect_format(MISTRAL_TOOLS) is MISTRAL
    assert detect_format(THINK_CHATML) is None
    assert template_thinks(HERMES_THINK) and template_thinks(THINK_CHATML)
    assert not template_thinks(LLAMA31_JSON)


# -- grammars -------------------------------------------------------------------------------------

SCHEMA = {"type": "object", "additionalProperties": False, "required": ["city", "days"],
          "properties": {"city": {"enum": ["Paris", "Lima"]},
                         "days": {"type": "integer", "minimum": 1, "maximum": 7}}}
FUNCTIONS = [FunctionSchema("get_weather", SCHEMA),
             FunctionSchema("get_time", {"type": "object"})]


@pytest.fixture(scope="module")
def grammar_tok(tiny_path):
    tok = AutoTokenizer.from_pretrained(str(tiny_path))
    return tok, GrammarTokenizer(tok, len(tok), {tok.eos_token_id})


def markers(grammar_tok):
    """The markers the tokenizer holds as one token (as the server passes them)."""
    added = grammar_tok[0].get_added_vocab()
    return {m: added[m] for m in ("<tool_call>", "</tool_call>", "</think>")}


def accepts(grammar_tok, lark, text):
    """The grammar takes `text` (as the tokenizer encodes it) and may end there."""
    tok, gt = grammar_tok
    m = llguidance.LLMatcher(gt.ll, compile_lark(gt, lark))
    return all(m.consume_token(t) for t in tok(text)["input_ids"]) and m.is_accepting()


def call_text(fmt, arguments):
    call = {"name": "get_weather", fmt.args_key: arguments}
    head = json.dumps(call, separators=(", ", ": "))
    return {"hermes": f"<tool_call>\n{head}\n</tool_call>", "llama3_json": head,
            "mistral": f"[TOOL_CALLS][{head}]"}[fmt.name]


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_a_required_call_must_follow_its_schema(grammar_tok, name):
    fmt = FORMATS[name]
    lark = tool_lark(fmt, FUNCTIONS, required=True, parallel=False, thinking=False,
                     marker_ids=markers(grammar_tok))
    assert accepts(grammar_tok, lark, call_text(fmt, {"city": "Lima", "days": 7}))
    assert not accepts(grammar_tok, lark, call_text(fmt, {"city": "Rome", "days": 7}))
    assert not accepts(grammar_tok, lark, call_text(fmt, {"city": "Lima", "days": 8}))
    assert not accepts(grammar_tok, lark, "Sure. " + call_text(fmt, {"city": "Lima", "days": 1}))


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_auto_lets_text_through_and_holds_a_started_call_to_its_schema(grammar_tok, name):
    fmt = FORMATS[name]
    lark = tool_lark(fmt, FUNCTIONS, required=False, parallel=True, thinking=False,
                     marker_ids=markers(grammar_tok))
    assert accepts(grammar_tok, lark, "Paris is sunny.")
    assert accepts(grammar_tok, lark, call_text(fmt, {"city": "Paris", "days": 2}))
    assert not accepts(grammar_tok, lark, call_text(fmt, {"city": "Paris", "days": 0}))


def test_a_required_call_after_thinking_may_reason_first(grammar_tok):
    lark = tool_lark(HERMES, FUNCTIONS, required=True, parallel=False, thinking=True,
                     marker_ids=markers(grammar_tok))
    call = call_text(HERMES, {"city": "Paris", "days": 2})
    assert accepts(grammar_tok, lark, "Rain? Check.</think>\n\n" + call)
    assert not accepts(grammar_tok, lark, "Rain? Check.</think>\n\n" + call.replace("2", "9"))


def test_a_response_format_after_thinking_reasons_then_answers_in_the_schema(grammar_tok):
    lark = json_after_thinking(SCHEMA, markers(grammar_tok))
    assert accepts(grammar_tok, lark, 'Hmm.</think>\n\n{"city":"Lima","days":5}')
    assert not accepts(grammar_tok, lark, 'Hmm.</think>\n\n{"city":"Oslo","days":5}')
    assert not accepts(grammar_tok, lark, '{"city":"Lima","days":5}')
