"""The closed loop at CI size: `seed serve --watermark-key-file` -> `seed generate` -> a student ->
`seed watermark radioactivity`, by its open-weights and its API modes.

The teacher writes like AlpacaEval answers, one character at a time (a count bigram of their
characters: helpers.watermark_models), and is served watermarked at a window of 1 (the width a
student learns at CPU scale; benchmarks/watermark_loop.py trains real students with `seed train`
and says why). `seed generate` asks it AlpacaEval instructions at temperature 1. The student is
the count bigram of the records (what a trained student of them converges to, built in a second).
Read with watermarked answers to held-out prompts, it is radioactive; the teacher itself (what a
student of its unwatermarked answers converges to) is not, nor is the student under another key.
Behind its own `seed serve`, its sampled answers are radioactive too.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections import Counter

import pytest

from helpers.cli import run_cli
from helpers.recipes import teacher_recipe, write_recipe
from helpers.serve import running_server, seed_env
from helpers.traffic import alpaca_answers, alpaca_instructions, needs_data
from helpers.watermark_models import count_student, text_bigram_teacher, token_lists
from seed.protect.detect import detect, read_texts
from seed.protect.radioactivity import model_predictor, run_reading
from seed.protect.radioactivity_api import run_api

pytestmark = needs_data

KEY = b"loop-secret-5d2e-never-printed"
KEY_ID = hashlib.sha256(KEY).hexdigest()[:12]
TRAIN, HELD_OUT = 40, 8  # prompts whose answers the student learns; prompts it never saw


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    """Serve the watermarked teacher, `seed generate` its answers to TRAIN + HELD_OUT AlpacaEval
    instructions, and build the count student of the TRAIN records."""
    tmp = tmp_path_factory.mktemp("loop")
    teacher = text_bigram_teacher(tmp / "teacher", alpaca_answers(300))
    key = tmp / "watermark.key"
    key.write_bytes(KEY)
    serve = tmp / "serve.toml"
    serve.write_text("[serve]\nwatermark_context = 1\n")
    prompts = tmp / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n"
                               for p in alpaca_instructions(TRAIN + HELD_OUT)))
    with running_server(teacher, "--watermark-key-file", key, "--recipe", serve,
                        "--model-name", "teacher") as url:
        recipe = write_recipe(tmp / "distil.toml", teacher_recipe(url + "/v1", prompts,
                                                                  model="teacher"), {
            "generate.eval_prompts": 0, "generate.limits.concurrency": 16,
            "generate.params": {"max_tokens": 160, "temperature": 1.0}})
        gen = run_cli("generate", recipe, "--out", tmp / "run", env=seed_env())
    assert gen.returncode == 0, gen.stdout + gen.stderr
    records = (tmp / "run" / "train.jsonl").read_text().splitlines()
    assert len(records) == TRAIN + HELD_OUT
    train, held_out = tmp / "train.jsonl", tmp / "held_out.jsonl"
    train.write_text("\n".join(records[:TRAIN]) + "\n")
    held_out.write_text("\n".join(records[TRAIN:]) + "\n")
    student = count_student(teacher, train, tmp / "student")
    return {"teacher": teacher, "student": student, "key": key, "held_out": held_out,
            "train": train, "tmp": tmp}


def reading(capsys, model, key, texts) -> dict:
    run_reading(model, key, [texts], gamma=0.25, context=1, decoys=100, threshold=1e-5,
                as_json=True)
    return json.loads(capsys.readouterr().out)


def test_the_served_answers_tokenize_back_and_carry_the_watermark(loop):
    """The records hold every sampled token (no re-tokenizing loss) and are watermarked: at a
    window of 1 the 6,400 tokens hold ~550 distinct pairs (p from 3e-10 to 6e-13 over runs)."""
    seqs = token_lists(loop["teacher"], read_texts(loop["train"]))
    assert [len(s) for s in seqs] == [160] * TRAIN  # the teacher never ends: max_tokens each
    found = detect(seqs, [KEY], gamma=0.25, context=1)
    assert found.p_value < 1e-6 and found.key_id == KEY_ID
    assert detect(seqs, [b"another key"], gamma=0.25, context=1).p_value > 1e-3


def test_the_student_of_watermarked_answers_is_radioactive(loop):
    proc = run_cli("watermark", "radioactivity", "--model", loop["student"], "--key-file",
                   loop["key"], "--texts", loop["held_out"], "--context", "1", "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert KEY.decode() not in proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["radioactive"] is True and result["key_id"] == KEY_ID
    assert result["texts"] == HELD_OUT and result["tokens_scored"] >= 30
    assert result["p_value"] < 1e-5 and result["decoy_rank"] == 1 and result["decoys"] == 100
    assert "evidence consistent with training on outputs watermarked with key id " + KEY_ID in \
        result["verdict"]


def test_the_student_predicts_each_tokens_most_frequent_follower(loop):
    """The student directory's top-1 after a token is what the records' counts say."""
    _, predict = model_predictor(loop["student"])
    seqs = token_lists(loop["teacher"], read_texts(loop["train"]))
    pairs = Counter(pair for s in seqs for pair in itertools.pairwise(s))
    overall = Counter(b for _, b in pairs.elements())  # ties go to the more frequent token
    common = [a for a, _ in Counter(a for a, _ in pairs.elements()).most_common(10)]
    expected = [max(overall, key=lambda b, a=a: (pairs[a, b], overall[b])) for a in common]
    assert predict([common])[0] == expected


def test_the_unwatermarked_teacher_is_not_radioactive(loop, capsys):
    """The teacher's own weights: the limit of a student of its unwatermarked answers."""
    result = reading(capsys, loop["teacher"], loop["key"], loop["held_out"])
    assert result["radioactive"] is False and result["p_value"] > 0.01
    assert result["tokens_scored"] >= 30


def test_another_key_finds_nothing_in_the_student(loop, capsys):
    other = loop["tmp"] / "other.key"
    other.write_bytes(b"a key this teacher never served with")
    result = reading(capsys, loop["student"], other, loop["held_out"])
    assert result["radioactive"] is False and result["p_value"] > 0.01
    assert result["key_id"] != KEY_ID


def test_api_mode_finds_the_served_student(loop, capsys):
    """The student behind a real `seed serve` (no watermark of its own), asked the held-out
    prompts through seed generate's engine at temperature 1: its answers' own windows are green;
    the key is in neither the output nor the request cache."""
    cache = loop["tmp"] / "requests.sqlite"
    with running_server(loop["student"]) as url:
        found = run_api(url + "/v1", "student", loop["key"], [loop["held_out"]],
                        loop["teacher"], gamma=0.25, context=1, decoys=100, threshold=1e-5,
                        as_json=True, api_key_env=None, max_tokens=64, temperature=1.0,
                        max_cost=None, cache=cache)
    out = capsys.readouterr()
    assert found is True and KEY.decode() not in out.out + out.err
    result = json.loads(out.out)
    assert result["mode"] == "api" and result["texts"] == HELD_OUT and result["key_id"] == KEY_ID
    assert result["p_value"] < 1e-5 and result["decoy_rank"] == 1
    assert result["tokens_scored"] >= 100
    assert KEY not in cache.read_bytes()
