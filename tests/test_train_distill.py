"""Distillation end to end: a local teacher's top-k logprobs in records, and online from a model."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from helpers.cli import cli_env, run_cli
from helpers.models import tiny_model
from helpers.recipes import SMALL, write_recipe
from helpers.training import metrics, sums, teacher_logprobs, write_chats
from seed.errors import UserError
from seed.recipe import TrainConfig
from seed.train import train_student
from seed.train.data import render
from seed.train.distill import decoded_vocab, teacher_targets


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 'teacher' with the students' tokenizer: a different random model of a larger size."""
    return tiny_model(tmp_path_factory.mktemp("teacher") / "m", tokenizer="digits", size="tiny",
                      seed=11)


def test_teacher_logprobs_line_up_with_the_students_tokens(teacher: Path) -> None:
    tok = AutoTokenizer.from_pretrained(teacher)
    chat = sums()[9]
    meta = teacher_logprobs(teacher, [chat], k=4)[0]
    example = render(tok, [chat])[0]
    targets = teacher_targets(tok, example, meta["logprobs"], "r")
    first = example.mask.index(1)
    entry = meta["logprobs"][0][0]
    assert targets.ids[first][0] == example.ids[first]  # the sampled token comes first
    assert targets.logprobs[first][0] == pytest.approx(entry["logprob"])
    # Alternatives whose text several student tokens share (partial UTF-8 bytes) are left out.
    texts = {entry["token"]} | {a["token"] for a in entry["top_logprobs"]}
    vocab = decoded_vocab(tok)
    assert {tok.decode([i]) for i in targets.ids[first]} == {t for t in texts if t in vocab}
    assert targets.ids[first - 1] == [] and targets.ids[-1] == []  # prompt and end token: none


def test_teacher_with_another_tokenizer_is_a_clear_error(teacher: Path, tmp_path: Path) -> None:
    chats = [[{"role": "user", "content": f"Count {i}."},
              {"role": "assistant", "content": "twelve apples"}] for i in range(6)]
    # A BPE that learned whole words, where the student's spells them in pieces.
    other = tiny_model(tmp_path / "words", tokenizer="bpe", size="nano",
                       texts=["twelve apples"] * 50, vocab=300)
    meta = teacher_logprobs(other, chats)
    tok = AutoTokenizer.from_pretrained(teacher)
    with pytest.raises(UserError, match="tokenizer differs from the student's"):
        teacher_targets(tok, render(tok, chats[:1])[0], meta[0]["logprobs"], "r")
    records = write_chats(tmp_path / "r.jsonl", chats, meta)
    recipe = write_recipe(tmp_path / "recipe.toml", {
        "name": "kd", "generate": {"teacher": {"kind": "tasks"}},
        "train": {"mode": "kd", "max_steps": 2, "student": {"checkpoint": teacher}}})
    done = run_cli("train", records, "-o", tmp_path / "out", "--recipe", recipe, "--internal",
                   env=cli_env(inherit=False))
    assert done.returncode == 2, done.stderr
    last = done.stderr.strip().splitlines()[-1]  # after model-loading progress bars
    assert "tokenizer differs" in last and "Traceback" not in done.stderr


def test_kd_from_topk_logprobs_pulls_the_student_toward_the_teacher(teacher: Path,
                                                                   tmp_path: Path) -> None:
    chats = sums()
    records = write_chats(tmp_path / "r.jsonl", chats, teacher_logprobs(teacher, chats, k=8))
    student = tiny_model(tmp_path / "student", tokenizer="digits", size="nano", seed=5)
    config = TrainConfig.model_validate({**SMALL, "mode": "kd", "max_steps": 15,
                                         "student": {"checkpoint": str(student)},
                                         "distill": {"top_k": 8}, "eval_fraction": 0.2,
                                         "eval_every": 5})
    summary = train_student(records, tmp_path / "out", config, seed=0)
    rows = metrics(tmp_path / "out")
    assert rows[-1]["loss"] < rows[0]["loss"] - 0.3
    evals = [r["eval_loss"] for r in rows if "eval_loss" in r]
    assert evals[-1] < evals[0] and summary["eval_loss"] == pytest.approx(evals[-1], rel=1e-4)


def test_kd_without_logprobs_names_the_record(teacher: Path, tmp_path: Path) -> None:
    records = write_chats(tmp_path / "r.jsonl", sums(12))
    config = TrainConfig.model_validate({**SMALL, "mode": "kd",
                                         "student": {"checkpoint": str(teacher)}})
    with pytest.raises(UserError, match=r"record 1 \(.*\): mode = 'kd' needs"):
        train_student(records, tmp_path / "out", config, seed=0)


@pytest.mark.parametrize("divergence", ["forward_kl", "jsd"])
def test_online_kd_from_a_local_teacher_lowers_the_divergence(teacher: Path, tmp_path: Path,
                                                              divergence: str) -> None:
    records = write_chats(tmp_path / "r.jsonl", sums())
    student = tiny_model(tmp_path / "student", tokenizer="digits", size="nano", seed=5)
    config = TrainConfig.model_validate({
        **SMALL, "mode": "online_kd", "student": {"checkpoint": str(student)},
        "distill": {"teacher": str(teacher), "divergence": divergence}})
    train_student(records, tmp_path / "out", config, seed=0)
    rows = metrics(tmp_path / "out")
    assert rows[-1]["loss"] < 0.8 * rows[0]["loss"]
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["mode"] == "online_kd"
