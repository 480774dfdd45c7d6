"""Upstream mode and the watermark: `seed serve --upstream` cannot watermark, and strips an opt-out.

The upstream is a real watermarking `seed serve` of the tiny chat model whose keys.toml lets the
front's upstream key opt out (`watermark = "optional"`), so it honours whatever `watermarking:
false` reaches it; its usage log says which replies it watermarked (`watermark_key_id`), each line
found by the request's `user` field. In front, `seed serve --upstream` with its own keys.toml:
`strict` (the watermark required, the default) and `loose` (optional). strict's opt-out must be
stripped (the upstream watermarks), loose's passed through (it does not).
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import time

import openai
import pytest

from helpers.cli import start_cli
from helpers.serve import running_server, seed_env
from helpers.servers import free_port
from seed.errors import UserError
from seed.recipe import ServeConfig
from seed.serve.server import run_server

KEY = b"upstream-wm-secret-5e21"
KEY_ID = hashlib.sha256(KEY).hexdigest()[:12]
FRONT_KEY, STRICT, LOOSE = "sk-front-to-upstream-19", "sk-strict-4410", "sk-loose-8c2e"
HELLO = [{"role": "user", "content": "Hello!"}]


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def servers(tiny_chat_model, tmp_path_factory):
    """Both servers, started at once: the front's /health is a 503 until its upstream answers."""
    tmp = tmp_path_factory.mktemp("upstream-wm")
    key = tmp / "watermark.key"
    key.write_bytes(KEY)
    up_keys, front_keys = tmp / "upstream.toml", tmp / "front.toml"
    up_keys.write_text(f'[keys.front]\nsha256 = "{sha(FRONT_KEY)}"\nwatermark = "optional"\n')
    front_keys.write_text(f'[keys.strict]\nsha256 = "{sha(STRICT)}"\n\n'
                          f'[keys.loose]\nsha256 = "{sha(LOOSE)}"\nwatermark = "optional"\n')
    log, output, port = tmp / "upstream-usage.jsonl", tmp / "upstream.out", free_port()
    with output.open("w") as out:
        upstream = start_cli("serve", tiny_chat_model, "--watermark-key-file", key, "--keys-file",
                             up_keys, "--usage-log", log, "--port", str(port), env=seed_env(),
                             stdout=out, stderr=subprocess.STDOUT)
    try:
        with running_server("--upstream", f"http://127.0.0.1:{port}", "--keys-file", front_keys,
                            extra_env={"SEED_UPSTREAM_API_KEY": FRONT_KEY}) as front:
            yield {"front": front, "log": log, "key": key, "output": output}
    finally:
        upstream.terminate()
        upstream.wait(timeout=30)


def upstream_line(log, user: str) -> dict:
    """The upstream's usage-log line for the request sent with `user` (it is written as the
    request ends, which may be just after the client has its answer)."""
    for _ in range(200):
        lines = [json.loads(x) for x in log.read_text().splitlines()] if log.exists() else []
        found = [x for x in lines if x.get("user") == user]
        if found:
            assert len(found) == 1
            return found[0]
        time.sleep(0.05)
    raise AssertionError(f"no upstream usage-log line for user {user!r}")


@pytest.fixture(scope="module")
def clients(servers):
    """An openai client per front key, closed before the servers stop (an idle keep-alive
    connection would hold each server's shutdown for its 5 s grace)."""
    made = {key: openai.OpenAI(base_url=servers["front"] + "/v1", api_key=key, max_retries=0)
            for key in (STRICT, LOOSE)}
    yield made
    for c in made.values():
        c.close()


def test_a_key_held_to_the_watermark_has_its_opt_out_stripped(servers, clients):
    strict = clients[STRICT]
    r = strict.chat.completions.create(model="tiny", messages=HELLO, max_tokens=3, user="s-chat",
                                       extra_body={"watermarking": False})
    assert r.choices[0].message.content is not None
    assert upstream_line(servers["log"], "s-chat")["watermark_key_id"] == KEY_ID
    strict.completions.create(model="tiny", prompt="Hi", max_tokens=3, user="s-text",
                              extra_body={"watermarking": False})
    assert upstream_line(servers["log"], "s-text")["watermark_key_id"] == KEY_ID
    # Seed's /v1/responses has no such field: the upstream would refuse it, had it reached it
    out = strict.responses.create(model="tiny", input="Hi", max_output_tokens=16,
                                  extra_body={"watermarking": False})
    assert out.status in ("completed", "incomplete")


def test_a_key_that_may_opt_out_has_the_field_passed_through(servers, clients):
    loose = clients[LOOSE]
    loose.chat.completions.create(model="tiny", messages=HELLO, max_tokens=3, user="l-chat",
                                  extra_body={"watermarking": False})
    assert "watermark_key_id" not in upstream_line(servers["log"], "l-chat")
    loose.chat.completions.create(model="tiny", messages=HELLO, max_tokens=3, user="l-on")
    assert upstream_line(servers["log"], "l-on")["watermark_key_id"] == KEY_ID
    with pytest.raises(openai.BadRequestError) as e:  # the upstream's own schema judges it
        loose.responses.create(model="tiny", input="Hi", max_output_tokens=16,
                               extra_body={"watermarking": False})
    assert "watermarking" in e.value.message


def test_a_watermark_key_with_upstream_is_refused_at_start_naming_vllms_option(servers):
    config = ServeConfig(upstream="http://127.0.0.1:9/v1", watermark_key_file=servers["key"])
    with pytest.raises(UserError, match=r"^--watermark-key-file: an upstream server cannot be "
                                        r"watermarked by Seed .*vLLM: --watermark-config") as e:
        run_server(config)  # before anything starts: port 9 is never tried
    assert KEY.decode() not in str(e.value)
    assert KEY not in servers["output"].read_bytes() + servers["log"].read_bytes()
