"""`/v1/responses` as the official `openai` client sees it, and `--upstream` passing it through.

One real `seed serve` of a tiny model answers; a second, `seed serve --upstream`, stands in front of
it for the pass-through tests at the end (one model loaded for both: a model server is the slow
part of a test's start).

The Responses API is answered over the chat path, so with greedy decoding a response must say
exactly what the chat completion of the same messages says (text or function call), count the
same tokens, and stream events that add up to the same thing in OpenAI's order (the client's own
stream helper checks the sequence as it accumulates it). The model's template is Llama 3.1's JSON
tool format (no thinking); how a chat's reasoning becomes a reasoning item is shown on the chunks
and completions themselves. What Seed cannot honour is a 400 naming the field.

In upstream mode everything is forwarded unchanged: the front must answer what the back answers
to the same greedy questions (ids and times aside): tool calls with `tool_choice: "required"`,
streamed or not, /v1/responses, /tokenize and /detokenize; where a stream is cut into pieces
depends on how fast its reader reads, so streams are compared by what their pieces add up to. A
field the back refuses is refused by the back, not swallowed by the front.
"""

from __future__ import annotations

import json
from typing import Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from helpers.models import LLAMA31_JSON, tiny_model
from helpers.serve import running_server
from seed.serve import responses, responses_format
from seed.serve.responses_stream import ResponseEvents

KEY = "sk-test-responses"
FRONT_KEY = "sk-test-front"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = tiny_model(tmp_path_factory.mktemp("responses") / "tiny", template=LLAMA31_JSON,
                       context=2048)
    with running_server(str(model), "--api-key", KEY) as url:
        yield url


@pytest.fixture(scope="module")
def front(server):
    """`seed serve --upstream` in front of `server`, with keys of its own (the back's key is
    Seed's upstream key)."""
    with running_server("--upstream", server, "--api-key", FRONT_KEY,
                        extra_env={"SEED_UPSTREAM_API_KEY": KEY}) as url:
        yield url


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0)


def chat(client, messages, max_tokens=8):
    return client.chat.completions.create(model="tiny", messages=messages, temperature=0,
                                          max_tokens=max_tokens)


def test_a_response_says_what_the_chat_completion_of_its_messages_says(client):
    r = client.responses.create(model="tiny", input="Hello! How can I help you today?",
                                instructions="You are brief.", max_output_tokens=8,
                                temperature=0, metadata={"run": "a"})
    c = chat(client, [{"role": "system", "content": "You are brief."},
                      {"role": "user", "content": "Hello! How can I help you today?"}])
    assert r.object == "response" and r.id.startswith("resp_") and r.model == "tiny"
    assert r.output_text == c.choices[0].message.content
    [message] = r.output
    assert message.type == "message" and message.role == "assistant"
    assert r.usage.input_tokens == c.usage.prompt_tokens
    assert r.usage.output_tokens == c.usage.completion_tokens
    assert r.usage.total_tokens == r.usage.input_tokens + r.usage.output_tokens
    assert r.usage.input_tokens_details.cached_tokens == 0
    assert r.usage.output_tokens_details.reasoning_tokens == 0
    if c.choices[0].finish_reason == "length":
        assert r.status == "incomplete" and r.incomplete_details.reason == "max_output_tokens"
        assert message.status == "incomplete"
    else:
        assert r.status == "completed" and r.incomplete_details is None
    assert (r.instructions, r.max_output_tokens, r.temperature, r.metadata) == (
        "You are brief.", 8, 0.0, {"run": "a"})
    assert (r.tool_choice, r.tools, r.parallel_tool_calls, r.text.format.type) == (
        "auto", [], True, "text")


def test_input_items_are_the_conversation(client):
    items = [
        {"role": "developer", "content": "Answer in one word."},
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "Hi "},
                                                        {"type": "input_text", "text": "there"}]},
        # an output message of an earlier response, sent back as the client got it
        {"type": "message", "id": "msg_1", "role": "assistant", "status": "completed",
         "content": [{"type": "output_text", "text": "Hello.", "annotations": []}]},
        {"role": "user", "content": "And now?"},
    ]
    r = client.responses.create(model="tiny", input=items, max_output_tokens=6, temperature=0)
    c = chat(client, [{"role": "developer", "content": "Answer in one word."},
                      {"role": "user", "content": "Hi there"},
                      {"role": "assistant", "content": "Hello."},
                      {"role": "user", "content": "And now?"}], max_tokens=6)
    assert r.usage.input_tokens == c.usage.prompt_tokens
    assert r.output_text == c.choices[0].message.content


def test_streamed_events_come_in_openais_order_and_add_up_to_the_response(client):
    kw = {"model": "tiny", "input": "Tell me about the fox.", "max_output_tokens": 10,
          "temperature": 0}
    whole = client.responses.create(**kw)
    events = list(client.responses.create(stream=True, **kw))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    types = [e.type for e in events]
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert deltas
    last = "response.incomplete" if whole.status == "incomplete" else "response.completed"
    assert types == ["response.created", "response.in_progress", "response.output_item.added",
                     "response.content_part.added", *["response.output_text.delta"] * len(deltas),
                     "response.output_text.done", "response.content_part.done",
                     "response.output_item.done", last]
    text = "".join(e.delta for e in deltas)
    assert text == whole.output_text == events[-4].text
    final = events[-1].response
    assert final.output_text == text and final.status == whole.status
    assert final.id == events[0].response.id and events[0].response.status == "in_progress"
    assert final.usage.output_tokens == whole.usage.output_tokens
    assert {e.item_id for e in deltas} == {final.output[0].id}


class Verdict(BaseModel):
    verdict: Literal["A", "B"]
    score: int = Field(ge=0, le=9)  # bounded, so the constrained output always ends in time


def test_text_format_json_schema_constrains_the_output(client):
    parsed = client.responses.parse(model="tiny", input="Judge it.", text_format=Verdict,
                                    max_output_tokens=40)
    assert parsed.status == "completed"
    assert isinstance(parsed.output_parsed, Verdict)
    assert parsed.text.format.type == "json_schema"
    with client.responses.stream(model="tiny", input="Judge it.", text_format=Verdict,
                                 max_output_tokens=40) as stream:
        kinds = {e.type for e in stream}
        final = stream.get_final_response()
    assert "response.completed" in kinds
    assert isinstance(final.output_parsed, Verdict)
    assert json.loads(final.output_text) == final.output_parsed.model_dump()


@pytest.mark.parametrize(("field", "value"), [
    ("previous_response_id", "resp_123"), ("conversation", "conv_123"), ("store", True),
    ("background", True), ("reasoning", {"effort": "high"}), ("max_tool_calls", 2),
    ("include", ["message.output_text.logprobs"]), ("truncation", "auto"),
    ("prompt", {"id": "pmpt_1"}), ("top_logprobs", 3), ("service_tier", "flex"),
    ("frobnicate", 1),
])
def test_fields_a_stateless_local_server_cannot_honour_are_refused_by_name(server, field, value):
    r = httpx.post(server + "/v1/responses", headers={"Authorization": f"Bearer {KEY}"},
                   json={"model": "tiny", "input": "Hi", "max_output_tokens": 2, field: value})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["param"] == field and f"`{field}" in error["message"]


@pytest.mark.parametrize(("body", "param"), [
    ({"tools": [{"type": "web_search"}]}, "tools.0.type"),
    ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input.0.type"),
    ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]},
     "input.0.content.0.type"),
    ({"input": [{"type": "function_call_output", "output": "4"}]}, "input.0.call_id"),
    ({"input": 5}, "input"),
    ({"max_output_tokens": 0}, "max_output_tokens"),
    ({"text": {"verbosity": "low"}}, "text.verbosity"),
])
def test_what_cannot_be_translated_is_refused_by_name(server, body, param):
    r = httpx.post(server + "/v1/responses", headers={"Authorization": f"Bearer {KEY}"},
                   json={"model": "tiny", "input": "Hi", "max_output_tokens": 2, **body})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == param


def test_fields_that_change_nothing_here_are_accepted(client):
    r = client.responses.create(model="tiny", input="Hi", max_output_tokens=2, store=False,
                                user="u-1", metadata={"k": "v"}, safety_identifier="u-1",
                                prompt_cache_key="k", truncation="disabled", background=False)
    assert r.status in ("completed", "incomplete")
    assert (r.user, r.metadata, r.store if hasattr(r, "store") else False) == (
        "u-1", {"k": "v"}, False)


def test_another_model_name_is_a_404(client):
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="gpt-4o", input="Hi", max_output_tokens=2)


WEATHER = {"type": "object", "additionalProperties": False, "required": ["city", "days"],
           "properties": {"city": {"type": "string", "enum": ["Paris", "Rome"]},
                          "days": {"type": "integer", "minimum": 1, "maximum": 5}}}
TOOL = {"name": "get_weather", "description": "The weather in a city.", "parameters": WEATHER,
        "strict": True}
OTHER = {"name": "get_time", "description": "The time in a city.", "strict": True,
         "parameters": {"type": "object", "additionalProperties": False, "required": ["city"],
                        "properties": {"city": {"type": "string", "enum": ["Oslo"]}}}}
ASK = "What is the weather in Paris?"


def valid_weather(arguments: str) -> bool:
    args = json.loads(arguments)
    return set(args) == {"city", "days"} and args["city"] in ("Paris", "Rome") and (
        isinstance(args["days"], int) and 1 <= args["days"] <= 5)


def test_a_required_function_tool_is_called_as_chat_calls_it(client):
    r = client.responses.create(model="tiny", input=ASK, tools=[{"type": "function", **TOOL}],
                                tool_choice="required", temperature=0, max_output_tokens=80)
    c = client.chat.completions.create(
        model="tiny", messages=[{"role": "user", "content": ASK}], temperature=0, max_tokens=80,
        tools=[{"type": "function", "function": TOOL}], tool_choice="required")
    [call] = r.output
    assert r.status == "completed" and call.type == "function_call"
    assert call.status == "completed" and call.id.startswith("fc_")
    [expected] = c.choices[0].message.tool_calls
    assert (call.name, call.arguments, call.call_id) == (
        "get_weather", expected.function.arguments, call.call_id)
    assert call.call_id.startswith("call_")
    assert valid_weather(call.arguments)
    assert r.usage.input_tokens == c.usage.prompt_tokens
    assert r.usage.output_tokens == c.usage.completion_tokens
    assert r.tool_choice == "required" and r.tools[0].name == "get_weather"


def test_a_streamed_named_function_call_comes_in_argument_pieces(client):
    kw = {"model": "tiny", "input": ASK, "temperature": 0, "max_output_tokens": 80,
          "tools": [{"type": "function", **OTHER}, {"type": "function", **TOOL}],
          "tool_choice": {"type": "function", "name": "get_weather"}, "parallel_tool_calls": False}
    whole = client.responses.create(**kw)
    with client.responses.stream(**kw) as stream:
        events = list(stream)
        final = stream.get_final_response()
    types = [e.type for e in events]
    pieces = [e.delta for e in events if e.type == "response.function_call_arguments.delta"]
    assert types == ["response.created", "response.in_progress", "response.output_item.added",
                     *["response.function_call_arguments.delta"] * len(pieces),
                     "response.function_call_arguments.done", "response.output_item.done",
                     "response.completed"]
    added, done = events[2].item, events[-3]
    assert (added.type, added.name, added.arguments) == ("function_call", "get_weather", "")
    assert "".join(pieces) == done.arguments == final.output[0].arguments
    assert final.output[0].arguments == whole.output[0].arguments
    assert final.output[0].parsed_arguments == json.loads(whole.output[0].arguments)
    assert valid_weather(done.arguments)


def test_a_function_call_output_continues_the_conversation(client):
    tools = [{"type": "function", **TOOL}]
    first = client.responses.create(model="tiny", input=ASK, tools=tools, tool_choice="required",
                                    temperature=0, max_output_tokens=80)
    [call] = first.output
    items = [{"role": "user", "content": ASK}, call.model_dump(exclude_none=True),
             {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}]
    then = client.responses.create(model="tiny", input=items, tools=tools, temperature=0,
                                   max_output_tokens=6)
    chat = client.chat.completions.create(
        model="tiny", temperature=0, max_tokens=6, tools=[{"type": "function", "function": TOOL}],
        messages=[{"role": "user", "content": ASK},
                  {"role": "assistant", "content": None, "tool_calls": [
                      {"id": call.call_id, "type": "function",
                       "function": {"name": call.name, "arguments": call.arguments}}]},
                  {"role": "tool", "tool_call_id": call.call_id, "content": "Sunny, 21 C"}])
    assert then.usage.input_tokens == chat.usage.prompt_tokens
    said = chat.choices[0].message
    if said.tool_calls:
        assert [o.arguments for o in then.output if o.type == "function_call"] == [
            t.function.arguments for t in said.tool_calls]
    else:
        assert then.output_text == said.content


def chunk(delta, finish=None):
    return {"object": "chat.completion.chunk", "choices": [
        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}


def test_reasoning_becomes_a_reasoning_item_before_the_message():
    request = responses.ResponsesRequest(model="m", input="Hi")
    head = responses_format.response_head(request, 1.0, 1.0)
    events = ResponseEvents(head)
    out = events.start()
    for c in [chunk({"role": "assistant", "content": ""}), chunk({"reasoning_content": "Let "}),
              chunk({"reasoning": "me think."}), chunk({"content": "Hello"}),
              chunk({"content": "!"}, "stop"),
              {"object": "chat.completion.chunk", "choices": [], "usage": {
                  "prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9,
                  "completion_tokens_details": {"reasoning_tokens": 3}}}]:
        out += events.chunk(c)
    out += events.end()
    parsed = [json.loads(e.split("\ndata: ", 1)[1]) for e in out]
    assert [p["type"] for p in parsed] == [
        "response.created", "response.in_progress",
        "response.output_item.added", "response.content_part.added",
        "response.reasoning_text.delta", "response.reasoning_text.delta",
        "response.reasoning_text.done", "response.content_part.done", "response.output_item.done",
        "response.output_item.added", "response.content_part.added",
        "response.output_text.delta", "response.output_text.delta",
        "response.output_text.done", "response.content_part.done", "response.output_item.done",
        "response.completed"]
    final = openai.types.responses.Response.model_validate(parsed[-1]["response"])
    thought, message = final.output
    assert thought.type == "reasoning" and thought.content[0].text == "Let me think."
    assert message.type == "message" and final.output_text == "Hello!"
    assert final.usage.output_tokens_details.reasoning_tokens == 3
    assert [p["sequence_number"] for p in parsed] == list(range(len(parsed)))
    whole = responses_format.from_chat_completion(head, {
        "choices": [{"finish_reason": "stop", "message": {
            "role": "assistant", "content": "Hello!", "reasoning_content": "Let me think."}}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 4, "total_tokens": 9}})
    assert [(o["type"], o["content"][0]["text"]) for o in whole["output"]] == [
        ("reasoning", "Let me think."), ("message", "Hello!")]


# -- --upstream passes it all through ------------------------------------------------------------

@pytest.fixture()
def sides(server, front):
    return {"back": openai.OpenAI(base_url=server + "/v1", api_key=KEY, max_retries=0),
            "front": openai.OpenAI(base_url=front + "/v1", api_key=FRONT_KEY, max_retries=0)}


def both(sides, call):
    """What the back answers and what the front answers to the same call."""
    return call(sides["back"]), call(sides["front"])


CHAT_TOOLS = [{"type": "function", "function": TOOL}]
ASKED = [{"role": "user", "content": ASK}]


def test_upstream_mode_passes_a_required_tool_call_through(sides):
    back, front = both(sides, lambda c: c.chat.completions.create(
        model="tiny", messages=ASKED, tools=CHAT_TOOLS, tool_choice="required", temperature=0,
        parallel_tool_calls=False, max_tokens=80))
    assert back.choices[0].finish_reason == front.choices[0].finish_reason == "tool_calls"
    [b], [f] = back.choices[0].message.tool_calls, front.choices[0].message.tool_calls
    assert (f.function.name, f.function.arguments) == (b.function.name, b.function.arguments)
    assert front.usage == back.usage


def test_upstream_mode_passes_a_streamed_tool_call_through(sides):
    def call(client):
        stream = client.chat.completions.create(
            model="tiny", messages=ASKED, tools=CHAT_TOOLS, tool_choice="required",
            parallel_tool_calls=False, temperature=0, max_tokens=80, stream=True)
        pieces = [c.choices[0].delta.tool_calls[0] for c in stream
                  if c.choices and c.choices[0].delta.tool_calls]
        return pieces[0].function.name, "".join(p.function.arguments or "" for p in pieces)

    back, front = both(sides, call)
    assert front == back and back[0] == "get_weather" and valid_weather(back[1])


def test_upstream_mode_passes_responses_through(sides):
    kw = {"model": "tiny", "input": ASK, "tools": [{"type": "function", **TOOL}],
          "tool_choice": "required", "parallel_tool_calls": False, "temperature": 0,
          "max_output_tokens": 80}
    back, front = both(sides, lambda c: c.responses.create(**kw))
    assert [o.type for o in front.output] == [o.type for o in back.output] == ["function_call"]
    assert (front.output[0].name, front.output[0].arguments) == (
        back.output[0].name, back.output[0].arguments)
    assert front.usage == back.usage and front.status == back.status
    for events in both(sides, lambda c: list(c.responses.create(stream=True, **kw))):
        assert events[-1].type == "response.completed"
        assert "".join(e.delta for e in events
                       if e.type == "response.function_call_arguments.delta") == (
            back.output[0].arguments)


def test_upstream_mode_passes_tokenize_and_detokenize_through(server, front):
    def post(side, path, body):
        url, key = (server, KEY) if side == "back" else (front, FRONT_KEY)
        r = httpx.post(url + path, json=body, headers={"Authorization": f"Bearer {key}"},
                       timeout=30)
        return r.status_code, r.json()

    for body in [{"model": "tiny", "prompt": "Hello there"},
                 {"model": "tiny", "messages": ASKED, "add_generation_prompt": True}]:
        assert post("front", "/tokenize", body) == post("back", "/tokenize", body)
    _, tokens = post("back", "/tokenize", {"model": "tiny", "prompt": "Hello there"})
    detok = {"model": "tiny", "tokens": tokens["tokens"]}
    assert post("front", "/detokenize", detok) == post("back", "/detokenize", detok) == (
        200, {"prompt": "Hello there"})


def test_upstream_mode_relays_the_upstreams_refusal_of_a_field(front):
    r = httpx.post(front + "/v1/responses", headers={"Authorization": f"Bearer {FRONT_KEY}"},
                   json={"model": "tiny", "input": "Hi", "previous_response_id": "resp_1"},
                   timeout=30)
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "previous_response_id"
