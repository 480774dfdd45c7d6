"""`seed serve` as the official `openai` client sees it: a real server on a free port, a tiny model.

Greedy decoding makes outputs reproducible, so tests compare the server against itself across
modes (batched vs alone, streamed vs not, with vs without a stop string) and against the tokenizer.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import openai
import pytest
from transformers import AutoTokenizer

from helpers.cli import run_cli
from helpers.models import tiny_model
from helpers.serve import running_server, seed_env

KEY = "sk-test-serve"
AUTH = {"Authorization": f"Bearer {KEY}"}
PROMPT = [{"role": "user", "content": "Hello! How can I help you today?"}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("serve") / "tiny")


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("usage") / "usage.jsonl"
    keys = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys.write_text(f"# test keys\nsk-other\n{KEY}\n")
    with running_server(str(model_dir), "--keys-file", str(keys), "--usage-log", str(log)) as url:
        yield {"url": url, "usage_log": log}


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=KEY, max_retries=0)


def greedy(client, messages=PROMPT, **kw):
    kw.setdefault("max_tokens", 12)
    return client.chat.completions.create(model="tiny", messages=messages, temperature=0, **kw)


def test_sync_chat_counts_prompt_tokens_like_the_tokenizer(client, model_dir):
    r = greedy(client)
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    text = tok.apply_chat_template(PROMPT, add_generation_prompt=True, tokenize=False)
    assert r.object == "chat.completion" and r.model == "tiny"
    assert r.usage.prompt_tokens == len(tok(text, add_special_tokens=False)["input_ids"])
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("stop", "length")
    assert r.usage.completion_tokens <= 12
    if r.choices[0].finish_reason == "length":
        assert r.usage.completion_tokens == 12
    assert greedy(client).choices[0].message.content == r.choices[0].message.content


def test_async_batched_requests_match_each_alone(client, server):
    prompts = [[{"role": "user", "content": "word " * k}] for k in (1, 7, 20, 3, 40, 11)]
    alone = [greedy(client, p).choices[0].message.content for p in prompts]

    async def together():
        aclient = openai.AsyncOpenAI(base_url=server["url"] + "/v1", api_key=KEY, max_retries=0)
        rs = await asyncio.gather(*[
            aclient.chat.completions.create(model="tiny", messages=p, temperature=0,
                                            max_tokens=12) for p in prompts])
        return [r.choices[0].message.content for r in rs]

    assert asyncio.run(together()) == alone


def test_stream_with_usage_matches_the_plain_answer(client):
    plain = greedy(client, max_tokens=16)
    chunks = list(greedy(client, max_tokens=16, stream=True,
                         stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    *body, finish, usage = chunks
    assert finish.choices[0].delta.content is None and finish.choices[0].delta.role is None
    assert finish.choices[0].finish_reason == plain.choices[0].finish_reason
    assert all(c.choices[0].finish_reason is None for c in body)
    assert all(c.usage is None for c in [*body, finish])
    assert "".join(c.choices[0].delta.content or "" for c in body) == \
        plain.choices[0].message.content
    assert usage.choices == [] and usage.usage == plain.usage


def test_stream_ends_with_done_on_the_wire(server):
    body = {"model": "tiny", "messages": PROMPT, "max_tokens": 3, "stream": True}
    with httpx.stream("POST", server["url"] + "/v1/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events)
    assert json.loads(events[-2][6:])["choices"][0]["finish_reason"] == "length"


def test_n_choices_with_seed_are_reproducible(client):
    kw = dict(model="tiny", messages=PROMPT, n=3, temperature=1.0, seed=7, max_tokens=10)
    a = client.chat.completions.create(**kw)
    b = client.chat.completions.create(**kw)
    assert [c.index for c in a.choices] == [0, 1, 2]
    texts = [c.message.content for c in a.choices]
    assert texts == [c.message.content for c in b.choices]
    assert len(set(texts)) > 1  # each choice draws its own sample
    assert 3 <= a.usage.completion_tokens <= 30


def test_stop_sequence_cuts_the_answer_before_it(client):
    full = greedy(client, max_tokens=20).choices[0].message.content
    visible = [m.start() for m in re.finditer(r"[A-Za-z]{2}", full)]
    assert visible, f"need printable text to cut at in {full!r}"
    at = visible[len(visible) // 2]
    stop = full[at:at + 2]
    r = greedy(client, max_tokens=20, stop=[stop, "never-appears"])
    assert r.choices[0].message.content == full[:full.index(stop)]
    assert r.choices[0].finish_reason == "stop"
    # lm-evaluation-harness sends a task's `until` strings and the EOS text: more than OpenAI's 4
    many = greedy(client, max_tokens=20, stop=[f"never-{i}" for i in range(4)] + [stop])
    assert many.choices[0].message.content == full[:full.index(stop)]
    with pytest.raises(openai.BadRequestError) as e:
        greedy(client, stop=[f"never-{i}" for i in range(65)])
    assert e.value.body["param"] == "stop"
    streamed = "".join(c.choices[0].delta.content or "" for c in
                       greedy(client, max_tokens=20, stop=stop, stream=True) if c.choices)
    assert streamed == full[:full.index(stop)]


def test_logprobs_are_the_greedy_choice_and_its_bytes(client):
    r = greedy(client, max_tokens=8, logprobs=True, top_logprobs=3)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens
    for lp in content:
        assert len(lp.top_logprobs) == 3
        assert lp.logprob <= 0
        assert lp.logprob == pytest.approx(lp.top_logprobs[0].logprob)  # greedy = most likely
        tops = [t.logprob for t in lp.top_logprobs]
        assert tops == sorted(tops, reverse=True)
    joined = b"".join(bytes(lp.bytes) for lp in content).decode("utf-8", errors="replace")
    assert joined == r.choices[0].message.content


JUDGE_SCHEMA = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": ["A", "B", "tie"]},
        "score": {"type": "integer", "minimum": 1, "maximum": 10},
        "confident": {"type": "boolean"},
    },
    "required": ["verdict", "score", "confident"],
    "additionalProperties": False,
}


def test_json_schema_output_parses_for_a_random_model(client):
    r = client.chat.completions.create(
        model="tiny", messages=PROMPT, n=4, temperature=1.0, seed=1, max_tokens=60,
        response_format={"type": "json_schema",
                         "json_schema": {"name": "verdict", "schema": JUDGE_SCHEMA}})
    for c in r.choices:
        data = json.loads(c.message.content)
        assert set(data) == {"verdict", "score", "confident"}
        assert data["verdict"] in ("A", "B", "tie")
        assert 1 <= data["score"] <= 10 and isinstance(data["confident"], bool)
        assert c.finish_reason == "stop"


def test_unconstrained_random_model_is_not_json(client):
    r = client.chat.completions.create(model="tiny", messages=PROMPT, temperature=1.0, seed=1,
                                       max_tokens=30)
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.choices[0].message.content)


def test_json_object_mode_gives_an_object(client):
    r = client.chat.completions.create(model="tiny", messages=PROMPT, temperature=0,
                                       max_tokens=40, response_format={"type": "json_object"})
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(r.choices[0].message.content), dict)
    else:
        assert r.choices[0].message.content.startswith("{")


def test_models_retrieve_names_the_served_model_and_404s_others(client):
    card = client.models.retrieve("tiny")
    assert (card.id, card.object, card.owned_by) == ("tiny", "model", "seed")
    assert card.created == client.models.list().data[0].created
    for name in ("other", "org/tiny"):
        with pytest.raises(openai.NotFoundError) as e:
            client.models.retrieve(name)
        assert e.value.body["code"] == "model_not_found" and name in e.value.body["message"]


def test_completions_route_with_echo_and_logprobs(client):
    r = client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=5,
                                  temperature=0, logprobs=2)
    assert r.object == "text_completion"
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == r.usage.completion_tokens == 5
    assert lp.text_offset[0] == 0 and all(len(t) == 2 for t in lp.top_logprobs)
    e = client.completions.create(model="tiny", prompt="The quick brown fox", max_tokens=5,
                                  temperature=0, echo=True)
    assert e.choices[0].text == "The quick brown fox" + r.choices[0].text
    s = client.completions.create(model="tiny", prompt=["a", "b b"], n=2, max_tokens=3,
                                  temperature=0)
    assert [c.index for c in s.choices] == [0, 1, 2, 3]


def test_errors_map_to_the_clients_exception_types(client, server):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="gpt-4", messages=PROMPT)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        greedy(client, [{"role": "user", "content": "word " * 400}])
    assert "256" in e.value.message and re.search(r"prompt has \d{3,} tokens", e.value.message)
    with pytest.raises(openai.BadRequestError) as e:
        greedy(client, max_tokens=10_000)
    assert "256" in e.value.message and "10000" in e.value.message
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=PROMPT, temperature=5)
    assert e.value.body["param"] == "temperature"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(
            model="tiny", messages=PROMPT,
            response_format={"type": "json_schema", "json_schema": {
                "name": "x", "schema": {"type": "object", "properties": {"a": {"type": "nope"}}}}})
    bad = openai.OpenAI(base_url=server["url"] + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()
    assert httpx.get(server["url"] + "/health").json() == {"status": "ok"}


def test_usage_log_and_metrics_count_requests_without_the_key(client, server):
    greedy(client, max_tokens=4)
    assert httpx.get(server["url"] + "/metrics").status_code == 401  # keys are set
    text = httpx.get(server["url"] + "/metrics", headers=AUTH).text
    route = re.escape('{route="/v1/chat/completions",status="200"}')
    done = re.search(r"seed_requests_total" + route + r" (\d+)", text)
    assert done and int(done.group(1)) >= 1
    assert re.search(r"seed_generation_tokens_total [1-9]", text)
    assert re.search(r"seed_time_to_first_token_seconds_count [1-9]", text)
    assert "seed_queue_depth 0" in text and "seed_running_sequences" in text
    log = server["usage_log"].read_text()
    assert KEY not in log
    *_, chat, refused = [json.loads(line) for line in log.splitlines()]
    assert chat["key"] == "key-2" and chat["status"] == 200 and chat["completion_tokens"] >= 1
    assert (refused["route"], refused["key"], refused["status"]) == ("/metrics", None, 401)


def test_client_disconnect_cancels_generation(client, server):
    stream = greedy(client, max_tokens=200, stream=True,
                    messages=[{"role": "user", "content": "cancel me"}])
    next(iter(stream))
    stream.close()
    for _ in range(100):
        metrics = httpx.get(server["url"] + "/metrics", headers=AUTH).text
        if "seed_running_sequences 0" in metrics:
            break
        time.sleep(0.05)
    assert "seed_running_sequences 0" in metrics
    last = json.loads(server["usage_log"].read_text().splitlines()[-1])
    assert last["status"] == 499 and last["completion_tokens"] < 200


def test_a_model_without_chat_template_is_refused_at_start(tmp_path):
    path = tiny_model(tmp_path / "plain", chat_template=False)
    r = run_cli("serve", path, env=seed_env())
    assert r.returncode == 2
    assert "chat template" in r.stderr and "Traceback" not in r.stderr


def test_upstream_mode_fronts_another_server(server, model_dir, tmp_path):
    log = tmp_path / "front.jsonl"
    env_key = {"SEED_UPSTREAM_API_KEY": KEY}
    with running_server("--upstream", server["url"], "--api-key", "sk-front", "--usage-log",
                        str(log), extra_env=env_key) as front:
        direct = greedy(openai.OpenAI(base_url=server["url"] + "/v1", api_key=KEY))
        fc = openai.OpenAI(base_url=front + "/v1", api_key="sk-front", max_retries=0)
        via = greedy(fc)
        assert via.choices[0].message.content == direct.choices[0].message.content
        streamed = "".join(c.choices[0].delta.content or "" for c in greedy(fc, stream=True)
                           if c.choices)
        assert streamed == direct.choices[0].message.content
        assert [m.id for m in fc.models.list().data] == ["tiny"]
        assert fc.models.retrieve("tiny").id == "tiny"
        with pytest.raises(openai.NotFoundError):
            fc.chat.completions.create(model="other", messages=PROMPT)
        with pytest.raises(openai.AuthenticationError):
            greedy(openai.OpenAI(base_url=front + "/v1", api_key=KEY, max_retries=0))
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert entries[0]["completion_tokens"] == direct.usage.completion_tokens
    assert "sk-front" not in log.read_text()


def test_seed_chat_talks_to_a_server_url(server):
    env = dict(seed_env(), SEED_API_KEY=KEY)
    r = run_cli("chat", server["url"], "--max-new-tokens", "5", input="hello\n/exit\n", env=env)
    assert r.returncode == 0, r.stderr
    assert "chatting with tiny" in r.stdout
