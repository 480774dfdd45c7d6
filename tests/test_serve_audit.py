"""`seed audit` on a real `seed serve`'s usage log, three keys driven at once as their owners would:

- key-1, a distiller: `seed generate` (Self-Instruct seed tasks, two turns, logprobs, 4 at a time);
- key-2, a person: MT-Bench questions (both turns) and AlpacaEval instructions through
  openai-python, reading each answer for a short random while (think times scaled down);
- key-3, an app: one system prompt and one template around short texts its users send.

The distiller ranks first with its signals named, the person is flagged by nothing, the app only
by template concentration; and no key, prompt text or system prompt is in the log or the audit.
"""

from __future__ import annotations

import json
import random
import subprocess
import threading
import time

import openai
import pytest

from helpers.cli import run_cli, start_cli
from helpers.models import tiny_model
from helpers.recipes import teacher_recipe, write_recipe
from helpers.serve import running_server, seed_env
from helpers.traffic import alpaca_instructions, answer_sentences, mt_bench, needs_data, seed_tasks

pytestmark = needs_data

KEYS = {"distiller": "sk-audit-distiller-0001", "person": "sk-audit-person-0002",
        "app": "sk-audit-app-0003"}
SYSTEM = "You are ReviewBot, the sentiment classifier of the Acme shop."
TEMPLATE = ('Classify the sentiment of this review as positive, negative or neutral.\n'
            'Review: "{text}"\nAnswer with one word.')


def person(url: str, rng: random.Random, errors: list[BaseException]) -> None:
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEYS["person"], max_retries=0)
        chats = [[t] for t in alpaca_instructions(4, skip=20)] + mt_bench(8)
        rng.shuffle(chats)
        for turns in chats:
            messages: list[dict] = []
            for turn in turns:
                messages.append({"role": "user", "content": turn})
                r = client.chat.completions.create(model="teacher", messages=messages,
                                                   max_tokens=12)
                messages.append({"role": "assistant", "content": r.choices[0].message.content})
                rng_sleep(rng, 0.2, 0.6)  # reading the answer, typing the next turn
    except BaseException as e:  # the test reports it
        errors.append(e)


def app(url: str, rng: random.Random, errors: list[BaseException]) -> None:
    try:
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEYS["app"], max_retries=0)
        for text in answer_sentences(16):
            client.chat.completions.create(
                model="teacher", max_tokens=4, temperature=0,
                messages=[{"role": "system", "content": SYSTEM},
                          {"role": "user", "content": TEMPLATE.format(text=text)}])
            rng_sleep(rng, 0.15, 0.45)  # the app's users arrive one by one
    except BaseException as e:  # the test reports it
        errors.append(e)


def rng_sleep(rng: random.Random, low: float, high: float) -> None:
    time.sleep(rng.uniform(low, high))


@pytest.fixture(scope="module")
def traffic(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("audit")
    model = tiny_model(tmp / "teacher", context=1024)
    keys = tmp / "keys.txt"
    keys.write_text("".join(k + "\n" for k in KEYS.values()))  # key-1, key-2, key-3
    log = tmp / "usage.jsonl"
    prompts = tmp / "seed_prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in seed_tasks(16)))
    with running_server(model, "--keys-file", keys, "--usage-log", log,
                        "--model-name", "teacher") as url:
        recipe = write_recipe(tmp / "distil.toml", teacher_recipe(url + "/v1", prompts,
                                                                  model="teacher"), {
            "generate.teacher.api_key_env": "SEED_AUDIT_TEACHER_KEY", "generate.turns": 2,
            "generate.num_records": 16, "generate.eval_prompts": 0,
            "generate.limits.concurrency": 4,
            "generate.params": {"max_tokens": 24, "temperature": 1.0, "logprobs": True,
                                "top_logprobs": 5}})
        errors: list[BaseException] = []
        rng = random.Random(14)
        clients = [threading.Thread(target=f, args=(url, random.Random(rng.random()), errors))
                   for f in (person, app)]
        for c in clients:
            c.start()
        gen = run_cli("generate", recipe, "--out", tmp / "run",
                      env=seed_env() | {"SEED_AUDIT_TEACHER_KEY": KEYS["distiller"]})
        for c in clients:
            c.join(timeout=120)
        assert gen.returncode == 0, gen.stderr
        assert not errors, errors
    runs = [start_cli("audit", log, *args, "--suggest", env=seed_env(), stdout=subprocess.PIPE,
                      stderr=subprocess.PIPE, text=True) for args in (["--json"], [])]
    (report, err), (text, err2) = [r.communicate(timeout=120) for r in runs]
    assert [r.returncode for r in runs] == [0, 0], err + err2
    return {"log": log.read_text(), "audit": json.loads(report), "text": text}


def test_the_distiller_ranks_first_with_its_signals_named(traffic):
    first = traffic["audit"]["keys"][0]
    assert first["key"] == "key-1", [(k["key"], k["flags"]) for k in traffic["audit"]["keys"]]
    assert {"logprobs", "machine_timing", "volume"} <= set(first["flags"]), first["flags"]
    signals = {s["name"]: s for s in first["signals"]}
    # the answers asked for logprobs; the requests that write the user's next turn did not
    assert signals["logprobs"]["evidence"] == 32 and first["requests"] >= 40
    assert signals["logprobs"]["percentile"] == 100.0
    assert "1. key-1" in traffic["text"] and "! logprobs" in traffic["text"]


def test_the_person_is_flagged_by_nothing_and_the_app_only_by_its_template(traffic):
    keys = {k["key"]: k for k in traffic["audit"]["keys"]}
    assert keys["key-2"]["flags"] == [], keys["key-2"]["signals"]
    assert keys["key-2"]["requests"] == 20
    assert keys["key-3"]["flags"] == ["template_concentration"], keys["key-3"]["signals"]
    template = {s["name"]: s for s in keys["key-3"]["signals"]}["template_concentration"]
    assert template["value"] == 1.0 and template["evidence"] == 16


def test_suggestions_touch_the_flagged_keys_only(traffic):
    edits = "\n".join(traffic["audit"]["suggestions"])
    assert "[keys.key-1]" in edits and "logprobs = false" in edits
    assert "# key-3: flagged by template_concentration" in edits
    assert "[keys.key-3]" not in edits and "key-2" not in edits


def test_no_key_prompt_or_system_prompt_is_logged_or_printed(traffic):
    lines = [json.loads(x) for x in traffic["log"].splitlines()]
    assert all(len(x["minhash"]) == 32 for x in lines if x["route"] == "/v1/chat/completions")
    out = traffic["log"] + json.dumps(traffic["audit"]) + traffic["text"]
    for secret in [*KEYS.values(), SYSTEM, "ReviewBot", seed_tasks(1)[0][:40],
                   mt_bench(1)[0][0][:40], answer_sentences(1)[0][:30], "Classify the sentiment"]:
        assert secret not in out
