"""The batching engine gives each sequence exactly what `model.generate` gives it alone.

Greedy decoding through `seed.serve.engine.Engine`, with sequences of mixed prompt and reply
lengths arriving in two waves (the second wave takes the slots the first one's short replies
free), must produce token for token what a lone `model.generate` call produces, for every runner:
the Llama-family decode forward (Llama with biases, Qwen2, Qwen3's q/k norms, Mistral) and
transformers' own forward (GPT-2, and a Mistral whose sliding window rules the fast path out).
"""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
import torch
import transformers
from transformers import AutoTokenizer

from helpers.models import tiny_model
from seed.serve.engine import Engine, Event, SamplingParams, Sequence
from seed.serve.forward import HFRunner, LlamaRunner

VOCAB = 400
CONTINUED_CHUNKS = [0]  # prefill calls that continued a prompt, counted by _run_engine
COMMON = {"vocab_size": VOCAB, "hidden_size": 64, "intermediate_size": 128,
          "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
          "max_position_embeddings": 256, "initializer_range": 0.3}
MODELS = {
    "llama-bias": ("LlamaConfig", "LlamaForCausalLM", {"attention_bias": True, "mlp_bias": True},
                   LlamaRunner),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", {}, LlamaRunner),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 16}, LlamaRunner),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": None}, LlamaRunner),
    "mistral-window": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 32}, HFRunner),
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {"n_embd": 64, "n_layer": 2, "n_head": 4,
                                              "n_positions": 256}, HFRunner),
}


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    path = tiny_model(tmp_path_factory.mktemp("tok"), vocab=VOCAB)
    return AutoTokenizer.from_pretrained(str(path))


def _model(name: str) -> torch.nn.Module:
    config_cls, model_cls, extra, _ = MODELS[name]
    torch.manual_seed(0)
    cfg = getattr(transformers, config_cls)(**{**COMMON, **extra})
    return getattr(transformers, model_cls)(cfg).eval()


def _run_engine(model: torch.nn.Module, tokenizer, waves: list[list[tuple[list[int], int]]],
                eos: int, prefill_budget: int = 2048) -> list[list[int]]:
    """Greedy outputs of every (prompt, max_tokens) pair; a wave starts once the previous one's
    shortest reply has finished."""
    outputs: dict[int, list[int]] = {}
    texts: dict[int, str] = {}
    done: dict[int, threading.Event] = {}
    lock = threading.Lock()

    def sink(posts: list[tuple[Sequence, Event]]) -> None:
        with lock:
            for seq, ev in posts:
                outputs[seq.tag] += ev.token_ids
                texts[seq.tag] = texts.get(seq.tag, "") + ev.text
                if ev.finish_reason:
                    assert not ev.finish_reason.startswith("error"), ev.finish_reason
                    done[seq.tag].set()

    engine = Engine(model, tokenizer, eos_ids={eos}, max_running=8, on_events=sink,
                    max_prefill_tokens=prefill_budget)
    add = engine.runner.add

    def counting_add(slots: list[int], chunks: list[list[int]], starts: list[int]) -> torch.Tensor:
        CONTINUED_CHUNKS[0] += sum(1 for s in starts if s)
        return add(slots, chunks, starts)

    engine.runner.add = counting_add
    engine.start()
    try:
        tag = 0
        for wave in waves:
            first = tag
            for prompt, max_tokens in wave:
                outputs[tag], done[tag] = [], threading.Event()
                engine.submit(prompt, [SamplingParams(max_tokens=max_tokens, temperature=0)],
                              tag=tag)
                tag += 1
            shortest = min(range(len(wave)), key=lambda i: wave[i][1])
            assert done[first + shortest].wait(60)
        for event in done.values():
            assert event.wait(60)
    finally:
        engine.stop()
    for tag, tokens in outputs.items():  # the streamed pieces add up to the whole reply's text
        assert texts.get(tag, "") == tokenizer.decode(tokens, skip_special_tokens=True)
    return [outputs[t] for t in range(len(outputs))]


@pytest.mark.parametrize("budget", [2048, 16], ids=["whole-prompts", "chunked-prefill"])
@pytest.mark.parametrize("name", list(MODELS))
def test_engine_matches_generate_alone(name: str, budget: int, tokenizer) -> None:
    """With a budget of 16 prompt tokens per step, the Llama runner prefills prompts of up to 40
    tokens in pieces between other sequences' decode steps; transformers' runner takes one whole
    prompt per step."""
    model = _model(name)
    assert isinstance(Engine(model, tokenizer, eos_ids={2}).runner, MODELS[name][3])
    rng = random.Random(1)
    waves = [[([rng.randrange(3, VOCAB) for _ in range(rng.randrange(2, 40))],
               rng.choice([3, 8, 20, 30])) for _ in range(6)] for _ in range(2)]
    eos = 7  # a random model says it now and then: replies end early as well as at max_tokens
    CONTINUED_CHUNKS[0] = 0
    got = _run_engine(model, tokenizer, waves, eos, budget)
    assert (CONTINUED_CHUNKS[0] > 0) == (budget == 16 and MODELS[name][3] is LlamaRunner)
    want = []
    with torch.inference_mode():
        for prompt, max_tokens in [p for wave in waves for p in wave]:
            out = model.generate(torch.tensor([prompt]), max_new_tokens=max_tokens,
                                 do_sample=False, eos_token_id=eos, pad_token_id=0)
            tokens = out[0, len(prompt):].tolist()
            want.append(tokens[:-1] if tokens and tokens[-1] == eos else tokens)
    assert got == want
    assert sum(map(len, got)) > 50  # the comparison covers real decoding, not only early stops


def test_fused_weights_are_views_of_the_model(tmp_path: Path) -> None:
    """Fusing q/k/v and gate/up leaves the model's own modules working on the same memory."""
    model = _model("qwen2")
    ids = torch.tensor([[5, 9, 33, 120, 7]])
    with torch.inference_mode():
        before = model(ids).logits
        runner = LlamaRunner(model, slots=2)
        after = model(ids).logits
        layer = runner.layers[0]
        q = model.model.layers[0].self_attn.q_proj.weight
        assert q.data_ptr() == layer.qkv_weight.data_ptr()
    torch.testing.assert_close(before, after, rtol=0, atol=0)


def test_a_reply_may_fill_the_whole_context(tokenizer) -> None:
    """Prompt plus reply exactly the context: the cache grows to it and no further."""
    for name in ("qwen2", "gpt2"):
        model = _model(name)
        prompt = [random.Random(2).randrange(3, VOCAB) for _ in range(220)]
        got = _run_engine(model, tokenizer, [[(prompt, 36), (prompt[:10], 5)]], eos=-1)
        with torch.inference_mode():
            want = model.generate(torch.tensor([prompt]), max_new_tokens=36, do_sample=False,
                                  eos_token_id=None, pad_token_id=0)[0, 220:].tolist()
        assert got[0] == want and len(want) == 36


def test_transformers_runner_cache_stays_narrow_under_steady_traffic(tokenizer) -> None:
    """Left-padding columns that no live row needs are dropped when newcomers are merged, so the
    cache of a server that is never idle does not widen with every step it has ever taken."""
    model = _model("gpt2")
    engine = Engine(model, tokenizer, eos_ids={-1}, max_running=4)
    rng = random.Random(3)
    prompts = [[rng.randrange(3, VOCAB) for _ in range(rng.randrange(5, 30))] for _ in range(40)]
    widths: list[int] = []
    original = engine.runner.add

    def add(slots: list[int], batch: list[list[int]], starts: list[int]) -> torch.Tensor:
        logits = original(slots, batch, starts)
        widths.append(engine.runner._mask.shape[1])
        return logits

    counts = [0] * len(prompts)
    finished = threading.Event()

    def submit(tag: int) -> None:
        engine.submit(prompts[tag], [SamplingParams(max_tokens=30, temperature=0)], tag=tag)

    def sink(posts: list[tuple[Sequence, Event]]) -> None:
        for seq, ev in posts:  # the next request comes when this one is a third done: overlap
            before, counts[seq.tag] = counts[seq.tag], counts[seq.tag] + len(ev.token_ids)
            if before < 10 <= counts[seq.tag] and seq.tag + 1 < len(prompts):
                submit(seq.tag + 1)
            if ev.finish_reason and seq.tag == len(prompts) - 1:
                finished.set()

    engine.runner.add, engine.on_events = add, sink
    engine.start()
    try:
        submit(0)
        assert finished.wait(60)
    finally:
        engine.stop()
    assert counts == [30] * len(prompts) and len(widths) == len(prompts)
    # Live rows span at most a prompt (< 30) and a reply (30); 40 chained requests took ~420
    # steps, which is how wide the cache would be without the trimming.
    assert max(widths) <= 30 + 30


def test_a_continued_piece_near_the_context_end_next_to_a_longer_one() -> None:
    """Pieces are right-padded to the longest in their group, so a short last piece of a prompt
    that nearly fills the context pads past the context's end: the cache must make room, and the
    piece's logits must be the model's own for the whole prompt."""
    model = _model("qwen2")  # context 256
    rng = random.Random(4)
    long = [rng.randrange(3, VOCAB) for _ in range(252)]
    short = [rng.randrange(3, VOCAB) for _ in range(16)]
    with torch.inference_mode():
        runner = LlamaRunner(model, slots=2)
        runner.add([0], [long[:250]], [0])
        logits = runner.add([0, 1], [long[250:], short], [250, 0])
        want_long = model(torch.tensor([long])).logits[0, -1]
        want_short = model(torch.tensor([short])).logits[0, -1]
    torch.testing.assert_close(logits[0], want_long, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(logits[1], want_short, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("limit, value", [("max_running", 0), ("max_waiting", -1),
                                          ("max_prefill_tokens", 0)])
def test_limits_no_engine_can_run_with_are_refused_when_it_is_built(limit: str, value: int,
                                                                    tokenizer) -> None:
    with pytest.raises(ValueError, match=f"{limit} must be at least .* \\(got {value}\\)"):
        Engine(_model("qwen2"), tokenizer, eos_ids={2}, **{limit: value})


def _collecting_engine(tokenizer, **kw) -> tuple[Engine, dict[tuple[int, int], list[Event]]]:
    """An engine whose events are kept by (tag, index)."""
    events: dict[tuple[int, int], list[Event]] = {}

    def sink(posts: list[tuple[Sequence, Event]]) -> None:
        for seq, ev in posts:
            events.setdefault((seq.tag, ev.index), []).append(ev)

    return Engine(_model("qwen2"), tokenizer, eos_ids={-1}, on_events=sink, **kw), events


def _wait(condition, seconds: float = 30) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.01)


def test_a_cancelled_sequence_leaves_the_queue_at_once_and_its_slot_at_the_next_step(
        tokenizer) -> None:
    engine, events = _collecting_engine(tokenizer, max_running=1)
    engine.start()
    try:
        [running] = engine.submit([5, 6, 7], [SamplingParams(max_tokens=200, temperature=0)],
                                  tag=0)
        _wait(lambda: (0, 0) in events)
        waiting = engine.submit([8, 9], [SamplingParams(max_tokens=5, temperature=0)] * 3, tag=1)
        assert engine.queue_depth == 3
        engine.cancel(waiting)
        assert engine.queue_depth == 0  # no engine step needed
        engine.cancel([running])
        _wait(lambda: engine.running == 0)
        steps = engine.steps
    finally:
        engine.stop()
    assert not any(tag == 1 for tag, _ in events)
    assert steps < 150 and not any(e.finish_reason for e in events[(0, 0)])


def test_a_stop_string_ends_its_sequence_once_and_frees_its_slot(tokenizer) -> None:
    engine, events = _collecting_engine(tokenizer, max_running=4)
    prompt = [5, 9, 33, 120, 7]
    engine.start()
    try:
        engine.submit(prompt, [SamplingParams(max_tokens=40, temperature=0)], tag=0)
        _wait(lambda: any(e.finish_reason for e in events.get((0, 0), [])))
        text = "".join(e.text for e in events[(0, 0)])
        stop = text[len(text) // 3:len(text) // 3 + 2]
        before = engine.steps
        engine.submit(prompt, [SamplingParams(max_tokens=40, temperature=0, stop=(stop,))] * 3,
                      tag=1)
        _wait(lambda: all(any(e.finish_reason for e in events.get((1, i), [])) for i in range(3)))
        _wait(lambda: engine.running == 0)
        steps = engine.steps - before
    finally:
        engine.stop()
    for i in range(3):
        assert [e.finish_reason for e in events[(1, i)] if e.finish_reason] == ["stop"]
        assert "".join(e.text for e in events[(1, i)]) == text[:text.find(stop)]
    assert steps < 39  # it stopped where the stop string appeared, not at max_tokens
