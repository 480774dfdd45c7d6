"""Training on thinking traces: the assistant mask under `train.reasoning` = train, answer, drop,
token by token, with Seed's own template, a Qwen3-style one (reasoning_content in `<think>` before
the answer) and one whose generation prompt opens `<think>` (DeepSeek-R1's, QwQ's); a template that
does not write the trace is refused; a trace longer than seq_len is dropped, not cut.

Each mask is checked by decoding its runs of trained tokens: a run that decodes to exactly the
intended text, in a chat that decodes to exactly the rendered text, starts and stops on the
intended tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from helpers.models import CHATML, HERMES_THINK, tiny_model
from seed.errors import UserError
from seed.evaluate.report import render_report
from seed.evaluate.verify import trace_buckets
from seed.serve.reasoning import template_thinks
from seed.train.data import Example, assistant_mask, fit, render
from seed.train.tokenizer import CHAT_TEMPLATE

# Qwen3's layout of an assistant turn: `<think>\n` + the trace without its outer newlines +
# `\n</think>\n\n` + the answer; the generation prompt leaves the choice to think to the model.
QWEN3_LIKE = """
{%- for m in messages %}
{%- if m.role == 'assistant' %}
{{- '<|im_start|>assistant\n' }}
{%- if m.reasoning_content %}
{{- '<think>\n' + m.reasoning_content.strip('\n') + '\n</think>\n\n' }}
{%- endif %}
{{- m.content + '<|im_end|>\n' }}
{%- else %}
{{- '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}
"""

TRACE = "12 + 34: 2 + 4 is 6, 1 + 3 is 4."
CHAT = [{"role": "user", "content": "What is 12 + 34?"},
        {"role": "assistant", "content": "46", "reasoning_content": TRACE},
        {"role": "user", "content": "And 1 + 1?"},
        {"role": "assistant", "content": "2"}]


def chatml_tokenizer(root: Path, template: str):
    path = tiny_model(root, template=template, added_tokens=("<think>", "</think>"))
    return AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="module")
def qwen3_like(tmp_path_factory: pytest.TempPathFactory):
    return chatml_tokenizer(tmp_path_factory.mktemp("qwen3") / "m", QWEN3_LIKE)


@pytest.fixture(scope="module")
def opens_think(tmp_path_factory: pytest.TempPathFactory):
    return chatml_tokenizer(tmp_path_factory.mktemp("r1") / "m", HERMES_THINK)


def trained_runs(tok, ex: Example) -> list[str]:
    """The text of each run of trained tokens, after checking the ids decode to the chat."""
    runs, start = [], None
    for t, m in enumerate([*ex.mask, 0]):
        if m and start is None:
            start = t
        elif not m and start is not None:
            runs.append(tok.decode(ex.ids[start:t]))
            start = None
    return runs


def rendered(tok, chat) -> str:
    return tok.apply_chat_template(chat, tokenize=False)


THOUGHT = f"<think>\n{TRACE}\n</think>\n\n"


def test_seed_template_writes_the_trace_before_the_answer_and_thinks_for_serve(
        tiny_tokenizer) -> None:
    assert rendered(tiny_tokenizer, CHAT) == (
        "<|user|>What is 12 + 34?<|end|><|assistant|>" + THOUGHT + "46<|end|>"
        "<|user|>And 1 + 1?<|end|><|assistant|>2<|end|>")
    assert template_thinks(CHAT_TEMPLATE)  # `seed serve --reasoning-parser auto` splits it


@pytest.mark.parametrize(("reasoning", "runs"), [
    ("train", [THOUGHT + "46<|end|>", "2<|end|>"]),
    ("answer", ["46<|end|>", "2<|end|>"]),
    ("drop", ["46<|end|>", "2<|end|>"]),
])
def test_seed_template_masks_exactly_the_intended_tokens(tiny_tokenizer, reasoning: str,
                                                         runs: list[str]) -> None:
    ex = assistant_mask(tiny_tokenizer, CHAT, reasoning)  # type: ignore[arg-type]
    whole = CHAT if reasoning != "drop" else [
        {k: v for k, v in m.items() if k != "reasoning_content"} for m in CHAT]
    assert tiny_tokenizer.decode(ex.ids) == rendered(tiny_tokenizer, whole)
    assert trained_runs(tiny_tokenizer, ex) == runs
    thought_tokens = len(tiny_tokenizer(THOUGHT, add_special_tokens=False)["input_ids"])
    assert ex.thought == (0 if reasoning == "drop" else thought_tokens)


@pytest.mark.parametrize(("reasoning", "runs"), [
    ("train", [THOUGHT + "46<|im_end|>\n", "2<|im_end|>\n"]),
    ("answer", ["46<|im_end|>\n", "2<|im_end|>\n"]),
    ("drop", ["46<|im_end|>\n", "2<|im_end|>\n"]),
])
def test_a_qwen3_style_template_masks_exactly_the_intended_tokens(qwen3_like, reasoning: str,
                                                                  runs: list[str]) -> None:
    # The trace's outer newlines are the template's: Qwen3 strips them, as records hold them.
    chat = [*CHAT[:1], {**CHAT[1], "reasoning_content": "\n" + CHAT[1]["reasoning_content"]},
            *CHAT[2:]]
    ex = assistant_mask(qwen3_like, chat, reasoning)  # type: ignore[arg-type]
    assert trained_runs(qwen3_like, ex) == runs
    think, close = qwen3_like.convert_tokens_to_ids(["<think>", "</think>"])
    assert (think in ex.ids) == (reasoning != "drop")
    if reasoning == "answer":  # the markers themselves are among the masked tokens
        assert ex.mask[ex.ids.index(think)] == ex.mask[ex.ids.index(close)] == 0


@pytest.mark.parametrize(("reasoning", "runs"), [
    ("train", [f"{TRACE}\n</think>\n\n46<|im_end|>\n"]),
    ("answer", ["46<|im_end|>\n"]),
])
def test_a_generation_prompt_that_opens_think_masks_from_inside_the_thought(
        opens_think, reasoning: str, runs: list[str]) -> None:
    ex = assistant_mask(opens_think, CHAT[:2], reasoning)  # type: ignore[arg-type]
    assert opens_think.apply_chat_template(CHAT[:1], tokenize=False,
                                           add_generation_prompt=True).endswith("<think>\n")
    assert trained_runs(opens_think, ex) == runs


def test_a_template_that_does_not_write_the_trace_is_refused_unless_dropped(
        tmp_path: Path) -> None:
    tok = chatml_tokenizer(tmp_path / "m", CHATML)
    with pytest.raises(UserError, match=r"does not write the assistant's reasoning_content.*"
                                        r"train.reasoning = \"drop\""):
        render(tok, [CHAT], "data.jsonl")
    assert trained_runs(tok, assistant_mask(tok, CHAT, "drop")) == ["46<|im_end|>\n",
                                                                    "2<|im_end|>\n"]


def test_a_trace_longer_than_seq_len_is_dropped_and_other_long_examples_are_kept() -> None:
    long_trace = Example(list(range(10)), [1] * 10, thought=6)
    long_plain = Example(list(range(10)), [1] * 10)
    short_trace = Example(list(range(4)), [1] * 4, thought=2)
    kept, dropped = fit([long_trace, long_plain, short_trace], seq_len=8)
    assert (kept, dropped) == ([long_plain, short_trace], 1)


def test_accuracy_by_trace_length_buckets_double() -> None:
    lengths = [0, 5, 31, 32, 63, 64, 200, None]
    correct = [True, True, False, True, True, False, True, True]
    assert trace_buckets(lengths, correct) == [
        {"tokens": "0", "n": 1, "accuracy": 1.0},
        {"tokens": "1-31", "n": 2, "accuracy": 0.5},
        {"tokens": "32-63", "n": 2, "accuracy": 1.0},
        {"tokens": "64-127", "n": 1, "accuracy": 0.0},
        {"tokens": "128-255", "n": 1, "accuracy": 1.0}]


def test_the_report_shows_accuracy_by_trace_length(tmp_path: Path) -> None:
    (tmp_path / "eval").mkdir()
    (tmp_path / "manifest.json").write_text(json.dumps({"name": "thinks", "stages": {}}))
    (tmp_path / "eval" / "results.json").write_text(json.dumps({
        "accuracy": 0.5, "baseline_accuracy": None, "n": 4,
        "by_trace_length": trace_buckets([5, 40, 41, 300], [True, False, True, False])}))
    html = render_report(tmp_path)
    assert "<h2>Accuracy by trace length</h2>" in html
    assert ("<tr><td>1-31</td><td>1</td><td>100.0%</td></tr>"
            "<tr><td>32-63</td><td>2</td><td>50.0%</td></tr>"
            "<tr><td>256-511</td><td>1</td><td>0.0%</td></tr>") in html
