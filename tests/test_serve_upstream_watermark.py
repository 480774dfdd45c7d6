"""Upstream mode and the watermark: `seed serve --upstream` cannot watermark, and strips an opt-out.

In front, `seed serve --upstream` with a keys.toml of two keys: `strict` (the watermark required,
the default) and `loose` (`watermark = "optional"`). Behind the first front, the fault server,
whose request log names the fields of each body it received (found by the user message): strict's
`watermarking: false` must not reach it, loose's must. Behind the second, the shared plain
`seed serve` (`tiny_server`), whose /v1/responses has no such field and refuses one that reaches
it: strict's Responses request is answered (stripped), loose's refused by the upstream.
"""

from __future__ import annotations

import hashlib

import openai
import pytest

from helpers.serve import running_server
from helpers.servers import fault_server
from seed.errors import UserError
from seed.recipe import ServeConfig
from seed.serve.server import run_server

STRICT, LOOSE = "sk-strict-4410", "sk-loose-8c2e"
OFF = {"watermarking": False}


def sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    path = tmp_path_factory.mktemp("upstream-wm") / "front.toml"
    path.write_text(f'[keys.strict]\nsha256 = "{sha(STRICT)}"\n\n'
                    f'[keys.loose]\nsha256 = "{sha(LOOSE)}"\nwatermark = "optional"\n')
    return path


def clients(url: str) -> dict[str, openai.OpenAI]:
    return {k: openai.OpenAI(base_url=url + "/v1", api_key=k, max_retries=0)
            for k in (STRICT, LOOSE)}


def test_chat_opt_outs_reach_the_upstream_only_from_a_key_that_may_opt_out(keys, tmp_path):
    with fault_server(tmp_path) as upstream, \
            running_server("--upstream", upstream.base_url, "--keys-file", keys) as front:
        cs = clients(front)
        for key, text in ((STRICT, "strict asks"), (LOOSE, "loose asks")):
            cs[key].chat.completions.create(model="fault-model", max_tokens=4, extra_body=OFF,
                                            messages=[{"role": "user", "content": text}])
        for c in cs.values():
            c.close()
    received = {r["user"]: r["fields"] for r in upstream.requests()}
    assert received == {"strict asks": ["max_tokens", "messages", "model"],
                        "loose asks": ["max_tokens", "messages", "model", "watermarking"]}


def test_a_responses_opt_out_is_stripped_for_a_key_held_to_the_watermark(keys, tiny_server):
    with running_server("--upstream", tiny_server, "--keys-file", keys) as front:
        cs = clients(front)
        out = cs[STRICT].responses.create(model="tiny", input="Hi", max_output_tokens=16,
                                          extra_body=OFF)
        assert out.status in ("completed", "incomplete")
        with pytest.raises(openai.BadRequestError) as e:  # the upstream's own schema judged it
            cs[LOOSE].responses.create(model="tiny", input="Hi", max_output_tokens=16,
                                       extra_body=OFF)
        assert "watermarking" in e.value.message
        for c in cs.values():
            c.close()


def test_a_watermark_key_with_upstream_is_refused_at_start_naming_vllms_option(tmp_path):
    key = tmp_path / "watermark.key"
    key.write_bytes(b"upstream-wm-secret-5e21")
    config = ServeConfig(upstream="http://127.0.0.1:9/v1", watermark_key_file=key)
    with pytest.raises(UserError, match=r"^--watermark-key-file: an upstream server cannot be "
                                        r"watermarked by Seed .*vLLM: --watermark-config") as e:
        run_server(config)  # before anything starts: port 9 is never tried
    assert "upstream-wm-secret" not in str(e.value)
