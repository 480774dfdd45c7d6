"""Tool calling through `seed serve` as the official `openai` client sees it: one real server of a
tiny random-weight model whose chat template is Qwen3's layout (helpers.models.HERMES_THINK).

The model's words are noise, so what is asserted is what the server guarantees whatever it
samples: calls forced by `required` or a named function parse and follow their schemas, streamed
pieces add up to the reply sent whole, a replayed history renders as the template renders it.
"""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import httpx
import jsonschema_rs
import openai
import pytest
from pydantic import BaseModel, Field
from transformers import AutoTokenizer

from helpers.models import CORPUS, HERMES_THINK, tiny_model
from helpers.serve import running_server

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city over the next days.",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["city", "days"],
                   "properties": {"city": {"enum": ["Paris", "Lima"]},
                                  "days": {"type": "integer", "minimum": 1, "maximum": 7}}}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {
        "type": "object", "additionalProperties": False, "required": ["zone"],
        "properties": {"zone": {"type": "string", "pattern": "^[A-Z]{3}$"}}}}}
TOOLS = [WEATHER, TIME]
SCHEMAS = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]
NO_THINK = {"chat_template_kwargs": {"enable_thinking": False}}
# the formats the model sees, so its tokenizer spells them in few tokens
TEXTS = [*CORPUS, HERMES_THINK, json.dumps(TOOLS),
         '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n'
         '</tool_call>', '{"name": "get_time", "arguments": {"zone": "UTC"}}']


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("tools") / "tiny", template=HERMES_THINK,
                      texts=TEXTS, vocab=1000, context=2048,
                      added_tokens=("<tool_call>", "</tool_call>", "<think>", "</think>"))


@pytest.fixture(scope="module")
def url(model_dir):
    # the parsers named, not read from the template; reasoning is left in the content (the
    # reasoning split has its own tests, test_serve_reasoning.py)
    with running_server(str(model_dir), "--tool-parser", "hermes",
                        "--reasoning-parser", "none") as url:
        yield url


@pytest.fixture()
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)


def check_call(call, names=tuple(SCHEMAS)):
    """A call in OpenAI's shape whose arguments parse and follow its function's schema."""
    assert call.type == "function" and call.id.startswith("call_") and len(call.id) > 10
    assert call.function.name in names
    arguments = json.loads(call.function.arguments)
    assert jsonschema_rs.validator_for(SCHEMAS[call.function.name]).is_valid(arguments), arguments
    return arguments


def streamed(client, **kw):
    """A streamed reply's chunks, and its calls put together from their deltas."""
    chunks = list(client.chat.completions.create(model="tiny", stream=True, **kw))
    calls: dict[int, dict] = {}
    for chunk in chunks:
        for delta in chunk.choices[0].delta.tool_calls or [] if chunk.choices else []:
            if delta.index not in calls:
                assert delta.id and delta.type == "function" and delta.function.name
                assert delta.function.arguments == ""  # the head names the call, no arguments
                calls[delta.index] = {"id": delta.id, "name": delta.function.name,
                                      "arguments": ""}
            else:
                assert delta.id is None and delta.function.name is None
                calls[delta.index]["arguments"] += delta.function.arguments
    return chunks, [calls[i] for i in sorted(calls)]


def test_required_calls_parse_and_follow_their_schemas_100_of_100(url):
    """100 sampled replies of a random model, all forced into one valid call each."""
    async def ask_all():
        aclient = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        return await asyncio.gather(*[aclient.chat.completions.create(
            model="tiny", messages=ASK, tools=TOOLS, tool_choice="required",
            parallel_tool_calls=False, n=n, seed=k, temperature=1.0, max_tokens=80,
            extra_body=NO_THINK) for k, n in enumerate([16] * 6 + [4])])

    choices = [c for r in asyncio.run(ask_all()) for c in r.choices]
    assert len(choices) == 100
    for c in choices:
        assert c.finish_reason == "tool_calls" and c.message.content is None
        assert len(c.message.tool_calls) == 1
        check_call(c.message.tool_calls[0])


def test_a_named_function_is_the_one_called_and_its_stream_adds_up(client):
    kw = {"messages": ASK, "tools": TOOLS, "max_tokens": 60, "temperature": 0,
          "tool_choice": {"type": "function", "function": {"name": "get_time"}},
          "extra_body": NO_THINK}
    whole = client.chat.completions.create(model="tiny", **kw).choices[0]
    assert whole.finish_reason == "tool_calls"
    [call] = whole.message.tool_calls
    check_call(call, names=("get_time",))
    chunks, calls = streamed(client, **kw)
    assert [(c["name"], c["arguments"]) for c in calls] == [
        ("get_time", call.function.arguments)]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    assert not any(c.choices[0].delta.content for c in chunks if c.choices)


def test_required_with_parallel_calls_streams_each_call_by_its_index(client):
    kw = {"messages": ASK, "tools": TOOLS, "tool_choice": "required", "max_tokens": 120,
          "temperature": 1.0, "seed": 3, "extra_body": NO_THINK}
    whole = client.chat.completions.create(model="tiny", **kw).choices[0]
    chunks, calls = streamed(client, **kw)
    assert [(c.function.name, c.function.arguments) for c in whole.message.tool_calls] == [
        (c["name"], c["arguments"]) for c in calls]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.finish_reason
    assert len(calls) >= 1
    for c in whole.message.tool_calls[:-1]:  # the last may be cut by max_tokens
        check_call(c)


def test_auto_completes_a_call_the_model_starts_under_its_schema(client, model_dir):
    """A bias makes the model open a call at once; the grammar takes it from there."""
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    bias = {str(tok.convert_tokens_to_ids("<tool_call>")): 100}
    kw = {"messages": ASK, "tools": TOOLS, "tool_choice": "auto", "parallel_tool_calls": False,
          "max_tokens": 60, "temperature": 0, "logit_bias": bias, "extra_body": NO_THINK}
    whole = client.chat.completions.create(model="tiny", **kw).choices[0]
    assert whole.finish_reason == "tool_calls" and whole.message.content is None
    [call] = whole.message.tool_calls
    check_call(call)
    _, calls = streamed(client, **kw)
    assert [(c["name"], c["arguments"]) for c in calls] == [
        (call.function.name, call.function.arguments)]


def test_tool_choice_none_never_parses_calls(client, model_dir):
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    bias = {str(tok.convert_tokens_to_ids("<tool_call>")): 100}
    r = client.chat.completions.create(model="tiny", messages=ASK, tools=TOOLS,
                                       tool_choice="none", max_tokens=3, temperature=0,
                                       logit_bias=bias, extra_body=NO_THINK).choices[0]
    assert r.message.tool_calls is None and r.finish_reason == "length"
    assert r.message.content == "<tool_call>" * 3


def test_a_tool_round_trip_renders_the_history_as_the_template_does(client, model_dir):
    first = client.chat.completions.create(
        model="tiny", messages=ASK, tools=TOOLS, tool_choice="required", max_tokens=60,
        temperature=0, parallel_tool_calls=False, extra_body=NO_THINK).choices[0].message
    [call] = first.tool_calls
    history = [*ASK, first, {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}]
    final = client.chat.completions.create(model="tiny", messages=history, tools=TOOLS,
                                           max_tokens=6, temperature=0, extra_body=NO_THINK)
    assert final.choices[0].finish_reason in ("stop", "length", "tool_calls")
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    rendered = tok.apply_chat_template(
        [*ASK, {"role": "assistant", "content": "", "tool_calls": [
            {"id": call.id, "type": "function", "function": {
                "name": call.function.name, "arguments": json.loads(call.function.arguments)}}]},
         {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"}],
        tools=TOOLS, add_generation_prompt=True, enable_thinking=False, tokenize=False)
    assert "<tool_response>\nsunny, 21 C\n</tool_response>" in rendered
    assert call.function.arguments in rendered
    assert final.usage.prompt_tokens == len(tok(rendered, add_special_tokens=False)["input_ids"])


def test_with_the_reasoning_parser_off_the_thought_stays_in_the_content(client, url, model_dir):
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    prompt = tok.apply_chat_template(ASK, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<think>\n")  # the template opened the reasoning
    raw = httpx.post(url + "/v1/completions", timeout=60, json={
        "model": "tiny", "prompt": prompt, "max_tokens": 8, "temperature": 0}).json()
    r = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=8, temperature=0)
    assert r.choices[0].message.content == raw["choices"][0]["text"]
    assert "reasoning_content" not in (r.choices[0].message.model_extra or {})
    assert r.usage.completion_tokens_details is None


class Forecast(BaseModel):
    city: Literal["Paris", "Lima"]
    days: int = Field(ge=1, le=7)


def test_parse_with_a_pydantic_model_returns_an_instance(client):
    r = client.chat.completions.parse(model="tiny", messages=ASK, response_format=Forecast,
                                      max_tokens=40, temperature=0, extra_body=NO_THINK)
    parsed = r.choices[0].message.parsed
    assert isinstance(parsed, Forecast) and 1 <= parsed.days <= 7


def test_parse_with_a_pydantic_function_tool_returns_parsed_arguments(client):
    r = client.chat.completions.parse(
        model="tiny", messages=ASK, tools=[openai.pydantic_function_tool(Forecast)],
        tool_choice="required", parallel_tool_calls=False, max_tokens=40, temperature=0,
        extra_body=NO_THINK)
    [call] = r.choices[0].message.tool_calls
    assert call.function.name == "Forecast"
    assert isinstance(call.function.parsed_arguments, Forecast)


def test_the_stream_helper_gives_the_parsed_final_completion(client):
    with client.chat.completions.stream(model="tiny", messages=ASK, response_format=Forecast,
                                        max_tokens=40, temperature=0,
                                        extra_body=NO_THINK) as stream:
        final = stream.get_final_completion()
    assert isinstance(final.choices[0].message.parsed, Forecast)


def test_a_replayed_assistant_message_with_null_extras_is_accepted(url):
    history = [*ASK, {"role": "assistant", "content": None, "refusal": None, "annotations": [],
                      "audio": None, "function_call": None, "reasoning_content": None,
                      "tool_calls": [{"id": "call_1", "type": "function", "function": {
                          "name": "get_weather", "arguments": '{"city": "Lima", "days": 2}'}}]},
               {"role": "tool", "tool_call_id": "call_1", "content": "rain"}]
    r = httpx.post(url + "/v1/chat/completions", timeout=60, json={
        "model": "tiny", "messages": history, "tools": TOOLS, "max_tokens": 2})
    assert r.status_code == 200, r.text


CALL = {"id": "call_1", "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Lima", "days": 2}'}}


@pytest.mark.parametrize(("body", "param"), [
    ({"messages": ASK, "tool_choice": "required"}, "tool_choice"),
    ({"messages": ASK, "tools": TOOLS,
      "tool_choice": {"type": "function", "function": {"name": "get_news"}}}, "tool_choice"),
    ({"messages": [*ASK, {"role": "assistant", "content": None, "tool_calls": [
        {**CALL, "function": {"name": "get_weather", "arguments": "city=Lima"}}]}]},
     "messages.1.tool_calls.0"),
    ({"messages": [*ASK, {"role": "assistant", "content": "no", "refusal": "I refuse"}]},
     "messages.1.refusal"),
    ({"messages": ASK, "chat_template_kwargs": {"add_generation_prompt": False}},
     "chat_template_kwargs.add_generation_prompt"),
    ({"messages": ASK, "chat_template_kwargs": {"reasoning_effort": "high"}},
     "chat_template_kwargs.reasoning_effort"),
    ({"messages": ASK, "tools": TOOLS, "response_format": {"type": "json_object"}},
     "response_format"),
    ({"messages": ASK, "tools": [WEATHER, {"type": "custom", "custom": {"name": "sql"}}]},
     "tools.1"),
    ({"messages": ASK, "tools": TOOLS, "tool_choice": {"type": "allowed_tools", "mode": "auto"}},
     "tool_choice"),
])
def test_a_tool_request_the_server_cannot_honour_is_a_400_naming_the_field(url, body, param):
    r = httpx.post(url + "/v1/chat/completions", timeout=60,
                   json={"model": "tiny", "max_tokens": 2, **body})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param
