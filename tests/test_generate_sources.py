"""Prompt sources (files, Self-Instruct, Evol-Instruct, multi-turn) and the instruction filters."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.cli import run_cli
from helpers.recipes import teacher_recipe, write_prompts, write_recipe
from helpers.servers import fault_server
from seed.errors import UserError
from seed.generate.filters import (
    EmbeddingDuplicates,
    ExactDuplicates,
    NearDuplicates,
    PromptFilter,
    is_refusal,
)
from seed.generate.sources import check_prompts, eliminated, read_prompts, seed_tasks
from seed.records import read_records

SEEDS = Path(__file__).resolve().parents[1].parent / "shared/data/self_instruct/seed_tasks.jsonl"
needs_seeds = pytest.mark.skipif(not SEEDS.exists(), reason=f"reference data missing: {SEEDS}")


def test_prompt_files_in_every_format(tmp_path: Path) -> None:
    jl = tmp_path / "a.jsonl"
    jl.write_text(json.dumps({"prompt": "hi"}) + "\n\n" + json.dumps({"messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": "why?"}]}) + "\n")
    csv = tmp_path / "b.csv"
    csv.write_text('id,question\n1,"What is 2, plus 2?"\n2,Name a colour\n')
    txt = tmp_path / "c.txt"
    txt.write_text("first line\n\n  second line  \n")
    assert [p.messages for p in read_prompts(jl, license="MIT")] == [
        [{"role": "user", "content": "hi"}],
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "why?"}]]
    assert [p.messages[0]["content"] for p in read_prompts(csv, column="question")] == [
        "What is 2, plus 2?", "Name a colour"]
    assert [p.messages[0]["content"] for p in read_prompts(txt)] == ["first line", "second line"]
    assert next(read_prompts(jl, license="MIT")).source.license == "MIT"


@pytest.mark.parametrize("text,kind,column,needle", [
    ('{"prompt": "ok"}\n{"prompt": \n', "auto", None, "b.jsonl:2: not valid JSON"),
    ('{"text": "no prompt key"}\n', "auto", None, "b.jsonl:1: needs a \"prompt\""),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}\n',
     "auto", None, "last message must be the user's"),
    ("a,b\n1,2\n", "csv", "prompt", "no column 'prompt' (columns: a, b)"),
])
def test_bad_prompt_files_name_the_line_and_the_fix(tmp_path: Path, text: str, kind: str,
                                                    column: str | None, needle: str) -> None:
    path = tmp_path / "b.jsonl"
    path.write_text(text)
    with pytest.raises(UserError) as err:
        check_prompts(path, kind=kind, column=column)
    assert needle in str(err.value)


@needs_seeds
def test_near_duplicates_keep_distinct_seed_tasks_and_drop_a_paraphrase() -> None:
    tasks = seed_tasks(SEEDS)
    assert len(tasks) == 175
    near = NearDuplicates(threshold=0.7)
    assert sum(near.add(t) for t in tasks) >= 170
    original = tasks[0]  # "Is there anything I can eat for a breakfast that doesn't include..."
    assert not near.add(original.replace("breakfast", "Breakfast  meal"))
    exact = ExactDuplicates()
    assert exact.add("Tell me  a joke") and not exact.add("tell me a JOKE ")


def test_refusal_heuristics() -> None:
    assert is_refusal("As an AI language model, I cannot have opinions.")
    assert is_refusal("I'm sorry, but I can't help with that.")
    assert not is_refusal("Sorry to hear that! Here are three ways to fix a flat tyre: ...")
    f = PromptFilter(exact=True, min_chars=5, max_chars=20)
    assert [f.reason(t) for t in ["hey", "a fine prompt", "A fine  prompt", "x" * 30]] == [
        "length", None, "exact duplicate", "length"]
    assert f.dropped == {"length": 2, "exact duplicate": 1}


def test_embedding_dedup_with_a_local_model_directory(tmp_path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(["the cat sat on the mat", "stock prices fell sharply today"],
                            trainers.WordPieceTrainer(vocab_size=200,
                                                      special_tokens=["[UNK]", "[PAD]"]))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]")
    fast.save_pretrained(tmp_path)
    BertModel(BertConfig(vocab_size=len(fast), hidden_size=32, num_hidden_layers=1,
                         num_attention_heads=2, intermediate_size=64)).save_pretrained(tmp_path)
    emb = EmbeddingDuplicates(tmp_path, threshold=0.999)
    assert emb.add("the cat sat on the mat")
    assert not emb.add("the cat sat on the mat")
    assert emb.add("stock prices fell sharply today")
    with pytest.raises(UserError, match="not a local sentence-transformers model"):
        EmbeddingDuplicates(tmp_path / "nowhere")


def test_evol_elimination_step() -> None:
    given = "Explain how a lighthouse works."
    assert eliminated(given, given + " Answer in three numbered steps.") is None
    assert eliminated(given, "I'm sorry, I cannot rewrite that.") == "refusal"
    assert eliminated(given, "#Rewritten Prompt#: explain lighthouses") == "copies the template"
    assert eliminated(given, "Explain how a lighthouse works!") == "no information gain"
    assert eliminated(given, "ok") == "too short"


@needs_seeds
def test_self_instruct_from_the_real_seed_tasks_is_resumable(tmp_path: Path) -> None:
    with fault_server(tmp_path) as s:
        recipe = write_recipe(tmp_path / "r.toml", teacher_recipe(s.base_url), {
            "generate.self_instruct": {"seed_tasks": SEEDS, "num_instructions": 12,
                                       "license": "Apache-2.0"}})
        out = tmp_path / "out"
        res = run_cli("generate", str(recipe), "--out", str(out))
        assert res.returncode == 0, res.stderr
        sent = len(s.requests())
        assert run_cli("generate", str(recipe), "--out", str(out)).returncode == 0
        assert len(s.requests()) == sent  # bootstrapping and answers all come from the cache
    recs = list(read_records(out / "train.jsonl"))
    assert len(recs) == 12
    seeds = set(seed_tasks(SEEDS))
    for r in recs:
        assert r.messages[0].content not in seeds
        assert r.messages[1].content == f"echo: {r.messages[0].content}"
        src = r.provenance.source
        assert (src.kind, src.name, src.license, src.seed) == (
            "self_instruct", "seed_tasks.jsonl", "Apache-2.0", 7)
    assert len({r.messages[0].content for r in recs}) == 12


def test_evol_instruct_keeps_good_evolutions_and_drops_failed_ones(tmp_path: Path) -> None:
    with fault_server(tmp_path) as s:
        p = tmp_path / "p.txt"
        p.write_text("Explain how a lighthouse works.\nsorry, rewrite this one please\n")
        recipe = write_recipe(tmp_path / "r.toml", teacher_recipe(s.base_url, p), {
            "generate.evol_instruct": {"rounds": 1, "breadth_share": 0.0}})
        assert run_cli("generate", str(recipe), "--out", str(tmp_path / "out")).returncode == 0
    recs = list(read_records(tmp_path / "out" / "train.jsonl"))
    prompts = sorted(r.messages[0].content for r in recs)
    assert len(prompts) == 3  # two originals and the one evolution that survived
    evolved = [r for r in recs if r.provenance.source.kind == "evol_instruct"]
    assert len(evolved) == 1
    assert evolved[0].messages[0].content.startswith("Explain how a lighthouse works. Answer in")
    assert evolved[0].provenance.source.model_extra["round"] == 1


def test_multi_turn_conversations_with_teacher_written_follow_ups(tmp_path: Path) -> None:
    with fault_server(tmp_path) as s:
        prompts = write_prompts(tmp_path / "p.jsonl", 4)
        recipe = write_recipe(tmp_path / "r.toml", teacher_recipe(s.base_url, prompts), {
            "generate.turns": 2, "generate.params": {"logprobs": True}})
        res = run_cli("generate", str(recipe), "--out", str(tmp_path / "out"))
        assert res.returncode == 0, res.stderr
    recs = list(read_records(tmp_path / "out" / "train.jsonl"))
    assert len(recs) == 4
    r = next(x for x in recs if x.messages[0].content == "question 2")
    roles = [m.role for m in r.messages]
    assert roles == ["user", "assistant", "user", "assistant"]
    assert r.messages[1].content == "echo: question 2"
    assert r.messages[2].content.startswith("Thanks! Could you give one more example")
    assert r.messages[3].content == f"echo: {r.messages[2].content}"
    assert len(r.meta["logprobs"]) == 2  # one list per assistant message
    assert r.meta["logprobs"][0][0]["token"] == "echo:"


def test_structured_answers_follow_the_json_schema(tmp_path: Path) -> None:
    with fault_server(tmp_path) as s:
        prompts = write_prompts(tmp_path / "p.jsonl", 3)
        s.faults(["badjson"], match="question 1")
        recipe = write_recipe(tmp_path / "r.toml", teacher_recipe(s.base_url, prompts), {
            "generate.response_schema": {"type": "object", "required": ["answer"],
                                         "properties": {"answer": {"type": "string"}}},
            "generate.limits.backoff_base": 0.01})
        assert run_cli("generate", str(recipe), "--out", str(tmp_path / "out")).returncode == 0
        assert len(s.requests()) == 4  # the invalid answer was asked again
    recs = list(read_records(tmp_path / "out" / "train.jsonl"))
    assert sorted(json.loads(r.messages[1].content)["answer"] for r in recs) == [
        f"echo: question {i}" for i in range(3)]
