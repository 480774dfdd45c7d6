"""A thinking model's reasoning through `seed serve`, as the official `openai` client reads it: one
real server of a tiny random-weight model whose template opens `<think>` in the generation prompt
(DeepSeek-R1's, helpers.models.THINK_CHATML), so every reply starts inside its reasoning.

The server's split is checked against the raw text the same greedy model writes for the same
prompt through /v1/completions (no template, no split): reasoning is that text up to `</think>`,
content the rest.
"""

from __future__ import annotations

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from helpers.models import THINK_CHATML, tiny_model
from helpers.serve import running_server

ASK = [{"role": "user", "content": "Hello! How can I help you today?"}]
TOOL = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("think") / "tiny", template=THINK_CHATML,
                      added_tokens=("<think>", "</think>"))


@pytest.fixture(scope="module")
def url(model_dir):
    with running_server(str(model_dir)) as url:
        yield url


@pytest.fixture(scope="module")
def tok(model_dir):
    return AutoTokenizer.from_pretrained(str(model_dir))


@pytest.fixture()
def client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)


def raw_text(url, tok, **kw):
    """What the model writes for ASK's rendered prompt, unsplit."""
    prompt = tok.apply_chat_template(ASK, add_generation_prompt=True, tokenize=False)
    assert prompt.endswith("<think>\n")
    r = httpx.post(url + "/v1/completions", timeout=60, json={
        "model": "tiny", "prompt": prompt, "temperature": 0, **kw})
    return r.json()["choices"][0]["text"]


def test_a_reply_cut_inside_its_reasoning_is_all_reasoning(client, url, tok):
    raw = raw_text(url, tok, max_tokens=12)
    assert "</think>" not in raw  # the random model never closes it in 12 tokens
    r = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=12, temperature=0)
    message = r.choices[0].message
    assert message.content == ""
    assert message.model_extra["reasoning_content"] == message.model_extra["reasoning"] == raw
    assert r.usage.completion_tokens_details.reasoning_tokens == r.usage.completion_tokens


def test_streamed_reasoning_deltas_add_up_to_the_whole_reply(client, url, tok):
    raw = raw_text(url, tok, max_tokens=12)
    chunks = list(client.chat.completions.create(
        model="tiny", messages=ASK, max_tokens=12, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    thought = [d.model_extra.get("reasoning_content") for d in deltas]
    assert "".join(t for t in thought if t) == raw
    assert all(d.model_extra.get("reasoning") == d.model_extra.get("reasoning_content")
               for d in deltas)
    assert not any(d.content for d in deltas)
    usage = chunks[-1].usage
    assert usage.completion_tokens_details.reasoning_tokens == usage.completion_tokens


def test_text_after_think_closes_is_the_content(client, url, tok):
    """A bias makes the model close its reasoning at once: no reasoning, the rest content."""
    bias = {str(tok.convert_tokens_to_ids("</think>")): 100}
    raw = raw_text(url, tok, max_tokens=6, logit_bias=bias)
    assert raw.startswith("</think>")
    for stream in (False, True):
        r = client.chat.completions.create(model="tiny", messages=ASK, max_tokens=6,
                                           temperature=0, logit_bias=bias, stream=stream,
                                           stream_options={"include_usage": True} if stream
                                           else None)
        if stream:
            chunks = list(r)
            deltas = [c.choices[0].delta for c in chunks if c.choices]
            content = "".join(d.content or "" for d in deltas)
            assert not any(d.model_extra.get("reasoning_content") for d in deltas)
            usage = chunks[-1].usage
        else:
            content, usage = r.choices[0].message.content, r.usage
            assert r.choices[0].message.model_extra["reasoning_content"] is None
        assert content == raw[len("</think>"):].lstrip()
        assert usage.completion_tokens_details.reasoning_tokens == 1  # the closing token


def test_tools_for_a_template_that_cannot_render_them_are_a_400(url):
    r = httpx.post(url + "/v1/chat/completions", timeout=60, json={
        "model": "tiny", "messages": ASK, "tools": [TOOL], "max_tokens": 2})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "tools"
    assert "does not render tools" in r.json()["error"]["message"]
