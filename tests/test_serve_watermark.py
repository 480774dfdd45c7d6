"""`seed serve --watermark-key-file` as the openai client sees it, and `seed watermark detect`.

A tiny random-weight model has high entropy, so its watermarked replies carry a strong signal: its
own output must be detected with the key (exit 1, p < 1e-10) and not with another key; seeds,
streaming, `n`, stop strings and JSON schemas keep working; the key's id (never the key, nor its
whole hash) is in /v1/models and the usage log, and nothing the server or the detector writes
holds the key.
"""

from __future__ import annotations

import hashlib
import json
import subprocess

import openai
import pytest
from transformers import AutoTokenizer

from helpers.cli import assert_one_line_error, run_cli, start_cli
from helpers.models import tiny_model
from helpers.serve import seed_env
from helpers.servers import free_port, wait_until_up
from seed.errors import UserError
from seed.protect.detect import detect, read_texts, run_detect

KEY = b"wm-secret-7f3a9c-do-not-print"
KEY_ID = hashlib.sha256(KEY).hexdigest()[:12]
PROMPT = [{"role": "user", "content": "Write me a story."}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("wm") / "tiny")


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """The server, its output in a file (read by the tests while it runs)."""
    tmp = tmp_path_factory.mktemp("wm-serve")
    key = tmp / "watermark.key"
    key.write_bytes(KEY)
    log, output = tmp / "usage.jsonl", tmp / "serve.out"
    port = free_port()
    with output.open("w") as out:
        proc = start_cli("serve", model_dir, "--watermark-key-file", key, "--usage-log", log,
                         "--port", str(port), env=seed_env(), stdout=out,
                         stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(proc, url + "/health", 90, "seed serve")
        yield {"url": url, "key": key, "usage_log": log, "output": output, "tmp": tmp}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture()
def client(server):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key="none", max_retries=0)


def _plain_characters(model_dir) -> dict[str, int]:
    """A logit bias that has the tiny model write only ASCII characters no BPE merge touches, and
    never end early. A random model's tokens are otherwise mostly pieces of UTF-8 characters and
    splits the tokenizer would not make, so its text does not tokenize back to what it sampled (a
    real model's mostly does); these characters do, one token each."""
    spec = json.loads((model_dir / "tokenizer.json").read_text())
    merged = {part for m in spec["model"]["merges"]
              for part in (m if isinstance(m, list) else m.split(" "))}
    plain = [i for t, i in spec["model"]["vocab"].items()
             if len(t) == 1 and t.isascii() and t.isprintable() and t not in merged]
    assert len(plain) >= 30
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    return {**{str(i): 100 for i in plain}, str(tok.convert_tokens_to_ids("<|im_end|>")): -100}


def _detect(*args) -> tuple[int, dict]:
    proc = run_cli("watermark", "detect", *args, "--json")
    assert proc.returncode in (0, 1), proc.stdout + proc.stderr
    assert KEY.decode() not in proc.stdout + proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def test_models_list_shows_the_key_id_and_settings(client):
    [card] = client.models.list().data
    assert card.model_extra["watermark"] == {"key_id": KEY_ID, "gamma": 0.25, "delta": 2.0,
                                             "context": 2}


def test_its_own_output_is_detected_and_another_key_finds_nothing(client, server, model_dir):
    r = client.chat.completions.create(model="tiny", messages=PROMPT, temperature=1.0, n=2,
                                       max_tokens=110, logit_bias=_plain_characters(model_dir))
    body = server["tmp"] / "reply.json"
    body.write_text(r.model_dump_json())
    code, result = _detect(body, "--key-file", server["key"], "--model", model_dir)
    assert code == 1 and result["detected"] is True
    assert result["tokens_scored"] >= 200 and result["key_id"] == KEY_ID
    assert result["p_value"] < 1e-10
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    texts = [tok(t, add_special_tokens=False)["input_ids"] for t in read_texts(body)]
    wrong = detect(texts, [b"some other key"], gamma=0.25, context=2)
    assert wrong.tokens_scored == result["tokens_scored"] and wrong.p_value > 0.01


def test_seeded_replies_are_the_same_streamed_or_whole_and_stop_strings_cut_them(client):
    kw = {"model": "tiny", "messages": PROMPT, "temperature": 1.0, "seed": 7, "max_tokens": 24}
    whole = client.chat.completions.create(**kw, n=2)
    streamed = ["", ""]
    for chunk in client.chat.completions.create(**kw, n=2, stream=True):
        for c in chunk.choices:
            streamed[c.index] += c.delta.content or ""
    assert streamed == [c.message.content for c in whole.choices]
    text = whole.choices[0].message.content
    stop = text[len(text) // 2:len(text) // 2 + 3]
    cut = client.chat.completions.create(**kw, stop=[stop])
    assert cut.choices[0].message.content == text[:text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"


def test_json_schema_replies_still_parse(client):
    schema = {"type": "object", "properties": {"n": {"type": "integer"},
                                               "ok": {"type": "boolean"}},
              "required": ["n", "ok"], "additionalProperties": False}
    r = client.chat.completions.create(
        model="tiny", messages=PROMPT, temperature=1.0, seed=3, max_tokens=40, n=2,
        response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": schema}})
    for c in r.choices:
        data = json.loads(c.message.content)
        assert isinstance(data["n"], int) and isinstance(data["ok"], bool)


def test_opting_out_is_refused_naming_the_field(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny", messages=PROMPT, max_tokens=4,
                                       extra_body={"watermarking": False})
    assert e.value.body["param"] == "watermarking"


def test_usage_log_names_the_key_id_and_nothing_written_holds_the_key(client, server):
    client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=4)
    lines = [json.loads(line) for line in server["usage_log"].read_text().splitlines()]
    generated = [x for x in lines if x["status"] == 200 and x["route"] != "/v1/models"]
    assert generated and all(x["watermark_key_id"] == KEY_ID for x in generated)
    written = server["usage_log"].read_bytes() + server["output"].read_bytes()
    for secret in (KEY, hashlib.sha256(KEY).hexdigest().encode()):
        assert secret not in written


def test_a_key_file_that_cannot_be_used_stops_serve_before_the_model_loads(tmp_path, model_dir):
    empty = tmp_path / "empty.key"
    empty.write_bytes(b"")
    assert_one_line_error(run_cli("serve", model_dir, "--watermark-key-file", empty,
                                  "--port", str(free_port())), "--watermark-key-file", "empty")


def test_detect_refuses_input_it_cannot_read_in_one_line(tmp_path, model_dir):
    key = tmp_path / "k"
    key.write_bytes(KEY)
    with pytest.raises(UserError, match=r"absent\.txt: cannot be read"):
        run_detect([tmp_path / "absent.txt"], [key], model_dir, gamma=0.25, context=2,
                   threshold=1e-3, as_json=True)
    (tmp_path / "empty").write_bytes(b"")
    with pytest.raises(UserError, match=r"--key-file .*empty"):
        run_detect([key], [tmp_path / "empty"], model_dir, gamma=0.25, context=2,
                   threshold=1e-3, as_json=True)
