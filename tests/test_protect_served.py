"""The served-windows log (`seed serve --watermark-served-dir`) and `seed watermark radioactivity
--served-to LABEL`: which watermarked windows were served to which API key.

One real server of a tiny Llama set to a text bigram (Seed's `chars` tokenizer: its answers
tokenize back to the ids it sampled) with a keys.toml of three keys and a watermark key. alice and
bob ask with the openai client; each key's file must hold exactly the windows of its own answers
(as keyed digests: no token ids, no key). carol stands in for the investigator: the radioactivity
command asks the server itself as the suspect, so what it is answered is in carol's file and what
it keeps for alice can be checked against the two files.
"""

from __future__ import annotations

import hashlib
import json
import struct

import numpy as np
import openai
import pytest

from helpers.cli import assert_one_line_error, run_cli
from helpers.serve import running_server
from helpers.watermark_models import text_bigram_teacher, token_lists
from seed.errors import UserError
from seed.protect.detect import distinct_pairs
from seed.protect.radioactivity_api import run_api
from seed.protect.served import (
    HEADER_BYTES,
    ServedLog,
    check_served_dir,
    digest_key,
    label_file,
    served_digests,
    tuple_digests,
)
from seed.recipe import ServeConfig

KEY = b"served-wm-key-51c2e0-keep-private"
API_KEYS = {"alice": "sk-alice-5d1e9b", "bob": "sk-bob-77a0c4", "carol": "sk-carol-e31f08"}
CONTEXT = 2
TEXT = ("The quick brown fox jumps over the lazy dog. A model that learns from the answers of "
        "another model repeats what it was shown, and the windows it was shown are the evidence. "
        "Then the student writes a story about the sea, the wind and the ships that sail on it.")


def digests(tuples) -> set[int]:
    data = tuple_digests(digest_key(KEY), tuples)
    return set(np.frombuffer(data, dtype="<u8").tolist())


def on_file(served, label: str) -> set[int]:
    return set(served_digests(served["dir"], label, KEY, CONTEXT).tolist())


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """The server; alice's and bob's answers (texts), asked while it runs."""
    tmp = tmp_path_factory.mktemp("served")
    model = text_bigram_teacher(tmp / "teacher", [TEXT] * 4)
    key = tmp / "watermark.key"
    key.write_bytes(KEY)
    keys = tmp / "keys.toml"
    keys.write_text("".join(f'[keys.{label}]\nsha256 = "{hashlib.sha256(k.encode()).hexdigest()}"'
                            "\n" for label, k in API_KEYS.items()))
    directory = tmp / "served"
    prompts = tmp / "prompts.txt"
    prompts.write_text("\n".join(f"Tell me about ships, part {i}" for i in range(6)))
    with running_server(model, "--keys-file", keys, "--watermark-key-file", key,
                        "--watermark-served-dir", directory, "--model-name", "teacher") as url:
        answers = {label: ask(url, API_KEYS[label], topic) for label, topic in
                   [("alice", "the sea"), ("bob", "a fox")]}
        yield {"url": url, "dir": directory, "key": key, "model": model, "tmp": tmp,
               "prompts": prompts, "answers": answers}


def ask(url: str, api_key: str, topic: str) -> list[str]:
    """Three requests: two plain (one with n=2) and one streamed."""
    client = openai.OpenAI(base_url=url + "/v1", api_key=api_key, max_retries=0)
    texts = []
    for i, n in enumerate([2, 1]):
        r = client.chat.completions.create(
            model="teacher", messages=[{"role": "user", "content": f"Story {i} about {topic}"}],
            max_tokens=40, temperature=1.0, n=n)
        texts += [c.message.content or "" for c in r.choices]
    stream = client.chat.completions.create(
        model="teacher", messages=[{"role": "user", "content": f"More about {topic}"}],
        max_tokens=40, temperature=1.0, stream=True)
    texts.append("".join(c.choices[0].delta.content or "" for c in stream if c.choices))
    return texts


def answer_tuples(served, texts: list[str]) -> list[tuple[int, ...]]:
    return distinct_pairs(token_lists(served["model"], texts), CONTEXT)


def test_each_keys_file_holds_exactly_the_windows_served_to_it(served):
    alice = answer_tuples(served, served["answers"]["alice"])
    bob = answer_tuples(served, served["answers"]["bob"])
    assert len(alice) > 30 and len(bob) > 30
    assert on_file(served, "alice") == digests(alice)
    assert on_file(served, "bob") == digests(bob)
    only_alice = set(alice) - set(bob)
    assert only_alice and not digests(only_alice) & on_file(served, "bob")


def test_the_file_holds_no_token_ids_and_no_key(served):
    data = label_file(served["dir"], "alice").read_bytes()
    assert (len(data) - HEADER_BYTES) % 8 == 0
    for secret in (KEY, hashlib.sha256(KEY).digest(), hashlib.sha256(KEY).hexdigest().encode(),
                   digest_key(KEY)):
        assert secret not in data
    for ids in token_lists(served["model"], served["answers"]["alice"]):
        run = ids[10:16]
        assert len(run) == 6
        for packed in (bytes(run), struct.pack("<6H", *run), struct.pack("<6I", *run),
                       struct.pack("<6q", *run)):
            assert packed not in data


def test_api_mode_keeps_only_the_tuples_served_to_the_label(served, capsys, monkeypatch):
    """The suspect is the server itself, asked as carol: carol's file then holds exactly the
    suspect's tuples, and those kept for alice are the ones on both files."""
    monkeypatch.setenv("SEED_TEST_CAROL_KEY", API_KEYS["carol"])
    cache = served["tmp"] / "requests.sqlite"
    results = {}
    for label in ("alice", "carol"):  # the second run is answered from the cache
        run_api(served["url"] + "/v1", "teacher", served["key"], [served["prompts"]],
                served["model"],
                gamma=0.25, context=CONTEXT, decoys=10, threshold=1e-5, as_json=True,
                api_key_env="SEED_TEST_CAROL_KEY", max_tokens=40, temperature=1.0,
                max_cost=None, cache=cache, served_to=label, served_dir=served["dir"])
        results[label] = json.loads(capsys.readouterr().out)
    carol = on_file(served, "carol")
    assert results["carol"]["served_to"] == "carol" and results["carol"]["texts"] == 6
    assert results["carol"]["tokens_scored"] == results["carol"]["served_of"] == len(carol)
    kept = results["alice"]["tokens_scored"]
    assert results["alice"]["served_of"] == len(carol)
    assert kept == len(carol & on_file(served, "alice"))
    assert 0 < kept < len(carol)


def test_a_label_without_a_file_is_refused_before_the_suspect_is_asked(served):
    proc = run_cli("watermark", "radioactivity", "--endpoint", "http://127.0.0.1:9/v1",
                   "--model", "teacher", "--tokenizer", served["model"], "--key-file",
                   served["key"], "--texts", served["prompts"], "--served-to", "dave",
                   "--served-dir", served["dir"])
    assert_one_line_error(proc, "--served-to dave", str(served["dir"]), "dave.bin")


def test_a_torn_tail_is_ignored_and_cut_before_the_next_write(tmp_path):
    first, second = [(1, 2, 3), (2, 3, 4)], [(5, 6, 7)]
    log = ServedLog(tmp_path, KEY, 2)
    log.record("alice", [[1, 2, 3, 4]])
    log.close()
    path = label_file(tmp_path, "alice")
    with path.open("ab") as f:
        f.write(b"\x07\x07\x07")  # a digest cut short by a crash
    assert set(served_digests(tmp_path, "alice", KEY, 2).tolist()) == digests(first)
    log = ServedLog(tmp_path, KEY, 2)
    log.record("alice", [[5, 6, 7]])
    log.close()
    assert path.stat().st_size == HEADER_BYTES + 8 * 3
    assert set(served_digests(tmp_path, "alice", KEY, 2).tolist()) == digests(first + second)


def test_a_file_of_another_key_or_width_is_refused(tmp_path):
    log = ServedLog(tmp_path, KEY, 2)
    log.record("alice", [[1, 2, 3]])
    log.close()
    with pytest.raises(UserError, match="another watermark key"):
        served_digests(tmp_path, "alice", b"another key", 2)
    with pytest.raises(UserError, match="window width 2, not 1"):
        served_digests(tmp_path, "alice", KEY, 1)
    other = tmp_path / "other.key"
    other.write_bytes(b"another key")
    config = ServeConfig(model=tmp_path, watermark_key_file=other, watermark_served_dir=tmp_path)
    with pytest.raises(UserError, match=r"alice\.bin was written under another watermark key"):
        check_served_dir(config)
    with pytest.raises(UserError, match="give --watermark-key-file too"):
        check_served_dir(ServeConfig(model=tmp_path, watermark_served_dir=tmp_path))
