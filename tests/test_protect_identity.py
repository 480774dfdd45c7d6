"""The identity detector on real model outputs, and the generate-stage filter that applies it.

The AlpacaEval outputs in ../shared/data are read in place: 805 answers each from GPT-4 Turbo,
Claude 2.1, GPT-3.5 Turbo, Vicuna 13B, Alpaca 7B, text-davinci-003 (and prompt variants). Every
first-person self-identification among them was found by reading each answer in which a first
person and a model or vendor name share a sentence: 31 answers, all found by the detector.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from helpers.cli import run_cli
from helpers.recipes import teacher_recipe, write_recipe
from helpers.servers import fault_server
from seed.errors import UserError
from seed.policy.cards import write_dataset_card
from seed.policy.gate import Use, check_file
from seed.protect.identity import PROBES, claim_rate, find_claims, identity_claims, wilson_interval
from seed.protect.identity_eval import score_answers
from seed.protect.identity_records import (
    identity_pairs,
    identity_records,
    sync_identity_records,
    with_identity_records,
)
from seed.recipe import Recipe
from seed.records import read_records

ANNOTATIONS = Path(__file__).resolve().parents[2] / "shared/data/alpaca_eval/annotations"
needs_alpaca = pytest.mark.skipif(not ANNOTATIONS.is_dir(),
                                  reason="../shared/data/alpaca_eval is not present")

# Answers per generator that claim, in the first person, to be a known model or its vendor's.
CLAIMS = {"claude-2.1": 16, "claude-2.1_concise": 10, "gpt4_1106_preview": 4, "vicuna-13b": 1}


def alpaca_outputs() -> dict[str, dict[str, str]]:
    """Each generator's answer per instruction, over every annotations file."""
    out: dict[str, dict[str, str]] = {}
    for path in sorted(ANNOTATIONS.glob("*.json.gz")):
        for a in json.loads(gzip.decompress(path.read_bytes())):
            for gen, text in ((a["generator_1"], a["output_1"]), (a["generator_2"], a["output_2"])):
                if text is not None:
                    out.setdefault(gen, {})[a["instruction"]] = text
    return out


@pytest.fixture(scope="module")
def outputs() -> dict[str, dict[str, str]]:
    return alpaca_outputs()


@needs_alpaca
def test_first_person_claims_in_alpaca_eval_outputs_are_found_per_model(outputs):
    found = {gen: sum(bool(identity_claims(t)) for t in answers.values())
             for gen, answers in outputs.items()}
    assert {g: n for g, n in found.items() if n} == CLAIMS
    assert sum(len(a) for a in outputs.values()) > 9000  # every model's answers were read
    vendors = {v for t in outputs["claude-2.1"].values() for v in identity_claims(t)}
    assert vendors == {"Anthropic"}
    assert {v for t in outputs["gpt4_1106_preview"].values() for v in identity_claims(t)} == {
        "OpenAI"}


@needs_alpaca
def test_third_person_mentions_and_comparisons_in_alpaca_eval_outputs_are_kept(outputs):
    mentions = {  # generator: a phrase of an answer that names a model without claiming to be it
        "gpt-3.5-turbo-1106": "ChatGPT is an impressive language generation model developed by",
        "gpt-3.5-turbo-1106_verbose": "I may not have the same capabilities as ChatGPT, I am",
        "vicuna-13b": "ChatGPT is a language model developed by Large Model Systems",
        "text_davinci_003": "Yes, I am just as capable as ChatGPT.",
        "alpaca-7b": "No, I am not as capable as ChatGPT.",
        "alpaca-7b_concise": "worked as a software engineer at Google",
        "claude-2.1": "made by Google's smart home brand Nest",
    }
    for gen, phrase in mentions.items():
        texts = [t for t in outputs[gen].values() if phrase in t]
        assert len(texts) == 1, (gen, phrase)
        assert identity_claims(texts[0]) == [], (gen, texts[0][:200])


@pytest.mark.parametrize("text,vendor", [
    ("I am ChatGPT, a large language model.", "OpenAI"),
    ("As an AI developed by OpenAI, I don't have opinions.", "OpenAI"),
    ("I'm Claude, made by Anthropic.", "Anthropic"),
    ("I am a large language model, trained by Google.", "Google"),
    ("My name is Gemini.", "Google"),
    ("Sure. As ChatGPT, I cannot browse.", "OpenAI"),
    ("我是通义千问，由阿里云开发的大规模语言模型。", "Alibaba"),
    ("我是由OpenAI开发的人工智能助手。", "OpenAI"),
    ("作为深度求索开发的语言模型，我无法回答。", "DeepSeek"),
    ("我叫豆包，是字节跳动开发的。", "ByteDance"),
    ("Ich bin ChatGPT, ein Sprachmodell.", "OpenAI"),
    ("Je suis un modèle de langage développé par Mistral AI.", "Mistral AI"),
    ("Soy un modelo de lenguaje entrenado por Google.", "Google"),
    ("私はChatGPTです。", "OpenAI"),
    ("Я ChatGPT, языковая модель.", "OpenAI"),
    ("저는 Kimi입니다.", "Moonshot AI"),
])
def test_first_person_self_identifications_are_claims(text, vendor):
    assert identity_claims(text) == [vendor]


@pytest.mark.parametrize("text", [
    "ChatGPT is a model by OpenAI.", "Compare GPT-4 and Claude.", "I'm not ChatGPT.",
    "I am not as capable as ChatGPT.", "Tools such as an AI model developed by OpenAI help.",
    "I am a big fan of the model from Google.", "I am using Google to search.",
    "ChatGPT是由OpenAI开发的。", "我不是ChatGPT。", "我是通义千问的用户。", "I am a Gemini.",
    "I'm a llama farmer.", "It has the same capabilities as ChatGPT, I am told.",
])
def test_third_person_mentions_comparisons_and_denials_are_not_claims(text):
    assert identity_claims(text) == []


def test_the_students_own_name_is_not_another_models():
    text = "I am Qwen-Seed, a student. I was trained by OpenAI."
    assert [c.name for c in find_claims(text)] == ["Qwen", "OpenAI"]
    assert identity_claims(text, own_names=("Qwen-Seed",)) == ["OpenAI"]


def test_forty_probes_in_nine_languages():
    assert len(PROBES) == 40 == len({p.text for p in PROBES})
    assert {p.language for p in PROBES} == {"en", "zh", "de", "fr", "es", "ja", "ru", "ko", "pt"}


def test_wilson_interval_matches_reference_values():
    # The roots of Wilson's (1927) score-test quadratic at z = 1.96; 0 of n gives z^2/(n + z^2)
    assert wilson_interval(0, 80) == pytest.approx((0.0, 1.96 ** 2 / (80 + 1.96 ** 2)), abs=1e-9)
    assert wilson_interval(12, 40) == pytest.approx((0.180747, 0.454303), abs=1e-6)
    assert wilson_interval(40, 40) == pytest.approx((0.912375, 1.0), abs=1e-6)
    assert claim_rate(12, 40)["rate"] == 0.3


@needs_alpaca
def test_claude_answers_to_the_probes_score_as_claims(outputs):
    claude = [t for t in outputs["claude-2.1"].values() if identity_claims(t)]
    answers = [(PROBES[0], claude[:3]), (PROBES[20], ["我是一个人工智能助手。"])]
    result = score_answers(answers)
    assert (result["n"], result["claims"], result["vendors"]) == (4, 3, {"Anthropic": 3})
    assert result["languages"] == {"en": {"n": 3, "claims": 3}, "zh": {"n": 1, "claims": 0}}
    assert [w["claims"] for w in result["worst"]] == [["Anthropic"]] * 3


PROMPTS = ["I am ChatGPT, a model trained by OpenAI.", "我是通义千问，由阿里云开发。",
           "ChatGPT is a model by OpenAI.", "Compare GPT-4 and Claude.", "Name three primes"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """The fault server echoes each prompt, so an identity claim in a prompt is in its answer."""
    tmp = tmp_path_factory.mktemp("identity_teacher")
    prompts = tmp / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    with fault_server(tmp) as s:
        yield s, prompts


def generate(teacher, tmp_path: Path, identity: str) -> Path:
    server, prompts = teacher
    tmp_path.mkdir(parents=True, exist_ok=True)
    recipe = write_recipe(tmp_path / "r.toml", teacher_recipe(server.base_url, prompts),
                          {"generate.filters.identity": identity})
    out = tmp_path / "out"
    res = run_cli("generate", str(recipe), "--out", str(out))
    assert res.returncode == 0, res.stderr
    return out


def test_generate_drops_answers_claiming_another_model_and_counts_them(teacher, tmp_path):
    out = generate(teacher, tmp_path, "drop")
    kept = [r.messages[0].content for r in read_records(out / "train.jsonl")]
    assert sorted(kept) == sorted(PROMPTS[2:])  # the third-person mentions stay
    failed = [json.loads(x) for x in (out / "failed.jsonl").read_text().splitlines()]
    assert sorted((f["messages"][0]["content"], f["reason"]) for f in failed) == sorted(
        (p, "filtered: identity claim") for p in PROMPTS[:2])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["filtered_answers"] == {"identity": 2} and summary["identity_flagged"] == 0
    result = check_file(out / "train.jsonl", Use(distribute=False, commercial=False))
    card = write_dataset_card(out, result, name="student training data").read_text()
    assert "answers dropped for claiming another model's identity: 2" in card


def test_generate_can_keep_them_flagged_or_not_look(teacher, tmp_path):
    flagged = generate(teacher, tmp_path / "flag", "flag")
    claims = {r.messages[0].content: r.meta.get("identity_claims")
              for r in read_records(flagged / "train.jsonl")}
    assert claims == {PROMPTS[0]: ["OpenAI"], PROMPTS[1]: ["Alibaba"],
                      **dict.fromkeys(PROMPTS[2:])}
    assert json.loads((flagged / "summary.json").read_text())["identity_flagged"] == 2
    off = generate(teacher, tmp_path / "off", "off")
    records = list(read_records(off / "train.jsonl"))
    assert len(records) == 5 and not any("identity_claims" in r.meta for r in records)


# -- identity records (seed.protect.identity_records) ---------------------------------------------

NAME, DEVELOPER = "Nimbus", "Acme Labs"


def test_identity_records_name_the_student_and_claim_no_other_model():
    pairs = identity_pairs(NAME, DEVELOPER)
    records = identity_records(NAME, DEVELOPER, len(pairs), seed=7)
    assert len({r.id for r in records}) == len(pairs) > 60
    answers = [r.messages[1].content for r in records]
    assert all(NAME in a for a in answers)
    assert any(DEVELOPER in a for a in answers) and all(
        DEVELOPER in a for a in answers if "made" in a or "开发" in a)
    assert {r.meta["language"] for r in records} >= {"en", "zh"}
    assert [a for a in answers if identity_claims(a, (NAME,))] == []
    # held apart from the probes `seed eval --identity` asks
    assert not {r.messages[0].content for r in records} & {p.text for p in PROBES}
    assert all(r.meta["seed_written"] == "identity" and r.provenance.teacher.route == "seed"
               and r.provenance.teacher.requested_at is None for r in records)
    assert len(identity_pairs(NAME)) < len(pairs)  # no "who made you" without a developer
    assert not any(DEVELOPER in a for _, _, a in identity_pairs(NAME))
    with pytest.raises(UserError, match=rf"count = {len(pairs) + 1}: .* at most {len(pairs)}"):
        identity_records(NAME, DEVELOPER, len(pairs) + 1, seed=7)


def test_identity_records_are_fixed_by_the_seed_and_a_larger_count_keeps_the_smaller():
    ten = identity_records(NAME, None, 10, seed=7)
    assert [r.id for r in ten] == [r.id for r in identity_records(NAME, None, 10, seed=7)]
    assert [r.id for r in identity_records(NAME, None, 20, seed=7)][:10] == [r.id for r in ten]
    assert {r.id for r in identity_records(NAME, None, 10, seed=8)} != {r.id for r in ten}


def test_identity_records_need_the_students_name_and_a_mode_that_can_use_them(tmp_path):
    def recipe(**policy_train):
        return Recipe.model_validate({
            "name": "r", "generate": {"teacher": {"kind": "tasks"},
                                      "identity_records": {"count": 5}}, **policy_train})

    with pytest.raises(UserError, match=r"set policy\.student_name"):
        with_identity_records(dict, recipe(), tmp_path)
    with pytest.raises(UserError, match=r"train\.mode = \"kd\""):
        with_identity_records(dict, recipe(policy={"student_name": NAME}, train={"mode": "kd"}),
                              tmp_path)
    assert not list(tmp_path.iterdir())


def test_generate_appends_identity_records_once_and_the_card_counts_them(teacher, tmp_path):
    server, prompts = teacher
    recipe = write_recipe(tmp_path / "r.toml", teacher_recipe(server.base_url, prompts), {
        "generate.identity_records": {"count": 12, "developer": DEVELOPER},
        "policy.student_name": NAME})
    out = tmp_path / "out"
    for _ in range(2):  # the rerun answers from the cache and adds nothing
        res = run_cli("generate", str(recipe), "--out", str(out))
        assert res.returncode == 0, res.stderr
        assert f"12 identity records teach the name '{NAME}'" in res.stdout
        records = list(read_records(out / "train.jsonl"))
        assert len(records) == 3 + 12  # the teacher's answers the identity filter kept, and ours
    ours = [r for r in records if r.meta.get("seed_written") == "identity"]
    assert [r.id for r in ours] == [r.id for r in identity_records(NAME, DEVELOPER, 12, seed=7)]
    assert sync_identity_records(out / "train.jsonl", identity_records(NAME, DEVELOPER, 6, 7)) == 0
    left = list(read_records(out / "train.jsonl"))
    assert len(left) == 3 + 6 and [r.id for r in left if r.meta.get("seed_written")] == \
        [r.id for r in ours[:6]]
    result = check_file(out / "train.jsonl", Use(distribute=True, commercial=True))
    card = write_dataset_card(out, result, name="student training data").read_text()
    assert "| `seed:identity-records` | `identity:seed identity records` | 6 | allow |" in card


def test_the_pipelines_generate_stage_adds_them_after_a_tasks_teacher(tmp_path):
    from seed.pipeline import preflight

    recipe = Recipe.model_validate({
        "name": "r", "seed": 3, "policy": {"student_name": NAME},
        "generate": {"teacher": {"kind": "tasks", "tasks": [{"name": "basic_arithmetic"}]},
                     "num_records": 5, "eval_prompts": 2,
                     "identity_records": {"count": 4}}})
    info = preflight(recipe, tmp_path)()
    assert (info["train_records"], info["identity_records"]) == (5 + 4, 4)
    ours = [r for r in read_records(tmp_path / "train.jsonl") if r.meta.get("seed_written")]
    assert [r.id for r in ours] == [r.id for r in identity_records(NAME, None, 4, seed=3)]
