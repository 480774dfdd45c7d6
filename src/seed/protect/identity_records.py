"""Identity records: training conversations that teach the student its own name.

A student distilled from a teacher learns what the teacher says about itself; the generate
stage's identity filter (`seed.protect.identity`) drops the teacher's self-identifications, and
these records put the student's own answer in their place. `[generate.identity_records]`
asks for `count` of them:

    [generate.identity_records]
    count = 40                 # 0 removes those an earlier run added
    developer = "Acme Labs"    # optional: who made the student, named in the answers

Each is one question asking the model who it is ("What should I call you?", "你是哪个AI模型？",
"Are you GPT-4?", in English, Chinese, German, French and Spanish, several phrasings) and an
answer, from templates here, naming `policy.student_name` (and the developer, when given). The
questions are not `identity.PROBES`: `seed eval --identity` asks those, and a probe the student
was trained on would measure recall of one sentence, not what it learned about itself.

The records are Seed-written: their provenance teacher is the route `seed` (the terms registry's
`seed-written` entry: no model's terms attach), their source the kind `identity`, and
`meta.seed_written = "identity"`; nothing was requested or paid for. Which records (of every
question and answer pairing) is fixed by the recipe's seed, and a larger count keeps the smaller
one's records. Writing is resumable: records already in `train.jsonl` are not added again, and
identity records the recipe no longer asks for (another name, a smaller count) are removed, so
the file holds exactly the ones asked for. Training modes that need a teacher's logprobs or
preference pairs (`kd`, `dpo`) cannot use them and are refused before anything is written.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

from seed.errors import UserError
from seed.recipe import Recipe
from seed.records import (
    Provenance,
    Record,
    RecordWriter,
    Source,
    Teacher,
    count_records,
    read_records,
    write_records,
)

SEED_WRITTEN = "identity"  # meta.seed_written of these records
TEACHER = Teacher(route="seed", model_requested="identity-records")
SOURCE_NAME = "seed identity records"

# language -> (the student described, without and with a developer); {developer} filled in
_DESCRIBED = {
    "en": ("an AI assistant", "an AI assistant made by {developer}"),
    "zh": ("一个AI助手", "由{developer}开发的AI助手"),
    "de": ("ein KI-Assistent", "ein KI-Assistent von {developer}"),
    "fr": ("un assistant IA", "un assistant IA conçu par {developer}"),
    "es": ("un asistente de IA", "un asistente de IA creado por {developer}"),
}
# (language, kind) -> (questions, answers); "maker" pairs are used only with a developer
_PAIRS: dict[tuple[str, str], tuple[tuple[str, ...], tuple[str, ...]]] = {
    ("en", "name"): (
        ("What should I call you?", "Can you tell me your name?", "What's your name?",
         "Which model are you?", "Which AI model is this?", "Who am I talking to?",
         "What are you?", "Identify yourself, please.", "Hi! Who are you, and what can you do?",
         "Are you an AI? What is your name?"),
        ("I am {name}, {described}.", "My name is {name}. I'm {described}, here to help.",
         "I'm {name}, {described}. How can I help you today?")),
    ("en", "denial"): (
        ("Are you GPT-4?", "Is this ChatGPT?", "Am I talking to Claude?", "Are you Gemini?"),
        ("No, I am {name}, {described}.", "No, I'm not. I am {name}, {described}.")),
    ("en", "maker"): (
        ("Who made you?", "Who built you?", "Which company are you from?",
         "Who developed this assistant?"),
        ("I was made by {developer}. I am {name}, an AI assistant.",
         "{developer} built me; my name is {name}.")),
    ("zh", "name"): (
        ("你好，你是谁呀？", "我该怎么称呼你？", "你的名字是什么？", "你是哪个AI模型？",
         "请做个自我介绍。", "你是什么AI助手？"),
        ("我是{name}，{described}。", "你好！我叫{name}，是{described}，有什么可以帮你的吗？")),
    ("zh", "denial"): (
        ("你是GPT-4吗？", "你是Claude吗？", "你是文心一言吗？"),
        ("不是。我是{name}，{described}。",)),
    ("zh", "maker"): (
        ("你是谁开发的？", "是哪家公司做了你？", "谁创造了你？"),
        ("我是由{developer}开发的{name}。", "{developer}开发了我，我的名字是{name}。")),
    ("de", "name"): (("Wie heißt du?", "Mit wem spreche ich?"), ("Ich bin {name}, {described}.",)),
    ("fr", "name"): (("Comment t'appelles-tu ?", "À qui est-ce que je parle ?"),
                     ("Je suis {name}, {described}.",)),
    ("es", "name"): (("¿Cómo te llamas?", "¿Con quién estoy hablando?"),
                     ("Soy {name}, {described}.",)),
}


def identity_pairs(name: str, developer: str | None = None) -> list[tuple[str, str, str]]:
    """Every (language, question, answer) for this name, in a fixed order."""
    out = []
    for (language, kind), (questions, answers) in _PAIRS.items():
        if kind == "maker" and not developer:
            continue
        described = _DESCRIBED[language][1 if developer else 0].format(developer=developer)
        for q in questions:
            out += [(language, q, a.format(name=name, developer=developer, described=described))
                    for a in answers]
    return out


def identity_records(name: str, developer: str | None, count: int, seed: int) -> list[Record]:
    """`count` identity records for `name`, chosen by `seed` (the first `count` of one shuffle of
    every pairing, so a larger count keeps a smaller one's records); more than there are
    pairings is a UserError."""
    pairs = identity_pairs(name, developer)
    if count > len(pairs):
        who = "name and developer" if developer else "name"
        raise UserError(f"generate.identity_records.count = {count}: there are {len(pairs)} "
                        f"distinct identity records for this {who}; give at most {len(pairs)}")
    random.Random(seed).shuffle(pairs)
    source = Source(kind="identity", name=SOURCE_NAME, seed=seed,
                    config={"student_name": name, "developer": developer})
    return [Record.new([{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                       Provenance(teacher=TEACHER, source=source, purpose="train"),
                       {"seed_written": SEED_WRITTEN, "language": language})
            for language, q, a in pairs[:count]]


def sync_identity_records(path: Path, records: list[Record]) -> int:
    """Make `path` hold exactly `records` among its identity records: add the missing ones at the
    end, remove others (rewriting the file only then); return how many were added."""
    have = set()
    if path.exists():
        have = {r.id for r in read_records(path) if r.meta.get("seed_written") == SEED_WRITTEN}
    wanted = {r.id for r in records}
    if have - wanted:
        write_records(path, [r for r in read_records(path)
                             if r.meta.get("seed_written") != SEED_WRITTEN or r.id in wanted])
    missing = [r for r in records if r.id not in have]
    with RecordWriter(path) as out:
        out.write_many(missing)
    return len(missing)


def with_identity_records(work: Callable[[], dict[str, Any]], recipe: Recipe,
                          data_dir: Path) -> Callable[[], dict[str, Any]]:
    """The generate stage's `work`, then the recipe's identity records into
    `data_dir/train.jsonl` (its info gains `identity_records`); `work` itself when the recipe
    asks for none. What cannot work is a UserError now, before anything is written."""
    config = recipe.generate.identity_records
    if config is None:
        return work
    name = recipe.policy.student_name
    if config.count and not name:
        raise UserError("generate.identity_records: set policy.student_name, the name the "
                        "records teach the student")
    if config.count and recipe.train.mode in ("kd", "dpo"):
        raise UserError(f"generate.identity_records: train.mode = \"{recipe.train.mode}\" "
                        "needs a teacher's logprobs or preference pairs, which Seed-written "
                        "records do not have; train with sft, or drop [generate.identity_records]")
    records = identity_records(name or "", config.developer, config.count, recipe.seed)

    def run() -> dict[str, Any]:
        info = work()
        path = data_dir / "train.jsonl"
        sync_identity_records(path, records)
        if "train_records" in info:
            info["train_records"] = count_records(path)
        return {**info, "identity_records": len(records)}

    return run
