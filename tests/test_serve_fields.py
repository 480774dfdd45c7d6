"""No field is silently ignored: what `seed serve` does with each field of OpenAI's requests.

Each field of the chat-completions and completions requests is honoured, accepted as a no-op (the
answer is the same as without it), or a 400 in OpenAI's shape whose `param` is the field and whose
message names it; a field OpenAI's schema does not have at all is a 400 too. In `--upstream` mode
the front passes every field on as sent: the upstream judges it. One real server of a tiny model,
the official `openai` client.
"""

from __future__ import annotations

import openai
import pytest

from helpers.serve import running_server

ASK = [{"role": "user", "content": "Hello! How can I help you today?"}]

# Each field Seed refuses, with a value a client would send, and the param the 400 names.
CHAT_REFUSED = [
    ("audio", {"audio": {"voice": "alloy", "format": "wav"}}),
    ("modalities", {"modalities": ["text", "audio"]}),
    ("prediction", {"prediction": {"type": "content", "content": "Hello! How can I help?"}}),
    ("web_search_options", {"web_search_options": {"search_context_size": "low"}}),
    ("functions", {"functions": [{"name": "get_weather",
                                  "parameters": {"type": "object", "properties": {}}}]}),
    ("function_call", {"function_call": "auto"}),
    ("store", {"store": True}),
    ("service_tier", {"service_tier": "flex"}),
    ("service_tier", {"service_tier": "priority"}),
    ("reasoning_effort", {"reasoning_effort": "low"}),
    ("verbosity", {"verbosity": "low"}),
    ("moderation", {"moderation": {"model": "omni-moderation-latest"}}),
    ("top_logprobs", {"top_logprobs": 2}),  # without logprobs
    ("stream_options.include_obfuscation",
     {"stream": True, "stream_options": {"include_obfuscation": True}}),
    ("frobnicate", {"extra_body": {"frobnicate": 1}}),  # not in OpenAI's schema at all
    ("ignore_eos", {"extra_body": {"ignore_eos": True}}),  # vLLM's, not Seed's
    ("messages.0.frobnicate", {"messages": [{**ASK[0], "frobnicate": 1}]}),
    ("stream_options.frobnicate", {"stream": True, "stream_options": {"frobnicate": True}}),
]
COMPLETION_REFUSED = [
    ("suffix", {"suffix": " and goodbye."}),
    ("best_of", {"best_of": 3}),
    ("frobnicate", {"extra_body": {"frobnicate": 1}}),
    ("store", {"extra_body": {"store": False}}),  # a chat field, not a completions one
]
# Each field Seed takes as a no-op, at a value a client would send.
CHAT_NO_OPS = [
    {"user": "user-1234"},
    {"metadata": {"run": "nightly", "suite": "fields"}},
    {"store": False},
    {"service_tier": "auto"},
    {"service_tier": "default"},
    {"modalities": ["text"]},
    {"prompt_cache_key": "session-42"},
    {"prompt_cache_retention": "24h"},
    {"prompt_cache_options": {"mode": "implicit"}},
    {"safety_identifier": "hash-of-user-1234"},
    {"store": None, "metadata": None},
]
COMPLETION_NO_OPS = [{"user": "user-1234"}, {"suffix": ""}, {"best_of": 1}, {"best_of": 2, "n": 2}]


@pytest.fixture(scope="module")
def url(tiny_server):
    return tiny_server


@pytest.fixture(scope="module")
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)


def chat(client, **kw):
    kw.setdefault("messages", ASK)
    return client.chat.completions.create(model="tiny", temperature=0, max_tokens=6, **kw)


def complete(client, **kw):
    return client.completions.create(model="tiny", prompt="Hello! How", temperature=0,
                                     max_tokens=6, **kw)


@pytest.mark.parametrize(("param", "fields"), CHAT_REFUSED, ids=[f"{p}-{i}" for i, (p, _) in
                                                                  enumerate(CHAT_REFUSED)])
def test_a_chat_field_seed_does_not_honour_is_a_400_naming_it(client, param, fields):
    with pytest.raises(openai.BadRequestError) as e:
        chat(client, **fields)
    assert e.value.status_code == 400
    assert e.value.body["param"] == param
    assert f"`{param}" in e.value.body["message"]
    assert e.value.body["type"] == "invalid_request_error"


@pytest.mark.parametrize(("param", "fields"), COMPLETION_REFUSED,
                         ids=[p for p, _ in COMPLETION_REFUSED])
def test_a_completions_field_seed_does_not_honour_is_a_400_naming_it(client, param, fields):
    with pytest.raises(openai.BadRequestError) as e:
        complete(client, **fields)
    assert e.value.body["param"] == param
    assert f"`{param}" in e.value.body["message"]


def test_a_no_op_chat_field_leaves_the_answer_as_it_was(client):
    plain = chat(client).choices[0].message.content
    for fields in CHAT_NO_OPS:
        assert chat(client, **fields).choices[0].message.content == plain, fields
    streamed = chat(client, stream=True, stream_options={"include_usage": True,
                                                         "include_obfuscation": False})
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == plain


def test_a_no_op_completions_field_leaves_the_answer_as_it_was(client):
    plain = complete(client).choices[0].text
    for fields in COMPLETION_NO_OPS:
        r = complete(client, **fields)
        assert [c.text for c in r.choices] == [plain] * fields.get("n", 1), fields


def test_upstream_mode_passes_an_unknown_field_on_for_the_upstream_to_judge(url):
    """The front keeps every field (its schemas hold what they do not declare): the upstream, a
    local Seed, refuses the unknown one by name and answers the no-op as it answers alone."""
    with running_server("--upstream", url) as front:
        through = openai.OpenAI(base_url=front + "/v1", api_key="none", max_retries=0)
        with pytest.raises(openai.BadRequestError) as e:
            chat(through, extra_body={"frobnicate": {"depth": [1, 2]}})
        assert e.value.body["param"] == "frobnicate"
        direct = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        assert chat(through, metadata={"run": "nightly"}).choices[0].message.content == \
            chat(direct).choices[0].message.content
