"""`/v1/responses` as the official `openai` client sees it: a real `seed serve`, a tiny model.

The Responses API is answered over the chat path, so with greedy decoding a response must say
exactly what the chat completion of the same messages says, count the same tokens, and stream
events that add up to the same text in OpenAI's order (the client's own stream helper checks the
sequence as it accumulates it). What Seed cannot honour is a 400 naming the field.
"""

from __future__ import annotations

import json
from typing import Literal

import httpx
import openai
import pytest
from pydantic import BaseModel, Field

from helpers.models import tiny_model
from helpers.serve import running_server

KEY = "sk-test-responses"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = tiny_model(tmp_path_factory.mktemp("responses") / "tiny")
    with running_server(str(model), "--api-key", KEY) as url:
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
