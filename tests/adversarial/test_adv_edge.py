"""The edge of `seed serve` under attack and misuse: what a request must pass before its body is
read (Host, key, size), keys and usage logs that cannot work, and an upstream that fails.

One real keyed server of a tiny model for the module (1 MiB body limit, a usage log), one upstream
front of the fault server; the start-up refusals are real `seed serve` runs. The 1-second and
100 MB bounds are the issue's: before, four 300 MB bodies without a key were read whole (the
process grew by 3 GB) before the 401.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import shutil
import threading
import time
from pathlib import Path

import httpx
import pytest

from helpers.cli import assert_one_line_error, run_cli
from helpers.recipes import write_recipe
from helpers.serve import seed_env, serving
from helpers.servers import fault_server
from seed.errors import UserError
from seed.serve.auth import load_keys

KEY = "sk-edge-test"
UPSTREAM_KEY = "sk-upstream-test"
LIMIT = 1024 * 1024
MB = 1024 * 1024
CHAT = {"model": "tiny", "max_tokens": 2, "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir  # the session's tiny model: nothing more to build


@pytest.fixture(scope="module")
def keyed(model_dir, tmp_path_factory):
    """A server with one key, a usage log, a 1 MiB body limit and one extra host name."""
    tmp = tmp_path_factory.mktemp("keyed")
    keys = tmp / "keys.txt"
    keys.write_text(f"{KEY}\n")
    keys.chmod(0o600)
    log = tmp / "usage.jsonl"
    recipe = write_recipe(tmp / "serve.toml", {"serve": {
        "model": model_dir, "model_name": "tiny", "keys_file": keys, "usage_log": log,
        "max_body_bytes": LIMIT, "allowed_hosts": ["seed.internal"]}})
    with serving("--recipe", recipe) as (url, proc):
        yield {"url": url, "pid": proc.pid, "log": log}


def auth(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for {pid}")


def requests_counted(url: str, route: str, status: int) -> int:
    text = httpx.get(url + "/metrics", headers=auth()).text
    found = re.search(re.escape(f'seed_requests_total{{route="{route}",status="{status}"}} ')
                      + r"(\d+)", text)
    return int(found.group(1)) if found else 0


async def post_streamed_body(url: str, megabytes: int, headers: dict[str, str],
                             clients: int) -> list[tuple[str, float]]:
    """`clients` concurrent chat posts, each a body of `megabytes` MiB sent from a generator (so
    this process stays small); each one's status (or the connection error's type) and seconds."""
    chunk = b"x" * MB

    async def body():
        for _ in range(megabytes):
            yield chunk

    async def one(client: httpx.AsyncClient) -> tuple[str, float]:
        start = time.monotonic()
        try:
            r = await client.post(url + "/v1/chat/completions", content=body(),
                                  headers={"Content-Type": "application/json", **headers})
            return str(r.status_code), time.monotonic() - start
        except httpx.TransportError as e:  # reset while still sending: the answer is lost
            return type(e).__name__, time.monotonic() - start

    async with httpx.AsyncClient(timeout=30) as client:
        return await asyncio.gather(*[one(client) for _ in range(clients)])


@contextlib.contextmanager
def peak_rss(pid: int):
    """The highest VmRSS of `pid` (MB) while the block runs, sampled every 10 ms."""
    peak = [rss_mb(pid)]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], rss_mb(pid))
            time.sleep(0.01)

    thread = threading.Thread(target=sample)
    thread.start()
    try:
        yield peak
    finally:
        done.set()
        thread.join()


@pytest.mark.parametrize(("headers", "status"), [({}, 401), (auth(), 413)],
                         ids=["without-a-key", "over-the-limit-with-a-key"])
def test_four_300_mb_bodies_are_refused_within_a_second_in_bounded_memory(keyed, headers,
                                                                        status):
    url, pid = keyed["url"], keyed["pid"]
    assert httpx.post(url + "/v1/chat/completions", json=CHAT, headers=auth()).status_code == 200
    idle = rss_mb(pid)
    before = requests_counted(url, "/v1/chat/completions", status)
    with peak_rss(pid) as peak:
        outcomes = asyncio.run(post_streamed_body(url, 300, headers, clients=4))
    print(f"idle {idle:.0f} MB, peak {peak[0]:.0f} MB, outcomes {outcomes}")
    for outcome, seconds in outcomes:
        assert outcome in (str(status), "ReadError", "WriteError", "RemoteProtocolError")
        assert seconds < 1.0, outcomes
    assert requests_counted(url, "/v1/chat/completions", status) == before + 4
    assert peak[0] < idle + 100, (idle, peak[0])


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_body_just_over_the_limit_is_a_413_the_client_reads(keyed, declared):
    body = json.dumps({**CHAT, "messages": [{"role": "user", "content": "x" * (LIMIT + 10)}]})
    content = body.encode() if declared else iter([body.encode()])
    r = httpx.post(keyed["url"] + "/v1/chat/completions", content=content,
                   headers={"Content-Type": "application/json", **auth()})
    assert r.status_code == 413
    error = r.json()["error"]
    assert (error["type"], error["code"]) == ("invalid_request_error", "request_too_large")
    assert str(LIMIT) in error["message"] and "serve.max_body_bytes" in error["message"]


def test_a_foreign_host_header_is_refused_and_local_names_are_served(keyed):
    url = keyed["url"]
    port = url.rsplit(":", 1)[1]
    for host in ("evil.example", f"evil.example:{port}", "127.0.0.1.evil.example"):
        r = httpx.get(url + "/health", headers={"Host": host})
        assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_host", host
    for host in (f"localhost:{port}", "127.0.0.1", f"[::1]:{port}", "seed.internal",
                 f"SEED.internal:{port}"):
        assert httpx.get(url + "/health", headers={"Host": host}).status_code == 200, host
    r = httpx.post(url + "/v1/chat/completions", json=CHAT,
                   headers={"Host": f"localhost:{port}", **auth()})
    assert r.status_code == 200


def test_metrics_need_the_key_when_keys_are_set_and_health_and_page_do_not(keyed):
    url = keyed["url"]
    r = httpx.get(url + "/metrics")
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.get(url + "/metrics", headers=auth())
    assert r.status_code == 200 and "seed_queue_depth 0" in r.text
    assert "seed_running_sequences 0" in r.text
    assert httpx.get(url + "/health").json() == {"status": "ok"}
    assert httpx.get(url + "/").status_code == 200
    assert httpx.get(url + "/v1/no-such-route").status_code == 401


@pytest.mark.parametrize("scheme", ["bearer", "BEARER", "Bearer"])
def test_the_bearer_scheme_is_accepted_in_any_case(keyed, scheme):
    r = httpx.get(keyed["url"] + "/v1/models", headers={"Authorization": f"{scheme} {KEY}"})
    assert r.status_code == 200 and r.json()["data"][0]["id"] == "tiny"


def test_refused_keys_are_counted_and_logged_without_the_key(keyed):
    url = keyed["url"]
    before = requests_counted(url, "/v1/models", 401)
    r = httpx.get(url + "/v1/models", headers=auth("sk-a-wrong-secret"))
    assert r.status_code == 401
    assert requests_counted(url, "/v1/models", 401) == before + 1
    text = keyed["log"].read_text()
    assert "sk-a-wrong-secret" not in text and KEY not in text
    refused = [e for e in map(json.loads, text.splitlines()) if e["status"] == 401]
    assert refused[-1]["key"] is None and refused[-1]["route"] == "/v1/models"


def test_a_huge_client_chosen_model_name_never_reaches_the_usage_log(keyed):
    r = httpx.post(keyed["url"] + "/v1/chat/completions", json={**CHAT, "model": "m" * 100_000},
                   headers=auth())
    assert r.status_code == 400 and len(r.content) < 2000
    last = keyed["log"].read_text().splitlines()[-1]
    assert len(last) < 1000
    assert json.loads(last)["status"] == 400 and json.loads(last)["key"] == "key-1"


def test_a_usage_log_that_breaks_while_serving_never_fails_a_request(keyed):
    url, log = keyed["url"], keyed["log"]
    kept = log.read_text()
    log.unlink()
    log.mkdir()  # every append now fails, as on a full disk
    try:
        for stream in (False, True):
            r = httpx.post(url + "/v1/chat/completions", json={**CHAT, "stream": stream},
                           headers=auth())
            assert r.status_code == 200 and r.text
        metrics = httpx.get(url + "/metrics", headers=auth()).text
        assert re.search(r"^seed_usage_log_errors_total [2-9]", metrics, re.M), metrics
    finally:
        shutil.rmtree(log)
        log.write_text(kept)


def test_an_empty_api_key_is_refused_at_start(model_dir):
    flag = run_cli("serve", model_dir, "--api-key", "", env=seed_env())
    assert_one_line_error(flag, "--api-key", "empty")
    env = run_cli("serve", model_dir, env={**seed_env(), "SEED_API_KEY": ""})
    assert_one_line_error(env, "SEED_API_KEY", "empty")


def test_an_unwritable_usage_log_is_refused_at_start(model_dir, tmp_path):
    (tmp_path / "a-file").write_text("")
    r = run_cli("serve", model_dir, "--usage-log", tmp_path / "a-file" / "usage.jsonl",
                env=seed_env())
    assert_one_line_error(r, "--usage-log", "serve.usage_log", "a-file")


@pytest.mark.parametrize(("content", "problem"), [
    (b"", "holds no key"),
    (b"# only a comment\n\n", "holds no key"),
    (b"\xef\xbb\xbfsk-bom-key\n", "line 1 starts with a byte-order mark"),
    (b"sk-fine\nsk-caf\xc3\xa9\n", "line 2 holds a space or a non-ASCII character"),
    (b"sk-fine\n# c\nsk-two words\n", "line 3 holds a space or a non-ASCII character"),
    (b"sk-fine\n\xff\xfe\n", "line 2 is not UTF-8"),
], ids=["empty", "comments-only", "bom", "non-ascii", "space", "not-utf8"])
def test_a_keys_file_that_cannot_hold_its_keys_is_refused_naming_the_line(tmp_path, content,
                                                                          problem):
    path = tmp_path / "keys.txt"
    path.write_bytes(content)
    with pytest.raises(UserError) as e:
        load_keys(None, path, environ={})
    assert str(path) in str(e.value) and problem in str(e.value)
    assert "sk-" not in str(e.value).replace(str(path), "")


def test_a_world_readable_keys_file_is_warned_about_without_the_key(tmp_path, caplog):
    path = tmp_path / "keys.txt"
    path.write_text("sk-readable-by-all\n")
    path.chmod(0o644)
    with caplog.at_level(logging.WARNING):
        assert load_keys(None, path, environ={}) == ["sk-readable-by-all"]
    assert [r.getMessage() for r in caplog.records] == [
        f"{path}: the keys file is readable by every user (mode 644); chmod 600 it"]
    path.chmod(0o600)
    caplog.clear()
    load_keys(None, path, environ={})
    assert not caplog.records


@pytest.fixture(scope="module")
def front(tmp_path_factory):
    """`seed serve --upstream` (no keys of its own, a 1 s upstream timeout) in front of the fault
    server, which wants UPSTREAM_KEY; the fault server can be stopped by a test (the last)."""
    tmp = tmp_path_factory.mktemp("front")
    with contextlib.ExitStack() as upstream:
        fault = upstream.enter_context(fault_server(tmp, key=UPSTREAM_KEY))
        recipe = write_recipe(tmp / "front.toml", {"serve": {
            "upstream": fault.base_url, "upstream_timeout": 1}})
        with serving("--recipe", recipe, extra_env={"SEED_UPSTREAM_API_KEY": UPSTREAM_KEY}
                     ) as (url, _):
            yield {"url": url, "fault": fault, "stop_upstream": upstream.close, "tmp": tmp}


def fault_chat(content: str, **extra) -> dict:
    return {"model": "fault-model", "messages": [{"role": "user", "content": content}], **extra}


def test_an_upstream_that_refuses_seeds_key_is_a_502_naming_that_key(front):
    with serving("--upstream", front["fault"].base_url,
                 extra_env={"SEED_UPSTREAM_API_KEY": "sk-not-the-upstreams"}) as (url, _):
        r = httpx.post(url + "/v1/chat/completions", json=fault_chat("hello"))
    assert r.status_code == 502
    error = r.json()["error"]
    assert error["code"] == "upstream_auth_failed" and "SEED_UPSTREAM_API_KEY" in error["message"]
    assert "sk-not-the-upstreams" not in r.text


def test_upstream_errors_keep_their_status_in_openais_shape(front):
    url, fault = front["url"], front["fault"]
    assert httpx.post(url + "/v1/chat/completions", json=fault_chat("ok")).status_code == 200
    fault.faults(["500"], match="boom")
    r = httpx.post(url + "/v1/chat/completions", json=fault_chat("boom"))
    assert r.status_code == 500 and r.json()["error"]["message"] == "The server had an error"
    fault.faults(["429:7"], match="busy")
    r = httpx.post(url + "/v1/chat/completions", json=fault_chat("busy"))
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    r = httpx.post(url + "/v1/chat/completions", json={**fault_chat("x"), "model": "other"})
    assert r.status_code == 404 and "other" in r.json()["error"]["message"]


def test_an_upstream_that_hangs_up_is_a_502_and_one_that_stalls_a_504(front):
    url, fault = front["url"], front["fault"]
    fault.faults(["drop"], match="hang up")
    r = httpx.post(url + "/v1/chat/completions", json=fault_chat("hang up"))
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unavailable"
    fault.faults(["drop"], match="cut stream")
    with httpx.stream("POST", url + "/v1/chat/completions",
                      json=fault_chat("cut stream", stream=True)) as r:
        lines = [line for line in r.iter_lines() if line]
    assert r.status_code == 200
    assert json.loads(lines[-1].removeprefix("data: "))["error"]["code"] == "upstream_unavailable"
    fault.faults(["timeout:3"], match="stall")
    r = httpx.post(url + "/v1/chat/completions", json=fault_chat("stall"), timeout=10)
    assert r.status_code == 504 and r.json()["error"]["code"] == "upstream_timeout"
    assert "serve.upstream_timeout" in r.json()["error"]["message"]


def test_an_upstream_that_is_down_is_a_502_and_health_says_why(front):
    url = front["url"]
    assert httpx.get(url + "/health").json() == {"status": "ok"}
    front["stop_upstream"]()
    r = httpx.post(url + "/v1/chat/completions", json=fault_chat("anyone?"))
    assert r.status_code == 502 and r.json()["error"]["code"] == "upstream_unavailable"
    deadline = time.monotonic() + 5  # probed every 1.5 s: a stale verdict, not a hang
    while (health := httpx.get(url + "/health")).status_code == 200:
        assert time.monotonic() < deadline, "health still ok with the upstream down"
        time.sleep(0.1)
    assert health.status_code == 503 and "cannot be reached" in health.json()["error"]["message"]
