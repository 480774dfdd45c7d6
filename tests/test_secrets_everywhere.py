"""Nothing Seed writes or says holds a key, a key's hash or, outside the files whose job is to hold
them, a prompt's text.

One flow reaches every writer. `seed serve` runs with a keys.toml of three keys (hashed by
`seed keys hash`), a watermark key file, a usage log and a served-windows directory, its output
captured. Through openai-python, alice sends chats with logprobs, a forced tool call (then its
result and a system prompt), a stream, /v1/completions and /v1/responses, reads /metrics and
/v1/models, and meets each refusal her policy makes (403 for another model, 400 for `n`,
`top_logprobs`, `watermarking: false` and an invalid body); carol's key has expired and a fourth
key is wrong (401). `seed run` uses the server as its teacher with bob's key from an environment
variable: bob's rpm lets some prompts through and 429s the rest, so the run writes records, a
request cache (SQLite), failed.jsonl, a manifest, a dataset card, a training log, its watermark
check ([eval.watermark]) and a report; bob's next request is a 429. `seed generate` with the
wrong key fails in one line. Radioactivity's API mode asks the server with alice's key and its
own cache, kept to the windows served to her; once the server has stopped, `seed audit` (text and
--json, --suggest) reads the usage log, and `seed watermark detect` and radioactivity's reading
mode (text and JSON) the records. Those two and the API mode run in this process, through the
functions their commands call (a process per output format would import torch again), as do two
user errors: a keys.toml holding a raw key (what `seed serve` loads) and a missing key file.

Then every byte is searched: every file under the test's directory (SQLite files as bytes), every
captured stdout, stderr and log line, every HTTP error body. The API keys (raw, base64, as a
bearer header) are in none; each key's SHA-256 (whole or its first 16 hex digits) only in
keys.toml; the watermark key (raw, hex, base64, its whole SHA-256, the seeds derived from it) only
in its own file; the prompts' texts only in the prompts file, records, failed.jsonl and request
caches, never in the usage log, the server's output, audit or detector output, or an error.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import io
import json
import logging
import subprocess
from collections.abc import Callable
from pathlib import Path

import httpx
import openai
import pytest

from helpers.cli import assert_one_line_error, start_cli
from helpers.models import CORPUS, HERMES_THINK, tiny_model
from helpers.recipes import teacher_recipe, write_recipe
from helpers.serve import seed_env, serving
from seed.errors import UserError
from seed.protect.detect import run_detect
from seed.protect.radioactivity import run_reading
from seed.protect.radioactivity_api import run_api
from seed.protect.watermark import WatermarkKey
from seed.serve.policy import KeyPolicies

KEYS = {"alice": "sk-everywhere-alice-5d1e07", "bob": "sk-everywhere-bob-9a07c2",
        "carol": "sk-everywhere-carol-33e8f1"}
WRONG_KEY = "sk-everywhere-nobody-0000aa"
RAW_KEY = "sk-everywhere-dave-in-a-file-41"  # written into a keys.toml, which serve refuses
WM_KEY = b"\x9c\x01everywhere-watermark\xff\x10\x00\x7f"
BOB_RPM = 4
GAMMA, CONTEXT = 0.25, 2  # the server's watermark settings (ServeConfig's defaults)

# Each prompt holds a made-up word no tiny model writes, so a leak of any part of it is found.
SYSTEM = "You are Halvard, the concierge of the Veltmoor hotel."
ASK = "Describe the amber lighthouse of Quillon in three words."
TOOL_RESULT = "Drizzle over the Quillon harbour, fourteen degrees."
COMPLETION = "Once upon a time in Marrowgate there lived"
RESPONSE_INPUT = "Name a bird that nests on the cliffs of Ostravel."
INSTRUCTIONS = "Answer as the archivist of Brindlemark would."
REFUSED = "Sing the anthem of Corvanth for me."
GENERATE = [f"Explain why the {animal} of Zembla sleeps at noon."
            for animal in ("otter", "heron", "lynx", "marten", "ibis", "newt")]
PROMPTS = [SYSTEM, ASK, TOOL_RESULT, COMPLETION, RESPONSE_INPUT, INSTRUCTIONS, REFUSED, *GENERATE]
WORDS = ["Halvard", "Veltmoor", "Quillon", "Marrowgate", "Ostravel", "Brindlemark", "Corvanth",
         "Zembla"]
# The files whose job is to hold prompts: ours, the records, the prompts that failed (a rerun
# asks them again) and the request caches (keyed by a hash of the messages; they hold answers).
PROMPT_FILES = ("prompts.", "train.jsonl", "failed.jsonl", "cache.sqlite", "radio.sqlite")

LOOKUP = {"type": "function", "function": {
    "name": "lookup", "description": "The weather at a place.",
    "parameters": {"type": "object", "additionalProperties": False, "required": ["place"],
                   "properties": {"place": {"enum": ["harbour", "hill"]}}}}}
CALL = '<tool_call>\n{"name": "lookup", "arguments": {"place": "harbour"}}\n</tool_call>'


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def api_key_forms() -> dict[str, bytes]:
    """Each API key as it could leak: raw, in base64, as a bearer header."""
    forms = {}
    for label, key in {**KEYS, "wrong": WRONG_KEY, "dave": RAW_KEY}.items():
        forms |= {f"{label} key": key.encode(), f"{label} key, base64": base64.b64encode(
            key.encode()), f"{label} bearer": f"Bearer {key}".encode()}
    return forms


def watermark_forms() -> dict[str, bytes]:
    """The watermark key as it could leak: its bytes, hex, base64, its SHA-256 beyond the public
    12-digit id (hex or raw), the seeds derived from it (decimal, hex, packed)."""
    seeds = WatermarkKey.from_bytes(WM_KEY)
    sha = hashlib.sha256(WM_KEY)
    forms = {"raw": WM_KEY, "hex": WM_KEY.hex().encode(), "base64": base64.b64encode(WM_KEY),
             "sha256": sha.hexdigest().encode(), "sha256 prefix": sha.hexdigest()[:16].encode(),
             "sha256 bytes": sha.digest()}
    for name in ("window_seed", "token_seed", "multiplier"):
        value = getattr(seeds, name)
        forms |= {name: str(value).encode(), f"{name} hex": f"{value:x}".encode(),
                  f"{name} packed": value.to_bytes(8, "little")}
    return forms


def keys_toml(hashes: dict[str, str]) -> str:
    return f"""
[keys.alice]
sha256 = "{hashes['alice']}"
models = ["tiny"]
max_n = 1
max_top_logprobs = 2
max_tokens = 64

[keys.bob]
sha256 = "{hashes['bob']}"
rpm = {BOB_RPM}

[keys.carol]
sha256 = "{hashes['carol']}"
expires = 2020-01-01
"""


def start_together(cwd: Path, commands: dict[str, tuple[tuple[str | Path, ...], dict[str, str]]]
                   ) -> dict[str, tuple[subprocess.Popen, list[str]]]:
    """Start several `seed` commands (name -> arguments, environment) at once."""
    return {name: (start_cli(*args, cwd=cwd, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True), list(map(str, args)))
            for name, (args, env) in commands.items()}


def finished(started: dict[str, tuple[subprocess.Popen, list[str]]]
             ) -> dict[str, subprocess.CompletedProcess[str]]:
    """Each started command run to the end, with what it printed."""
    done = {}
    for name, (p, args) in started.items():
        out, err = p.communicate(timeout=300)
        done[name] = subprocess.CompletedProcess(args, p.returncode, out, err)
    return done


def hash_keys() -> dict[str, subprocess.Popen]:
    """Each key through `seed keys hash` on its stdin, as an operator writes keys.toml (its output
    is the hash: it goes into keys.toml and is kept nowhere else)."""
    procs = {label: start_cli("keys", "hash", env=seed_env(), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for label in KEYS}
    for label, p in procs.items():
        assert p.stdin is not None
        p.stdin.write(KEYS[label])
        p.stdin.close()
    return procs


def hashed(procs: dict[str, subprocess.Popen]) -> dict[str, str]:
    """The hashes `hash_keys` printed (each checked against hashlib's)."""
    hashes: dict[str, str] = {}
    for label, p in procs.items():
        assert p.stdout is not None and p.stderr is not None
        out, err = p.stdout.read(), p.stderr.read()
        assert p.wait(timeout=60) == 0, err
        hashes[label] = out.strip()
    assert hashes == {label: digest(key) for label, key in KEYS.items()}
    return hashes


def refusal(said: dict[str, bytes], name: str, error: type[openai.APIStatusError], call) -> None:
    """`call()` must fail with `error`; its HTTP body is kept to be searched."""
    with pytest.raises(error) as e:
        call()
    said[f"HTTP {e.value.status_code} body: {name}"] = e.value.response.content


def alices_traffic(url: str, said: dict[str, bytes], tmp: Path) -> None:
    """Every route and field alice may use, every refusal she and the other keys meet."""
    alice = openai.OpenAI(base_url=url + "/v1", api_key=KEYS["alice"], max_retries=0)
    chat = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": ASK}]
    r = alice.chat.completions.create(model="tiny", messages=chat, max_tokens=12,
                                      temperature=1.0, logprobs=True, top_logprobs=2)
    (tmp / "inputs" / "reply.json").write_text(r.model_dump_json())  # for the detector
    called = alice.chat.completions.create(
        model="tiny", messages=chat, tools=[LOOKUP], max_tokens=40, temperature=0,
        parallel_tool_calls=False, tool_choice={"type": "function", "function": {"name": "lookup"}},
        extra_body={"chat_template_kwargs": {"enable_thinking": False}}).choices[0].message
    [call] = called.tool_calls
    history = [*chat, called, {"role": "tool", "tool_call_id": call.id, "content": TOOL_RESULT}]
    alice.chat.completions.create(model="tiny", messages=history, tools=[LOOKUP], max_tokens=4)
    streamed = alice.chat.completions.create(model="tiny", messages=chat, max_tokens=6,
                                             stream=True, stream_options={"include_usage": True})
    assert [c for c in streamed if c.usage is not None]
    alice.completions.create(model="tiny", prompt=COMPLETION, max_tokens=6)
    alice.responses.create(model="tiny", input=RESPONSE_INPUT, instructions=INSTRUCTIONS,
                           max_output_tokens=16)
    ask = [{"role": "user", "content": REFUSED}]
    refusal(said, "another model", openai.PermissionDeniedError, lambda: alice.chat.completions
            .create(model="other", messages=ask, max_tokens=4))
    refusal(said, "n", openai.BadRequestError, lambda: alice.chat.completions.create(
        model="tiny", messages=ask, max_tokens=4, n=2))
    refusal(said, "top_logprobs", openai.BadRequestError, lambda: alice.chat.completions.create(
        model="tiny", messages=ask, max_tokens=4, logprobs=True, top_logprobs=5))
    refusal(said, "watermarking", openai.BadRequestError, lambda: alice.chat.completions.create(
        model="tiny", messages=ask, max_tokens=4, extra_body={"watermarking": False}))
    refusal(said, "invalid body", openai.BadRequestError, lambda: alice.chat.completions.create(
        model="tiny", messages=[{"role": "villain", "content": REFUSED}], max_tokens=4))
    for route in ("/metrics", "/v1/models"):  # what the server tells about its keys
        said[f"GET {route}"] = httpx.get(url + route, headers={
            "Authorization": f"Bearer {KEYS['alice']}"}).raise_for_status().content
    for label, key in (("expired", KEYS["carol"]), ("wrong key", WRONG_KEY)):
        other = openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0)
        refusal(said, label, openai.AuthenticationError, lambda c=other: c.chat.completions
                .create(model="tiny", messages=ask, max_tokens=4))


def run_recipe(url: str, tmp: Path, inp: dict[str, Path]) -> Path:
    """A distiller's recipe: the server as teacher, its key from the environment, one request at
    a time and no retry (so bob's 429s become failed prompts), a two-step student; and the
    teacher's own check of the run for its watermark ([eval.watermark])."""
    prompts = tmp / "inputs" / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in GENERATE))
    return write_recipe(tmp / "inputs" / "recipe.toml", teacher_recipe(url + "/v1", prompts,
                                                                      model="tiny"), {
        "name": "everywhere", "generate.teacher.api_key_env": "SEED_EVERYWHERE_KEY",
        "generate.num_records": len(GENERATE), "generate.eval_prompts": 0,
        "generate.limits": {"concurrency": 1, "max_attempts": 1},
        # every answer is kept, however a random model writes it: only the 429s fail
        "generate.filters": {"min_answer_chars": 0, "drop_refusals": False, "identity": "off"},
        "generate.params": {"max_tokens": 8, "temperature": 1.0, "logprobs": True,
                            "top_logprobs": 2},
        "train": {"max_steps": 2, "batch_size": 2, "seq_len": 64, "warmup_steps": 1,
                  "threads": 1, "student": {"size": "nano"}, "tokenizer": {"kind": "chars"}},
        "eval.watermark": {"key_file": inp["wm"], "tokenizer": inp["model"], "decoys": 10},
        "policy": {"distribute": False}})


def said_here(said: dict[str, bytes], name: str, call: Callable[[], object]) -> None:
    """Run one of Seed's commands in this process (torch is imported already: a process per
    output format would import it again), keeping what it printed (`name`) and what it wrote to
    stderr, logged or raised (`name: stderr`)."""
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(err)
    logging.getLogger().addHandler(handler)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            call()
    except UserError as e:
        err.write(f"error: {e}\n")
    finally:
        logging.getLogger().removeHandler(handler)
    said[name], said[f"{name}: stderr"] = out.getvalue().encode(), err.getvalue().encode()


def inputs_for(root: Path) -> dict[str, Path]:
    """What an operator and a distiller start from: the model, keys.toml (hashed by
    `seed keys hash`), the watermark key, the prompts (a file of lines; the recipe's JSONL)."""
    inputs = root / "inputs"
    inputs.mkdir()
    hashing = hash_keys()
    model = tiny_model(inputs / "tiny", template=HERMES_THINK, vocab=600,
                       texts=[*CORPUS, json.dumps([LOOKUP]), CALL], context=1024,
                       added_tokens=("<tool_call>", "</tool_call>", "<think>", "</think>"))
    keys = inputs / "keys.toml"
    keys.write_text(keys_toml(hashed(hashing)))
    keys.chmod(0o600)
    (inputs / "watermark.key").write_bytes(WM_KEY)
    (inputs / "prompts.txt").write_text("\n".join(GENERATE) + "\n")
    return {"model": model, "keys": keys, "wm": inputs / "watermark.key",
            "prompts": inputs / "prompts.txt", "usage": root / "serve" / "usage.jsonl",
            "served": root / "serve" / "served",
            "records": root / "runs" / "everywhere" / "data" / "train.jsonl"}


def serve_and_ask(root: Path, inp: dict[str, Path], said: dict[str, bytes]
                  ) -> dict[str, subprocess.CompletedProcess[str]]:
    """The server's life: alice's traffic, `seed run` with bob's key, `seed generate` with the
    wrong one, radioactivity's API mode with alice's, bob's 429; then its output."""
    env = {label: seed_env() | {"SEED_EVERYWHERE_KEY": key}
           for label, key in {**KEYS, "wrong": WRONG_KEY}.items()}
    with serving(inp["model"], "--keys-file", inp["keys"], "--watermark-key-file", inp["wm"],
                 "--usage-log", inp["usage"], "--watermark-served-dir", inp["served"],
                 "--tool-parser", "hermes",
                 "--reasoning-parser", "none") as (url, proc):
        alices_traffic(url, said, root)
        recipe = run_recipe(url, root, inp)
        clients = start_together(root, {
            "seed run": (("run", recipe), env["bob"]),
            "seed generate, wrong key": (("generate", recipe, "--out", root / "wrong"),
                                         env["wrong"])})
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SEED_EVERYWHERE_KEY", KEYS["alice"])
            said_here(said, "radioactivity, API", lambda: run_api(
                url + "/v1", "tiny", inp["wm"], [inp["prompts"]], inp["model"], gamma=GAMMA,
                context=CONTEXT, decoys=10, threshold=1e-5, as_json=True,
                api_key_env="SEED_EVERYWHERE_KEY", max_tokens=8, temperature=0.0, max_cost=None,
                cache=root / "radio" / "radio.sqlite", served_to="alice",
                served_dir=inp["served"]))
        outputs = finished(clients)
        bob = openai.OpenAI(base_url=url + "/v1", api_key=KEYS["bob"], max_retries=0)
        refusal(said, "rpm", openai.RateLimitError, lambda: bob.chat.completions.create(
            model="tiny", max_tokens=4, messages=[{"role": "user", "content": REFUSED}]))
        proc.terminate()
        said["seed serve output"] = proc.communicate(timeout=30)[0].encode()
    return outputs


def read_back(root: Path, inp: dict[str, Path], said: dict[str, bytes]
              ) -> dict[str, subprocess.CompletedProcess[str]]:
    """`seed audit` on the usage log; detect and radioactivity's reading mode on the records;
    two user errors: a keys.toml holding a raw key, a key file that is not there."""
    audits = start_together(root, {
        "audit --json": (("audit", inp["usage"], "--json", "--suggest"), seed_env()),
        "audit": (("audit", inp["usage"], "--suggest"), seed_env())})
    model, wm, records = inp["model"], inp["wm"], inp["records"]
    for as_json in (True, False):
        form = " --json" if as_json else ""
        said_here(said, "detect" + form, lambda j=as_json: run_detect(
            [records, root / "inputs" / "reply.json"], [wm], model, gamma=GAMMA,
            context=CONTEXT, threshold=1e-3, as_json=j))
        said_here(said, "radioactivity" + form, lambda j=as_json: run_reading(
            model, wm, [records], gamma=GAMMA, context=CONTEXT, decoys=10, threshold=1e-5,
            as_json=j))
    raw = root / "inputs" / "raw-keys.toml"
    raw.write_text(f'[keys.dave]\nkey = "{RAW_KEY}"\n')
    said_here(said, "serve, raw key in keys.toml", lambda: KeyPolicies.load(None, raw))
    said_here(said, "detect, missing key file", lambda: run_detect(
        [records], [root / "absent.key"], model, gamma=GAMMA, context=CONTEXT, threshold=1e-3,
        as_json=True))
    return finished(audits)


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    """Everything the flow wrote (path -> bytes, under `root`) and said (name -> bytes)."""
    root = tmp_path_factory.mktemp("everywhere")
    inp = inputs_for(root)
    said: dict[str, bytes] = {}
    outputs = serve_and_ask(root, inp, said) | read_back(root, inp, said)
    for name, p in outputs.items():
        said[f"{name}: stdout"], said[f"{name}: stderr"] = p.stdout.encode(), p.stderr.encode()
    written = {p.relative_to(root): p.read_bytes() for p in root.rglob("*") if p.is_file()}
    return {"root": root, "written": written, "said": said, "outputs": outputs,
            "usage": [json.loads(line) for line in inp["usage"].read_text().splitlines()]}


def leaks(flow, needles: dict[str, bytes], allowed: tuple[str, ...] = ()) -> list[str]:
    """Where each needle is found, in a written file not named in `allowed` or in what was said."""
    places = {str(p): data for p, data in flow["written"].items()
              if not any(part.startswith(allowed) for part in p.parts)}
    places |= flow["said"]
    return [f"{name} in {place}" for name, needle in needles.items()
            for place, data in places.items() if needle in data]


def test_every_writer_ran_and_every_refusal_happened(flow):
    out = flow["outputs"]
    assert out["seed run"].returncode == 0, out["seed run"].stderr
    run = flow["root"] / "runs" / "everywhere"
    for name in ("manifest.json", "report.html", "data/README.md", "data/cache.sqlite",
                 "train/metrics.jsonl", "watermark/watermark.json"):
        assert (run / name).is_file(), name
    assert {p.stem for p in (flow["root"] / "serve" / "served").iterdir()} >= {"alice", "bob"}
    records = (run / "data/train.jsonl").read_text().splitlines()
    failed = (run / "data/failed.jsonl").read_text().splitlines()
    assert len(records) == BOB_RPM and len(failed) == len(GENERATE) - BOB_RPM
    assert all("429" in json.loads(line)["reason"] for line in failed), failed
    seen = {(u["key"], u["status"]) for u in flow["usage"]}
    assert {("alice", 200), ("alice", 403), ("alice", 400), ("bob", 200), ("bob", 429),
            ("carol", 401)} <= seen, seen
    assert {u["route"] for u in flow["usage"] if u["status"] == 200} >= {
        "/v1/chat/completions", "/v1/completions", "/v1/responses"}
    key_id = hashlib.sha256(WM_KEY).hexdigest()[:12]
    for name, field in (("detect --json", "detected"), ("radioactivity --json", "radioactive"),
                        ("radioactivity, API", "radioactive")):
        result = json.loads(flow["said"][name])
        assert result["key_id"] == key_id and field in result, result
    api = json.loads(flow["said"]["radioactivity, API"])
    assert api["served_to"] == "alice" and api["served_of"] > 0  # the answers' tuples, filtered
    report = json.loads((run / "watermark/watermark.json").read_text())
    assert key_id in json.dumps(report)
    assert b"p " in flow["said"]["detect"] and b"key " + key_id.encode() in flow["said"][
        "radioactivity"]
    audit = json.loads(out["audit --json"].stdout)
    assert {k["key"] for k in audit["keys"]} >= {"alice", "bob"} and "1. " in out["audit"].stdout
    assert_one_line_error(out["seed generate, wrong key"], "401")
    for name, needles in (("serve, raw key in keys.toml", (b"keys.dave.key", b"raw-keys.toml")),
                          ("detect, missing key file", (b"--key-file", b"absent.key"))):
        message = flow["said"][f"{name}: stderr"].decode().strip()
        assert message.startswith("error: ") and "\n" not in message, message
        assert all(n.decode() in message for n in needles), message


def test_no_api_key_is_in_anything_written_or_said(flow):
    assert leaks(flow, api_key_forms(), allowed=("raw-keys.toml",)) == []


def test_a_key_hash_is_only_in_keys_toml(flow):
    hashes = {}
    for label, key in {**KEYS, "wrong": WRONG_KEY, "dave": RAW_KEY}.items():
        hashes |= {f"{label} sha256": digest(key).encode(),
                   f"{label} sha256 prefix": digest(key)[:16].encode(),
                   f"{label} sha256 bytes": hashlib.sha256(key.encode()).digest()}
    assert leaks(flow, hashes, allowed=("keys.toml",)) == []
    assert digest(KEYS["alice"]).encode() in flow["written"][Path("inputs/keys.toml")]


def test_the_watermark_key_is_only_in_its_own_file(flow):
    assert leaks(flow, watermark_forms(), allowed=("watermark.key",)) == []
    key_id = hashlib.sha256(WM_KEY).hexdigest()[:12]
    assert key_id.encode() in flow["said"]["detect --json"]  # the public id is shown


def test_prompt_texts_are_only_in_records_caches_and_failed_prompts(flow):
    needles = {p: p.encode() for p in PROMPTS} | {w: w.encode() for w in WORDS}
    assert leaks(flow, needles, allowed=PROMPT_FILES) == []
    records = flow["written"][Path("runs/everywhere/data/train.jsonl")]
    failed = flow["written"][Path("runs/everywhere/data/failed.jsonl")]
    assert sum(p.encode() in records + failed for p in GENERATE) == len(GENERATE)
    # the search reads inside SQLite: the cache holds the answers, as the records do
    cache = b"".join(data for path, data in flow["written"].items()
                     if path.parts[0] == "runs" and path.name.startswith("cache.sqlite"))
    answers = [json.loads(line)["messages"][-1]["content"] for line in records.splitlines()]
    longest = max(answers, key=len)
    assert longest and json.dumps(longest, ensure_ascii=False)[1:-1].encode() in cache
