"""The distillation audit in process: what a request contributes to the usage log (signature,
template hash, flags, no text) and how `seed.protect.audit` turns a log's lines into per-key
signals, on real prompts from ../shared/data and log lines built as the server writes them."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from helpers.traffic import (
    alpaca_instructions,
    answer_sentences,
    mt_bench,
    needs_data,
    seed_tasks,
)
from seed.errors import UserError
from seed.generate.filters import similarity as exact_jaccard
from seed.protect.audit import audit, mmd_test, read_log, suggestions
from seed.protect.audit_features import (
    masked,
    minhash,
    prompt_features,
    request_features,
    sampling,
    similarity,
)
from seed.serve.schemas import ChatCompletionRequest, CompletionRequest


def test_minhash_estimates_the_jaccard_similarity_of_two_turns():
    sentence = ("the quick brown fox jumps over the lazy dog while the farmer watches from the "
                "porch and the sun sets behind the hills of the valley")
    base = sentence.split(" ")
    rng = random.Random(3)
    errors = []
    for _ in range(60):
        words = list(base)
        for i in rng.sample(range(len(words)), rng.randint(0, 12)):
            words[i] = f"w{rng.randint(0, 999)}"
        a, b = " ".join(base), " ".join(words)
        errors.append(abs(similarity(minhash(a), minhash(b)) - exact_jaccard(a, b)))
    assert np.mean(errors) < 0.08  # 32 permutations: a standard error near 0.09 at J = 0.5
    assert minhash("same text here, said twice") == minhash("Same   text here, said twice")
    assert minhash("") is None and len(minhash("hi")) == 32


def test_a_template_is_the_prompt_with_what_an_app_fills_in_masked():
    t1 = masked('Translate "good morning" into French and give 3 variants.')
    t2 = masked('Translate "see you at the station tomorrow" into German and give 12 variants.')
    assert t1 == t2
    assert masked("Write a poem about the sea.") != masked("Write a story about the sea.")
    feats = [prompt_features(f"Classify review {i}: '{t}'", "You are ReviewBot.")
             for i, t in enumerate(["great phone", "the battery died after a week"])]
    assert feats[0]["template"] == feats[1]["template"] and feats[0]["system"] == feats[1]["system"]
    assert feats[0]["minhash"] != feats[1]["minhash"]


@pytest.mark.parametrize("text, cot, identity", [
    ("Solve 3x + 5 = 20. Let's think step by step.", True, False),
    ("请一步一步地推理：鸡兔同笼问题。", True, False),
    ("Who are you?", False, True),
    ("你是谁？哪个公司开发了你？", False, True),
    ("What model are you, exactly?", False, True),
    ("Who are you going to invite to the party, and why?", False, False),
    ("Write a haiku about autumn leaves.", False, False),
])
def test_cot_and_identity_flags(text, cot, identity):
    f = prompt_features(text, None)
    assert (f["cot"], f["identity"]) == (cot, identity)


@needs_data
def test_people_s_prompts_rarely_raise_the_flags():
    texts = [t for q in mt_bench(80) for t in q] + alpaca_instructions(805)
    flags = [prompt_features(t, None) for t in texts]
    cot = sum(f["cot"] for f in flags) / len(texts)
    identity = sum(f["identity"] for f in flags) / len(texts)
    assert cot < 0.05 and identity < 0.01, (cot, identity)


def test_a_chat_request_s_fields_hold_its_sampling_and_no_text():
    secret = "my confidential merger plan for Contoso"
    req = ChatCompletionRequest.model_validate({
        "model": "m", "temperature": 0.7, "n": 2, "seed": 5, "logprobs": True,
        "top_logprobs": 5, "max_completion_tokens": 64, "user": "u-17",
        "response_format": {"type": "json_object"},
        "messages": [{"role": "system", "content": "Be terse."},
                     {"role": "user", "content": "first question"},
                     {"role": "assistant", "content": "an answer"},
                     {"role": "user", "content": secret}]})
    f = request_features(req)
    assert {k: f[k] for k in ("temperature", "top_p", "max_tokens", "n", "seed", "logprobs",
                              "top_logprobs", "response_format", "user", "turns")} == {
        "temperature": 0.7, "top_p": None, "max_tokens": 64, "n": 2, "seed": True,
        "logprobs": True, "top_logprobs": 5, "response_format": "json_object", "user": "u-17",
        "turns": 2}
    assert f["minhash"] == minhash(secret) and len(f["system"]) == len(f["template"]) == 16
    line = json.dumps(f)
    assert "merger" not in line and "Contoso" not in line and "terse" not in line.lower()
    comp = request_features(CompletionRequest.model_validate(
        {"model": "m", "prompt": [1, 2, 3], "logprobs": 2}))
    assert comp["minhash"] is None and comp["logprobs"] and comp["top_logprobs"] == 2


# -- the audit, on log lines as the server writes them -------------------------------------------

def line(key: str, t: float, text: str, latency: float = 0.5, completion: int = 20,
         **asked) -> dict:
    """A usage-log line of an answered chat sent at `t` with `text` as its last user turn."""
    fields = {**sampling(None, None, 64, 1, False, False, None, None, None), **asked}
    return {"time": round(t + latency, 3), "key": key, "route": "/v1/chat/completions",
            "model": "m", "status": 200, "prompt_tokens": 30, "completion_tokens": completion,
            "latency_s": latency, "ttft_s": 0.01, "finish_reasons": ["length"],
            **fields, "turns": 1, **prompt_features(text, None)}


def by_key(lines: list[dict]) -> dict[str, dict]:
    return {a.key: a for a in audit_lines(lines)}


def audit_lines(lines: list[dict]):
    from seed.protect.audit import Request

    reqs = [Request(r["key"], r["time"] - r["latency_s"], r["time"], r["prompt_tokens"],
                    r["completion_tokens"], r) for r in lines]
    return audit(sorted(reqs, key=lambda r: r.start))


def humans(key: str, texts: list[str], rng: random.Random, t: float = 0.0) -> list[dict]:
    """One person: each prompt sent 5-60 s after the previous answer arrived."""
    out = []
    for text in texts:
        out.append(line(key, t, text))
        t += 0.5 + rng.uniform(5, 60)
    return out


@needs_data
def test_each_signal_names_its_evidence_and_a_percentile():
    rng = random.Random(0)
    texts = alpaca_instructions(90)
    lines = humans("p1", texts[:30], rng) + humans("p2", texts[30:60], rng) + [
        line("bot", 0.3 * i, t, latency=0.3, logprobs=True, top_logprobs=5)
        for i, t in enumerate(texts[60:90])]
    keys = by_key(lines)
    bot = {s.name: s for s in keys["bot"].signals}
    assert bot["logprobs"].flagged and bot["logprobs"].evidence == 30
    assert "top_logprobs up to 5" in bot["logprobs"].detail
    assert bot["machine_timing"].flagged and bot["machine_timing"].evidence == 29
    assert bot["logprobs"].percentile == 100.0
    assert keys["p1"].flags == [] and keys["p2"].flags == []
    assert {s.name: s.percentile for s in keys["p1"].signals}["logprobs"] == pytest.approx(66.7)
    assert audit_lines(lines)[0].key == "bot"


@needs_data
def test_n_and_temperature_sweeps_are_their_own_signals():
    rng = random.Random(1)
    texts = alpaca_instructions(40)
    sweep = [line("sweeper", 30.0 * i, t, temperature=[0.0, 0.5, 1.0, 1.5][i % 4], n=4)
             for i, t in enumerate(texts)]
    keys = by_key(sweep + humans("person", alpaca_instructions(20, skip=100), rng))
    flagged = set(keys["sweeper"].flags)
    assert {"temperature_sweep", "multiple_samples"} <= flagged
    assert {s.name: s.value for s in keys["sweeper"].signals}["temperature_sweep"] == 4


@needs_data
def test_a_fixed_template_app_is_flagged_by_template_concentration():
    rng = random.Random(2)
    app = [line("app", 20.0 * i + rng.uniform(0, 10), f'Summarise this ticket in one line: "{t}"')
           for i, t in enumerate(answer_sentences(30))]
    keys = by_key(app + humans("person", alpaca_instructions(30), rng)
                  + humans("other", alpaca_instructions(30, skip=50), rng))
    assert keys["app"].flags == ["template_concentration"]
    assert {s.name: s.evidence for s in keys["app"].signals}["template_concentration"] == 30


@needs_data
def test_keys_sharing_a_template_form_a_cluster():
    rng = random.Random(4)
    texts = alpaca_instructions(40, skip=300)
    shared = [line(f"k{i % 2}", 40.0 * i + rng.uniform(0, 20),
                   f"Rewrite as a question: '{t}'") for i, t in enumerate(texts)]
    keys = by_key(shared + humans("person", alpaca_instructions(20), rng))
    clusters = {k: {s.name: s for s in a.signals}["clusters"] for k, a in keys.items()}
    assert clusters["k0"].flagged and "k1: 1 shared template(s)" in clusters["k0"].detail
    assert not clusters["person"].flagged


def test_bursts_in_step_form_a_cluster():
    rng = random.Random(5)
    texts = [" ".join("".join(rng.choices("abcdefghij", k=5)) for _ in range(8))
             for _ in range(600)]
    lines, i = [], 0
    for minute in range(30):
        burst = 8 if minute % 3 == 0 else 1
        for key in ("x", "y"):
            for _ in range(burst):
                lines.append(line(key, 60.0 * minute + rng.uniform(0, 50), texts[i]))
                i += 1
        lines.append(line("z", 60.0 * minute + rng.uniform(0, 50), texts[i]))
        i += 1
    keys = by_key(lines)
    x = {s.name: s for s in keys["x"].signals}["clusters"]
    assert x.flagged and x.detail.startswith("y: bursts in step")
    assert not {s.name: s for s in keys["z"].signals}["clusters"].flagged


@needs_data
def test_the_shift_test_is_calibrated_and_sees_a_concentrated_key():
    rng = np.random.default_rng(0)
    people = [minhash(t) for t in alpaca_instructions(160)]
    same = mmd_test(np.array(people), 60, rng)
    assert same.p_own > 0.05 and same.p_mmd > 0.05
    tasks = [minhash("Continue the list of tasks for an AI assistant, in the same style, "
                     f"after these: {t}") for t in seed_tasks(60)]
    shifted = mmd_test(np.array(tasks + people[:100]), 60, rng)
    assert shifted.p_own < 0.01 and shifted.own > 0
    reverse = mmd_test(np.array(people[:100] + tasks), 100, rng)  # the diverse side
    assert reverse.p_mmd < 0.01 and reverse.p_own > 0.05


@needs_data
def test_suggestions_are_policy_edits_for_flagged_keys_only(tmp_path):
    rng = random.Random(6)
    lines = humans("person", alpaca_instructions(20), rng) + [
        line("bot", 0.3 * i, t, latency=0.3, logprobs=True, top_logprobs=5, n=3)
        for i, t in enumerate(alpaca_instructions(30, skip=100))]
    text = "\n".join(suggestions(audit_lines(lines)))
    assert "[keys.bot]" in text and "logprobs = false" in text and "max_n = 1" in text
    assert "rpm = " in text and 'watermark = "required"' in text and "person" not in text


def test_read_log_keeps_answered_generation_requests(tmp_path):
    log = tmp_path / "usage.jsonl"
    rows = [line("a", 0, "hello there friend"), {**line("a", 1, "x y z"), "status": 429},
            {"time": 2.0, "key": None, "route": "/metrics", "status": 401, "latency_s": 0}]
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    [only] = read_log(log)
    assert (only.key, only.start, only.end) == ("a", 0.0, 0.5)
    log.write_text("not json\n")
    with pytest.raises(UserError, match=r"usage\.jsonl:1: not a usage-log line"):
        read_log(log)
