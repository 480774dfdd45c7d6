"""A teacher's thinking trace kept in records: the assistant message's `reasoning_content`, however
the teacher sends it (DeepSeek's `reasoning_content`, vLLM's `reasoning`, `<think>` inline), with
its tokens in usage and the summary, through the cache, and from the public reasoning datasets'
shapes through `seed import`. One fault server (helpers/fault_server.py) answers every test.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from rich.console import Console

from helpers.recipes import teacher_recipe, write_prompts
from helpers.servers import FaultServer, fault_server
from seed.endpoints.openai import OpenAIEndpoint, answer_and_reasoning
from seed.generate.budget import text_tokens
from seed.generate.teacher import generate_from_teacher
from seed.policy.importers import import_dataset
from seed.recipe import GenerateConfig
from seed.records import Message, Record, read_records, record_id


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FaultServer]:
    with fault_server(tmp_path_factory.mktemp("fault")) as s:
        yield s


def control(server: FaultServer, what: str, body: dict) -> None:
    r = httpx.post(server.base_url.removesuffix("/v1") + f"/_control/{what}", json=body)
    assert r.status_code == 200, r.text


def generate(server: FaultServer, tmp: Path, field: str, n: int = 4,
             usage: str = "words") -> tuple[list[Record], dict, str]:
    control(server, "reasoning", {"field": field})
    control(server, "usage", {"mode": usage})
    prompts = write_prompts(tmp / "p.jsonl", n)
    config = GenerateConfig.model_validate(teacher_recipe(server.base_url, prompts)["generate"])
    console = Console(record=True, width=200)
    try:
        info = generate_from_teacher(config, 7, tmp / "out", console)
    finally:
        control(server, "reasoning", {"field": "none"})
        control(server, "usage", {"mode": "words"})
    return list(read_records(tmp / "out" / "train.jsonl")), info, console.export_text()


@pytest.mark.parametrize("field", ["reasoning_content", "reasoning", "think"])
def test_each_way_a_teacher_sends_its_trace_lands_in_reasoning_content(
        server: FaultServer, tmp_path: Path, field: str) -> None:
    records, info, printed = generate(server, tmp_path, field)
    by_prompt = {r.messages[0].content: r.messages[-1] for r in records}
    assert sorted(by_prompt) == [f"question {i}" for i in range(4)]
    for prompt, answer in by_prompt.items():
        assert (answer.role, answer.content, answer.reasoning_content) == (
            "assistant", f"echo: {prompt}", f"thinking about: {prompt}")
    # The server says each trace is 4 tokens ("thinking about: question i" in words).
    assert info["reasoning_tokens"] == 4 * 4
    assert "reasoning tokens: 16" in printed


def test_a_rerun_from_the_cache_keeps_the_traces_and_pays_nothing(
        server: FaultServer, tmp_path: Path) -> None:
    first, _, _ = generate(server, tmp_path, "reasoning")
    (tmp_path / "out" / "train.jsonl").unlink()
    again, info, _ = generate(server, tmp_path, "none")  # the server no longer thinks: cache only
    assert info["requests_paid"] == 0 and info["answers_from_cache"] == 4
    assert {r.id: r.messages[-1].reasoning_content for r in again} == {
        r.id: r.messages[-1].reasoning_content for r in first}
    assert all(r.messages[-1].reasoning_content for r in again)


def test_without_usage_the_trace_is_charged_as_completion_tokens(
        server: FaultServer, tmp_path: Path) -> None:
    records, info, _ = generate(server, tmp_path, "reasoning_content", n=2, usage="omit")
    answers = [r.messages[-1] for r in records]
    traces = [a.reasoning_content or "" for a in answers]
    assert info["completion_tokens"] == sum(text_tokens([a.content, t])
                                            for a, t in zip(answers, traces, strict=True))
    assert info["reasoning_tokens"] == text_tokens(traces)
    assert info["usage_estimated_requests"] == 2


def test_a_multi_turn_conversation_keeps_every_turns_trace(server: FaultServer,
                                                           tmp_path: Path) -> None:
    control(server, "reasoning", {"field": "reasoning"})
    prompts = write_prompts(tmp_path / "p.jsonl", 2)
    recipe = teacher_recipe(server.base_url, prompts)["generate"]
    config = GenerateConfig.model_validate({**recipe, "turns": 2})
    try:
        generate_from_teacher(config, 7, tmp_path / "out", Console(quiet=True))
    finally:
        control(server, "reasoning", {"field": "none"})
    for record in read_records(tmp_path / "out" / "train.jsonl"):
        user = [m.content for m in record.messages if m.role == "user"]
        traces = [m.reasoning_content for m in record.messages if m.role == "assistant"]
        assert len(user) == 2 and traces == [f"thinking about: {u}" for u in user]


def test_a_trace_is_never_sent_back_to_the_teacher() -> None:
    endpoint = OpenAIEndpoint("http://127.0.0.1:9/v1", "m")
    body = endpoint.body([{"role": "user", "content": "q"},
                          {"role": "assistant", "content": "a", "reasoning_content": "t"},
                          {"role": "user", "content": "more"}], {})
    assert body["messages"][1] == {"role": "assistant", "content": "a"}


@pytest.mark.parametrize(("message", "expected"), [
    ({"content": "<think>\nstep one\n</think>\n\n42"}, ("42", "step one")),
    # a template that opened <think> in the prompt: the reply only closes it
    ({"content": "step one\n</think>\n\n42"}, ("42", "step one")),
    ({"content": "42", "reasoning_content": "\nstep one\n"}, ("42", "step one")),
    ({"content": "42", "reasoning": "step one"}, ("42", "step one")),
    ({"content": "42", "reasoning_content": ""}, ("42", None)),
    ({"content": "no <think> here"}, ("no <think> here", None)),
])
def test_a_choice_is_split_into_answer_and_trace(message: dict, expected: tuple) -> None:
    assert answer_and_reasoning(message) == expected


def test_a_record_without_a_trace_is_the_line_and_id_it_always_was() -> None:
    chat = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    record = Record.new(chat)
    assert json.loads(record.to_line())["messages"] == chat
    old_id = hashlib.sha256(json.dumps(
        chat, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()).hexdigest()[:16]
    assert record.id == record_id(chat) == old_id
    thinking = Record.new([chat[0], {**chat[1], "reasoning_content": "t"}])
    assert thinking.id != record.id
    assert json.loads(thinking.to_line())["messages"][1]["reasoning_content"] == "t"
    assert thinking.chat()[1] == {"role": "assistant", "content": "a", "reasoning_content": "t"}


def test_only_an_assistant_turn_may_hold_a_trace() -> None:
    with pytest.raises(ValueError, match="only assistant turns"):
        Message(role="user", content="q", reasoning_content="t")


THOUGHT_SOLUTION = ("<|begin_of_thought|>\n\nAdd 2 and 2.\n\n<|end_of_thought|>\n\n"
                    "<|begin_of_solution|>\n\nThe answer is 4.\n\n<|end_of_solution|>")


@pytest.mark.parametrize(("fmt", "row"), [
    ("sharegpt", {"system": "Think first.", "conversations": [
        {"from": "user", "value": "What is 2 + 2?"},
        {"from": "assistant", "value": THOUGHT_SOLUTION}]}),
    ("messages", {"messages": [
        {"role": "system", "content": "Think first."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "<think>\nAdd 2 and 2.\n</think>\n\nThe answer is 4."}]}),
    ("messages", {"messages": [
        {"role": "system", "content": "Think first."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "The answer is 4.", "reasoning_content": "Add 2 and 2."}
    ]}),
])
def test_import_maps_the_reasoning_datasets_shapes_onto_reasoning_content(
        tmp_path: Path, fmt: str, row: dict) -> None:
    (tmp_path / "in.jsonl").write_text(json.dumps(row) + "\n")
    import_dataset(tmp_path / "in.jsonl", fmt, tmp_path / "out.jsonl")  # type: ignore[arg-type]
    [record] = read_records(tmp_path / "out.jsonl")
    assert record.chat() == [
        {"role": "system", "content": "Think first."},
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "The answer is 4.", "reasoning_content": "Add 2 and 2."}]


@pytest.mark.parametrize("row", [
    {"question": "What is 2 + 2?", "thinking_trajectories": ["Add 2 and 2."],
     "attempt": "The answer is 4."},
    {"question": "What is 2 + 2?", "thinking_trajectories": ["Other."], "attempt": "Other.",
     "deepseek_thinking_trajectory": "Add 2 and 2.", "deepseek_attempt": "The answer is 4."},
])
def test_import_reads_s1k_and_s1k_1_1(tmp_path: Path, row: dict) -> None:
    (tmp_path / "in.json").write_text(json.dumps([row]))
    import_dataset(tmp_path / "in.json", "s1k", tmp_path / "out.jsonl")
    [record] = read_records(tmp_path / "out.jsonl")
    assert record.chat() == [
        {"role": "user", "content": "What is 2 + 2?"},
        {"role": "assistant", "content": "The answer is 4.", "reasoning_content": "Add 2 and 2."}]
