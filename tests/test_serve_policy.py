"""Per-key policy as a client of `seed serve --keys-file keys.toml` sees it: the official `openai`
client against one real server whose keys.toml holds two keys, alice and bob.

alice may use the model `tiny` only, one or two choices, no logprobs, at most 8 tokens each and 2
requests a minute; bob may ask for 2 top_logprobs and (until a reload changes it) 4 tokens. The
tests run in file order against the one server: refusals first (they cost no request), then
alice's rate, then bob's reloads, and last the server is stopped to read everything it wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import time

import openai
import pytest

from helpers.models import tiny_model
from helpers.serve import running_server, serving

KEY_A = "sk-policy-alice-3f9a"
KEY_B = "sk-policy-bob-77c1"
SECRETS = (KEY_A, KEY_B, *(hashlib.sha256(k.encode()).hexdigest() for k in (KEY_A, KEY_B)))
HELLO = [{"role": "user", "content": "Hello!"}]


def keys_toml(bob_max_tokens: int = 4, bob_extra: str = "") -> str:
    return f"""
[keys.alice]
sha256 = "{SECRETS[2]}"
rpm = 2
max_n = 2
logprobs = false
max_tokens = 8
models = ["tiny"]

[keys.bob]
sha256 = "{SECRETS[3]}"
max_top_logprobs = 2
max_tokens = {bob_max_tokens}
{bob_extra}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("policy")
    model = tiny_model(tmp / "tiny")
    keys = tmp / "keys.toml"
    keys.write_text(keys_toml())
    keys.chmod(0o600)
    log = tmp / "usage.jsonl"
    with serving(model, "--keys-file", keys, "--usage-log", log) as (url, proc):
        yield {"url": url, "proc": proc, "keys": keys, "usage_log": log}


def client(server, key):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=key, max_retries=0)


def say(c, **kw):
    """A short greedy chat; a field given as None is left out of the request."""
    kw = {k: v for k, v in {"model": "tiny", "max_tokens": 4, **kw}.items() if v is not None}
    return c.chat.completions.create(messages=HELLO, temperature=0, **kw)


def test_a_model_the_key_may_not_use_is_a_403_naming_the_ones_it_may(server):
    with pytest.raises(openai.PermissionDeniedError) as e:
        say(client(server, KEY_A), model="other")
    assert (e.value.code, e.value.param) == ("model_not_allowed", "model")
    assert "may use: tiny" in e.value.message
    with pytest.raises(openai.NotFoundError):  # bob may use any model; there is no `other`
        say(client(server, KEY_B), model="other")


@pytest.mark.parametrize(("kw", "param"), [
    ({"n": 3}, "n"),
    ({"logprobs": True}, "logprobs"),
    ({"max_tokens": 9}, "max_tokens"),
    ({"max_tokens": None, "max_completion_tokens": 9}, "max_completion_tokens"),
    ({"max_tokens": None}, "max_tokens"),
])
def test_a_chat_field_the_policy_forbids_is_a_400_naming_it(server, kw, param):
    with pytest.raises(openai.BadRequestError) as e:
        say(client(server, KEY_A), **kw)
    assert e.value.param == param and KEY_A not in e.value.message


def test_completions_and_responses_fields_are_refused_as_those_apis_name_them(server):
    alice, bob = client(server, KEY_A), client(server, KEY_B)
    with pytest.raises(openai.BadRequestError) as e:
        alice.completions.create(model="tiny", prompt="Hi", max_tokens=4, logprobs=1)
    assert e.value.param == "logprobs"
    with pytest.raises(openai.BadRequestError) as e:
        alice.responses.create(model="tiny", input="Hi", max_output_tokens=20)
    assert e.value.param == "max_output_tokens"
    with pytest.raises(openai.BadRequestError) as e:
        say(bob, logprobs=True, top_logprobs=3)
    assert e.value.param == "top_logprobs" and "at most 2" in e.value.message
    r = say(bob, logprobs=True, top_logprobs=2)
    assert len(r.choices[0].logprobs.content[0].top_logprobs) == 2


def test_alices_third_request_in_a_minute_is_a_429_with_retry_after(server):
    alice = client(server, KEY_A)
    assert len(say(alice, n=2).choices) == 2
    say(alice)
    with pytest.raises(openai.RateLimitError) as e:
        say(alice)
    assert e.value.code == "rate_limit_exceeded" and "2 requests per minute" in e.value.message
    assert 1 <= int(e.value.response.headers["retry-after"]) <= 61  # a minute, in 1 s bins
    say(client(server, KEY_B))  # bob's windows are his own


def test_a_front_server_in_upstream_mode_enforces_its_own_keys_toml(server, tmp_path):
    front_keys = tmp_path / "front.toml"
    front_keys.write_text(f'[keys.carol]\nsha256 = "{SECRETS[2]}"\nmax_n = 1\n')
    with running_server("--upstream", server["url"], "--keys-file", front_keys,
                        extra_env={"SEED_UPSTREAM_API_KEY": KEY_B}) as url:
        carol = openai.OpenAI(base_url=url + "/v1", api_key=KEY_A, max_retries=0)
        with pytest.raises(openai.BadRequestError) as e:
            say(carol, n=2)
        assert e.value.param == "n"  # refused by the front, before the upstream saw it
        assert say(carol, max_tokens=3).usage.completion_tokens <= 3  # answered as bob, behind


def test_sighup_reloads_a_changed_limit(server):
    bob = client(server, KEY_B)
    with pytest.raises(openai.BadRequestError):
        say(bob, max_tokens=6)
    path = server["keys"]
    before = path.stat()
    path.write_text(keys_toml(bob_max_tokens=8))  # the same size: only the signal tells
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))
    server["proc"].send_signal(signal.SIGHUP)
    for _ in range(100):
        try:
            assert say(bob, max_tokens=6).usage.completion_tokens <= 6
            break
        except openai.BadRequestError:
            time.sleep(0.1)
    else:
        pytest.fail("bob's new max_tokens never applied after SIGHUP")


def test_a_changed_file_applies_without_a_restart_and_a_broken_one_is_not_used(server):
    bob = client(server, KEY_B)
    path = server["keys"]
    path.write_text(keys_toml(8, f'key = "{KEY_B}"'))  # refused: it holds a key
    time.sleep(1.1)  # the file is looked at once a second at most, on a request
    say(bob, max_tokens=6)  # the last good file is still in use
    path.write_text(keys_toml(8, "expires = 2020-01-01"))
    time.sleep(1.1)
    with pytest.raises(openai.AuthenticationError) as e:
        say(bob)
    assert e.value.code == "expired_api_key" and "2020-01-01T00:00:00Z" in e.value.message


def test_the_logs_name_keys_by_label_and_hold_neither_a_key_nor_its_hash(server):
    proc = server["proc"]
    proc.terminate()
    output, _ = proc.communicate(timeout=30)
    usage = server["usage_log"].read_text()
    for secret in SECRETS:
        assert secret not in output and secret not in usage
    assert output.count("keys file not reloaded") == 1 and "keys.bob.key" in output
    assert output.count("reloaded, 2 key(s)") == 2  # the signal, then the expiry
    seen = {(e["key"], e["status"]) for e in map(json.loads, usage.splitlines())}
    assert {("alice", 403), ("alice", 400), ("alice", 429), ("alice", 200), ("bob", 404),
            ("bob", 400), ("bob", 200), ("bob", 401)} <= seen
