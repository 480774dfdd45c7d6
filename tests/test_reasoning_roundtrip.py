"""The reasoning round trip with real parts: `seed train` teaches a tiny student to think (traces in
its records, Seed's template), `seed serve` splits its replies into `reasoning_content` and
content, `seed generate` with it as the teacher keeps the traces, and the training layout of those
records takes exactly the intended tokens under each `train.reasoning`. One server for the file.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from rich.console import Console
from transformers import AutoTokenizer

from helpers.recipes import teacher_recipe
from helpers.serve import running_server
from seed.endpoints.local import LocalModel, load_tokenizer
from seed.errors import UserError
from seed.evaluate.verify import evaluate_tasks
from seed.generate.teacher import generate_from_teacher
from seed.recipe import EvalConfig, GenerateConfig, TrainConfig
from seed.records import Record, read_records, write_records
from seed.serve.reasoning import template_thinks
from seed.train.distill import kd_layout
from seed.train.layout import ModeInputs
from seed.train.loop import train_student
from seed.train.models import load_student
from seed.train.runtime import Runtime
from seed.train.sft import layout as sft_layout

pytestmark = pytest.mark.slow

TRACE, ANSWER = "I think so.", "yes"
TRAIN = {"seq_len": 96, "batch_size": 8, "max_steps": 60, "warmup_steps": 2, "log_every": 20,
         "checkpoint_every": 1000, "threads": 1, "lr": 1e-2, "student": {"size": "nano"},
         "tokenizer": {"kind": "chars"}}


def questions(path: Path, n: int) -> list[str]:
    """The first `n` questions of a records file (reasoning-gym sums)."""
    return [r.messages[0].content for r in read_records(path)][:n]


@pytest.fixture(scope="module")
def thinker(arithmetic_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """A student trained to answer 40 sums with the same trace and answer (and one trace too long
    for seq_len): it says them for any such question."""
    root = tmp_path_factory.mktemp("thinker")
    chats = [[{"role": "user", "content": q},
              {"role": "assistant", "content": ANSWER, "reasoning_content": TRACE}]
             for q in questions(arithmetic_data / "train.jsonl", 40)]
    chats.append([{"role": "user", "content": "Calculate 1 + 1."},
                  {"role": "assistant", "content": ANSWER, "reasoning_content": "hm " * 40}])
    write_records(root / "train.jsonl", [Record.new(c) for c in chats])
    summary = train_student(root / "train.jsonl", root / "train", TrainConfig(**TRAIN), seed=0)
    return root / "train" / "model", summary


@pytest.fixture(scope="module")
def url(thinker: tuple[Path, dict]) -> Iterator[str]:
    with running_server(str(thinker[0])) as url:
        yield url


def ask(url: str, prompt: str) -> dict:
    r = httpx.post(url + "/v1/chat/completions", timeout=60, json={
        "model": "model", "messages": [{"role": "user", "content": prompt}],
        "max_tokens": 44, "temperature": 0})
    assert r.status_code == 200, r.text
    return r.json()


def test_a_trace_too_long_for_seq_len_is_left_out_and_counted(thinker) -> None:
    assert thinker[1]["long_traces_dropped"] == 1


def test_the_student_trained_on_traces_thinks_when_served(thinker, url: str) -> None:
    assert template_thinks(load_tokenizer(thinker[0]).chat_template)
    body = ask(url, "Calculate 7 + 70.")
    message = body["choices"][0]["message"]
    assert (message["reasoning_content"], message["content"]) == ("\n" + TRACE + "\n", ANSWER)
    # chars tokenizer: one token per byte of "<think>\nI think so.\n</think>"
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == len(
        f"<think>\n{TRACE}\n</think>")


def test_the_local_endpoint_splits_its_trace_too(thinker) -> None:
    model, ask_local = LocalModel(thinker[0]), [{"role": "user", "content": "Calculate 12 - 5."}]
    [c] = asyncio.run(model.complete(ask_local, max_tokens=44))
    assert (c.reasoning, c.text) == (TRACE, ANSWER)
    assert model.answer_batch([ask_local], 44) == [ANSWER]  # what a judge is shown


def test_eval_grades_the_answer_after_the_trace_and_buckets_accuracy_by_its_length(
        thinker, arithmetic_data: Path, tmp_path: Path) -> None:
    evaluate_tasks(thinker[0], arithmetic_data / "eval.jsonl", tmp_path,
                   EvalConfig(max_new_tokens=44))
    results = json.loads((tmp_path / "results.json").read_text())
    samples = [json.loads(line) for line in (tmp_path / "samples.jsonl").read_text().splitlines()]
    assert {(s["student"], s["reasoning"], s["reasoning_tokens"]) for s in samples} == {
        (ANSWER, TRACE, len(TRACE))}  # one token per byte
    assert results["accuracy"] == 0.0  # "yes" is no sum
    assert results["by_trace_length"] == [{"tokens": "1-31", "n": 20, "accuracy": 0.0}]


@pytest.fixture(scope="module")
def generated(url: str, arithmetic_data: Path,
              tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("generated")
    prompts = root / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": q}) + "\n"
                               for q in questions(arithmetic_data / "eval.jsonl", 6)))
    recipe = teacher_recipe(url + "/v1", prompts, model="model")
    recipe["generate"]["params"] = {"max_tokens": 44, "temperature": 0}
    info = generate_from_teacher(GenerateConfig.model_validate(recipe["generate"]), 7,
                                 root / "out", Console(quiet=True))
    return root / "out" / "train.jsonl", info


def test_generate_keeps_the_served_students_traces(generated, url: str) -> None:
    path, info = generated
    records = list(read_records(path))
    assert len(records) == 6
    assert {(r.messages[-1].reasoning_content, r.messages[-1].content) for r in records} == {
        (TRACE, ANSWER)}
    served = ask(url, "Calculate 2 + 3.")["usage"]["completion_tokens_details"]["reasoning_tokens"]
    assert info["reasoning_tokens"] == 6 * served


@pytest.mark.parametrize(("reasoning", "trained"), [
    ("train", f"<think>\n{TRACE}\n</think>\n\n{ANSWER}<|end|>"),
    ("answer", f"{ANSWER}<|end|>"),
    ("drop", f"{ANSWER}<|end|>"),
])
def test_the_training_rows_take_exactly_the_intended_tokens(generated, thinker, reasoning: str,
                                                            trained: str) -> None:
    records = list(read_records(generated[0]))
    config = TrainConfig(**{**TRAIN, "reasoning": reasoning})
    tok = AutoTokenizer.from_pretrained(str(thinker[0]))
    inputs = ModeInputs(records, str(generated[0]), tok, load_student(thinker[0]), config, 0,
                        Runtime.start(config))
    rows = sft_layout(inputs).epoch_rows(0)
    ids, mask = rows["input_ids"].flatten().tolist(), rows["mask"].flatten().tolist()
    runs = "".join(tok.decode([i]) if m else "\0" for i, m in zip(ids, mask, strict=True))
    assert [run for run in runs.split("\0") if run] == [trained] * 6
    assert ("<think>" in tok.decode(ids)) == (reasoning != "drop")


def test_kd_refuses_to_align_teacher_logprobs_with_a_trained_trace(generated, thinker) -> None:
    records = list(read_records(generated[0]))
    config = TrainConfig(**{**TRAIN, "mode": "kd"})
    inputs = ModeInputs(records, str(generated[0]), AutoTokenizer.from_pretrained(str(thinker[0])),
                        load_student(thinker[0]), config, 0, Runtime.start(config))
    with pytest.raises(UserError, match=r'train\.reasoning = "answer"'):
        kd_layout(inputs)
