"""A keys.toml as `seed serve` reads it, in process: what it accepts, what it refuses (one line,
never the key or its hash), the checks a key's policy makes on a request, and the rate windows.

The server-side behaviour (status codes through openai-python, reloads) is in test_serve_policy.py.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
import os

import pytest

from helpers.cli import run_cli
from seed.errors import UserError
from seed.serve import policy as policy_module
from seed.serve.auth import key_digest
from seed.serve.errors import APIError
from seed.serve.policy import KeyPolicies, Window, read_policy_file
from seed.serve.responses import ResponsesRequest
from seed.serve.schemas import ChatCompletionRequest, CompletionRequest

KEY = "sk-policy-unit-key"
DIGEST = hashlib.sha256(KEY.encode()).hexdigest()


def write(tmp_path, text, name="keys.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def chat(**kw):
    kw.setdefault("max_tokens", 4)
    return ChatCompletionRequest.model_validate(
        {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], **kw})


def refusal(keys, req, label="alice"):
    with pytest.raises(APIError) as e:
        keys.admit(label, keys.policy(label), req)
    return e.value


def test_the_stored_hash_is_what_sha256sum_prints():
    assert key_digest(KEY) == DIGEST


def test_a_keys_toml_gives_each_key_its_label_and_policy(tmp_path):
    path = write(tmp_path, f"""
[keys.alice]
sha256 = "{DIGEST.upper()}"
rpm = 60
max_n = 2
logprobs = false
models = ["tiny"]
watermark = "optional"
expires = 2030-01-02

[keys.bob]
sha256 = "{key_digest('sk-bob')}"
expires = 2030-01-02T03:04:05
""")
    keys = KeyPolicies.load(None, path, environ={})
    assert keys.match(f"Bearer {KEY}") == "alice" and keys.match("bearer sk-bob") == "bob"
    assert keys.match("Bearer sk-nobody") is None and keys.match(DIGEST) is None
    alice = keys.policy("alice")
    assert alice is not None
    assert (alice.sha256, alice.rpm, alice.max_n, alice.logprobs, alice.models) == (
        DIGEST, 60, 2, False, ["tiny"])
    assert alice.expires == dt.datetime(2030, 1, 2, tzinfo=dt.UTC)  # a date: its start, UTC
    bob = keys.policy("bob")
    assert bob is not None and bob.watermark == "required" and bob.rpm is None
    assert bob.expires == dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def test_a_one_key_per_line_file_and_the_api_key_have_no_policy(tmp_path):
    path = write(tmp_path, "sk-one\n# comment\nsk-two\n", "keys.txt")
    keys = KeyPolicies.load("sk-flag", path, environ={})
    assert [keys.match(f"Bearer {k}") for k in ("sk-flag", "sk-one", "sk-two")] == [
        "key-1", "key-2", "key-3"]
    assert keys.policy("key-2") is None and keys.path is None
    assert keys.admit("key-2", None, chat(n=16, logprobs=True)).rates is None


@pytest.mark.parametrize(("body", "problem"), [
    ('[keys.alice]\nkey = "sk-secret-in-file"\n', "keys.alice.key: a keys.toml never holds a key "
     "itself; store its SHA-256 instead"),
    (f'[keys.alice]\nsha256 = "{DIGEST}"\nrmp = 5\n', "keys.alice.rmp: unknown key"),
    (f'[keys.alice]\nsha256 = "{DIGEST}"\n[limits]\nrpm = 1\n', "limits: unknown key"),
    ('[keys.alice]\nsha256 = "sk-secret-in-file"\n', "keys.alice.sha256: is not a SHA-256 in hex"),
    ("[keys.alice]\nrpm = 5\n", "keys.alice.sha256: missing key"),
    (f'[keys.alice]\nsha256 = "{DIGEST}"\nrpm = 0\n', "keys.alice.rpm: input should be greater"),
    (f'[keys.alice]\nsha256 = "{DIGEST}"\nwatermark = "off"\n', "keys.alice.watermark: input "
     "should be 'required' or 'optional'"),
    (f'[keys.alice]\nsha256 = "{DIGEST}"\n[keys.bob]\nsha256 = "{DIGEST}"\n',
     "keys.alice and keys.bob hold the same sha256"),
    (f'[keys."two words"]\nsha256 = "{DIGEST}"\n', "a label is 1-64 letters"),
    ("", "holds no key"),
    ("[keys.alice\n", "not valid TOML"),
], ids=["plain-key", "typo", "unknown-table", "not-a-hash", "no-hash", "zero-rpm", "watermark",
        "same-hash", "label", "empty", "syntax"])
def test_a_keys_toml_that_cannot_be_used_is_one_line_naming_the_entry(tmp_path, body, problem):
    path = write(tmp_path, body)
    with pytest.raises(UserError) as e:
        read_policy_file(path)
    message = str(e.value)
    assert message.startswith(f"{path}: ") and problem in message and "\n" not in message
    assert "sk-secret-in-file" not in message and DIGEST not in message


def test_a_label_or_key_also_given_by_the_api_key_is_refused(tmp_path):
    same_key = write(tmp_path, f'[keys.alice]\nsha256 = "{DIGEST}"\n')
    with pytest.raises(UserError, match=r"keys\.alice: the same key is given by --api-key"):
        KeyPolicies.load(KEY, same_key, environ={})
    same_label = write(tmp_path, f'[keys.key-1]\nsha256 = "{DIGEST}"\n', "other.toml")
    with pytest.raises(UserError, match=r"keys\.key-1: the label is taken by --api-key"):
        KeyPolicies.load("sk-flag", same_label, environ={})


def test_an_expired_key_is_a_401_naming_when(tmp_path):
    path = write(tmp_path, f'[keys.alice]\nsha256 = "{DIGEST}"\nexpires = 2026-06-01T12:00:00Z\n')
    keys = KeyPolicies.load(None, path, environ={})
    before = dt.datetime(2026, 6, 1, 11, 59, tzinfo=dt.UTC)
    assert keys.expired("alice", before) is None
    error = keys.expired("alice", before + dt.timedelta(minutes=1))
    assert error is not None and (error.status, error.code) == (401, "expired_api_key")
    assert "2026-06-01T12:00:00Z" in error.message


@pytest.fixture()
def limited(tmp_path):
    path = write(tmp_path, f"""
[keys.alice]
sha256 = "{DIGEST}"
max_n = 2
logprobs = false
max_tokens = 8
models = ["tiny"]

[keys.bob]
sha256 = "{key_digest('sk-bob')}"
max_top_logprobs = 2
tpm = 20
""")
    return KeyPolicies.load(None, path, environ={})


def test_what_a_policy_forbids_is_refused_naming_the_field_as_the_api_spells_it(limited):
    cases = [
        (chat(model="other"), 403, "model"),
        (chat(n=3), 400, "n"),
        (chat(logprobs=True), 400, "logprobs"),
        (chat(max_tokens=9), 400, "max_tokens"),
        (chat(max_tokens=None, max_completion_tokens=9), 400, "max_completion_tokens"),
        (chat(max_tokens=None), 400, "max_tokens"),  # a capped key must say how many
        (CompletionRequest(model="tiny", prompt="hi", logprobs=0), 400, "logprobs"),
        (CompletionRequest(model="tiny", prompt=["a", "b"], n=2, max_tokens=4), 400, "n"),
        (ResponsesRequest.model_validate({"model": "tiny", "input": "hi",
                                          "max_output_tokens": 9}), 400, "max_output_tokens"),
        (ResponsesRequest.model_validate({"model": "tiny", "input": "hi", "max_output_tokens": 4,
                                          "top_logprobs": 3}), 400, "top_logprobs"),
    ]
    for req, status, param in cases:
        e = refusal(limited, req)
        assert (e.status, e.param) == (status, param), e.message
    assert limited.admit("alice", limited.policy("alice"), chat(n=2, max_tokens=8)).reserved == 16
    e = refusal(limited, chat(logprobs=True, top_logprobs=3), "bob")
    assert (e.status, e.param) == (400, "top_logprobs")
    e = refusal(limited, chat(max_tokens=11, n=2), "bob")  # 22 tokens can never fit a tpm of 20
    assert (e.status, e.param) == (400, "max_tokens") and "tpm of 20" in e.message
    limited.admit("bob", limited.policy("bob"), chat(logprobs=True, top_logprobs=2))


def test_tokens_are_charged_up_front_and_corrected_by_what_was_used(limited):
    bob = limited.policy("bob")
    first = limited.admit("bob", bob, chat(max_tokens=10))
    second = limited.admit("bob", bob, chat(max_tokens=10))  # 20 of 20 reserved
    e = refusal(limited, chat(max_tokens=1), "bob")
    assert (e.status, e.code) == (429, "rate_limit_exceeded") and "tpm" in e.message
    assert e.headers is not None and 1 <= int(e.headers["Retry-After"]) <= 61  # bins of 1 s
    first.settle(3)  # it used 3 tokens (prompt + completion), not 10
    second.settle(3)
    second.settle(100)  # settled once only
    limited.admit("bob", bob, chat(max_tokens=10))  # 3 + 3 + 10 fits
    refusal(limited, chat(max_tokens=5), "bob")


def test_tokens_per_day_is_a_429_once_the_days_tokens_are_used(tmp_path):
    path = write(tmp_path, f'[keys.alice]\nsha256 = "{DIGEST}"\ntokens_per_day = 30\n')
    keys = KeyPolicies.load(None, path, environ={})
    alice = keys.policy("alice")
    keys.admit("alice", alice, chat(max_tokens=10)).settle(25)  # a long prompt: 25 used
    e = refusal(keys, chat(max_tokens=6))
    assert e.status == 429 and "30 tokens per day (tokens_per_day)" in e.message
    assert e.headers is not None and 23 * 3600 < int(e.headers["Retry-After"]) <= 86400 + 60
    keys.admit("alice", alice, chat(max_tokens=5))


def test_a_window_lets_charges_out_as_their_bins_age():
    w = Window(span=60.0, slot=1.0)
    w.charge(100.2, 2)
    w.charge(130.7, 1)
    assert w.total(130.9) == 3 and w.wait(130.9, 1, 4) == 0
    assert w.wait(130.9, 1, 3) == pytest.approx(101 + 60 - 130.9)  # the first bin's exit
    assert w.wait(130.9, 2, 2) == pytest.approx(131 + 60 - 130.9)  # both must go
    assert w.total(161.0) == 1 and w.total(191.0) == 0
    index = w.charge(200.5, 5)
    w.adjust(index, -4, 201.0)
    assert w.total(201.0) == 1
    w.adjust(index, 3, 300.0)  # its bin has left: a shortfall is charged now
    assert w.total(300.0) == 3


def test_rpm_counts_admitted_requests_only(tmp_path):
    path = write(tmp_path, f'[keys.alice]\nsha256 = "{DIGEST}"\nrpm = 2\nmax_n = 1\n')
    keys = KeyPolicies.load(None, path, environ={})
    alice = keys.policy("alice")
    for _ in range(3):
        refusal(keys, chat(n=2))  # a 400 costs no request
    keys.admit("alice", alice, chat())
    keys.admit("alice", alice, chat())
    e = refusal(keys, chat())
    assert e.status == 429 and "2 requests per minute (rpm)" in e.message


def test_a_broken_reload_keeps_the_previous_keys_and_logs_one_line(tmp_path, caplog):
    path = write(tmp_path, f'[keys.alice]\nsha256 = "{DIGEST}"\nmax_n = 1\n')
    keys = KeyPolicies.load(None, path, environ={})
    path.write_text(f'[keys.alice]\nsha256 = "{DIGEST}"\nmax_n = 1\nkey = "{KEY}"\n')
    with caplog.at_level(logging.WARNING):
        assert not keys.reload()
    assert keys.match(f"Bearer {KEY}") == "alice"
    [line] = [r.getMessage() for r in caplog.records]
    assert "not reloaded" in line and "keys.alice.key" in line
    assert KEY not in line and DIGEST not in line
    path.write_text(f'[keys.carol]\nsha256 = "{DIGEST}"\nmax_n = 3\n')
    assert keys.reload()
    assert keys.match(f"Bearer {KEY}") == "carol" and keys.policy("alice") is None


def test_a_changed_file_is_read_again_on_the_next_check(tmp_path, monkeypatch):
    monkeypatch.setattr(policy_module, "CHECK_EVERY_S", 0.0)  # look at every request
    path = write(tmp_path, f'[keys.alice]\nsha256 = "{DIGEST}"\nmax_n = 1\n')
    keys = KeyPolicies.load(None, path, environ={})
    path.write_text(f'[keys.alice]\nsha256 = "{DIGEST}"\nmax_n = 4\n')
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    keys.match(f"Bearer {KEY}")
    policy = keys.policy("alice")
    assert policy is not None and policy.max_n == 4


def test_seed_keys_hash_reads_the_key_from_stdin_and_prints_its_digest():
    r = run_cli("keys", "hash", input=KEY + "\n")
    assert r.returncode == 0 and r.stdout.strip() == DIGEST
    bad = run_cli("keys", "hash", input="two words\n")
    assert bad.returncode == 2 and "printable ASCII" in bad.stderr and "two words" not in bad.stderr
