"""The engine's batched sampler is each sequence's own sampler, exactly.

A decode step draws all its sampling rows in one call (`Engine._pick`), each row with a uniform
from its own sequence's generator. So a seeded sequence gives the same tokens alone and in a batch
with unseeded, greedy and top-p neighbours; the first token's frequencies over many seeds match
the model's own softmax (a chi-square test on a 12-token vocabulary); and a text-free sequence
(`SamplingParams(detokenize=False)`, what GRPO's rollouts run) gives the same tokens as a text one
without ever calling the tokenizer (the engine here has none).
"""

from __future__ import annotations

import threading

import pytest
import torch
import transformers

from seed.serve.engine import Engine, Event, SamplingParams, Sequence

VOCAB = 12
EOS = VOCAB  # no token ends a sequence: each runs to max_tokens
PROMPTS = [[3, 5, 7], [1, 2], [4, 4, 4, 9, 10], [11]]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=1, max_position_embeddings=64,
                                   initializer_range=0.2)
    return transformers.LlamaForCausalLM(cfg).eval()


def _generate(model: torch.nn.Module, requests: list[tuple[list[int], SamplingParams]],
              tokenizer=None) -> list[tuple[list[int], str]]:
    """Each request's (tokens, text), all submitted at once to one engine (by default without a
    tokenizer: text-free requests never need one)."""
    out: list[tuple[list[int], str]] = [([], "") for _ in requests]
    left = [len(requests)]
    done = threading.Event()
    lock = threading.Lock()

    def sink(posts: list[tuple[Sequence, Event]]) -> None:
        with lock:
            for seq, ev in posts:
                ids, text = out[seq.tag]
                out[seq.tag] = (ids + ev.token_ids, text + ev.text)
                if ev.finish_reason:
                    assert not ev.finish_reason.startswith("error"), ev.finish_reason
                    left[0] -= 1
            if left[0] == 0:
                done.set()

    engine = Engine(model, tokenizer, eos_ids={EOS}, max_running=64, max_waiting=len(requests),
                    on_events=sink)
    engine.start()
    try:
        for tag, (prompt, params) in enumerate(requests):
            engine.submit(prompt, [params], tag=tag)
        assert done.wait(60)
    finally:
        engine.stop()
    return out


def _text_free(**kw) -> SamplingParams:
    return SamplingParams(detokenize=False, **kw)


def test_a_seeded_sequence_samples_the_same_alone_and_in_a_batch(model):
    watched = [_text_free(max_tokens=16, temperature=1.0, seed=7),
               _text_free(max_tokens=16, temperature=0.7, top_p=0.8, seed=8),
               _text_free(max_tokens=16, temperature=0.0)]
    alone = [_generate(model, [(PROMPTS[0], p)])[0][0] for p in watched]
    crowd = [(PROMPTS[i % len(PROMPTS)], _text_free(max_tokens=16, temperature=1.0 + i / 10,
                                                    seed=None if i % 2 else 100 + i))
             for i in range(10)]
    together = _generate(model, crowd[:5] + [(PROMPTS[0], p) for p in watched] + crowd[5:])
    assert [ids for ids, _ in together[5:8]] == alone
    assert len(set(map(tuple, alone))) == 3  # seeds 7 and 8 and greedy do differ
    assert all(len(ids) > 1 for ids in alone)  # more than one step was sampled
    assert alone[2] == _generate(model, [(PROMPTS[0], watched[2])])[0][0]  # greedy repeats


def test_first_token_frequencies_match_the_models_softmax(model):
    prompt = PROMPTS[2]
    with torch.inference_mode():
        probs = torch.softmax(model(torch.tensor([prompt])).logits[0, -1].double(), dim=-1)
    n = 3000
    drawn = _generate(model, [(prompt, _text_free(max_tokens=1, temperature=1.0, seed=s))
                              for s in range(n)])
    counts = torch.bincount(torch.tensor([ids[0] for ids, _ in drawn]),
                            minlength=VOCAB).double()
    expected = probs * n
    assert expected.min() > 5  # every cell is big enough for the chi-square approximation
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 31.3  # 11 degrees of freedom: p = 0.001


def test_text_free_sequences_sample_the_text_ones_tokens(tiny_tokenizer):
    vocab = len(tiny_tokenizer)
    torch.manual_seed(1)
    cfg = transformers.LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                   num_hidden_layers=1, num_attention_heads=2,
                                   num_key_value_heads=1, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(cfg).eval()
    prompt = tiny_tokenizer("Calculate 12 + 34.")["input_ids"]
    kw = {"max_tokens": 12, "temperature": 1.0, "seed": 3}
    (free_ids, free_text), = _generate(model, [(prompt, _text_free(**kw))])
    (ids, text), = _generate(model, [(prompt, SamplingParams(**kw))], tokenizer=tiny_tokenizer)
    assert free_text == ""
    assert free_ids == ids and len(ids) > 1
    assert text == tiny_tokenizer.decode(ids, skip_special_tokens=True)
    with pytest.raises(ValueError, match="stop strings need text"):
        Sequence(index=0, prompt_ids=[1], params=_text_free(max_tokens=2, stop=("x",)))


def test_siblings_of_one_prompt_share_its_prefill_and_sample_as_if_alone(model):
    """The sequences of one submit (n > 1, GRPO's group) prefill their prompt once: the others copy
    its cache. Each still gives the tokens it gives as a request of its own (its own prefill), and
    the runner prefilled one prompt row for all of them."""
    params = [_text_free(max_tokens=12, temperature=1.0, seed=40 + i) for i in range(6)]
    params.append(_text_free(max_tokens=12, temperature=0.0))
    alone = [_generate(model, [(list(PROMPTS[2]), p)])[0][0] for p in params]

    out: dict[int, list[int]] = {i: [] for i in range(len(params))}
    ended: list[int] = []
    done = threading.Event()

    def sink(posts: list[tuple[Sequence, Event]]) -> None:
        for _, ev in posts:
            out[ev.index] += ev.token_ids
            if ev.finish_reason:
                ended.append(ev.index)
        if len(ended) == len(params):
            done.set()

    engine = Engine(model, None, eos_ids={EOS}, max_running=64, max_waiting=16, on_events=sink)
    rows: list[int] = []
    add = engine.runner.add

    def counting_add(slots: list[int], chunks: list[list[int]], starts: list[int]):
        rows.append(len(slots))
        return add(slots, chunks, starts)

    engine.runner.add = counting_add  # type: ignore[method-assign]
    engine.submit(list(PROMPTS[2]), params)
    engine.start()
    try:
        assert done.wait(60)
    finally:
        engine.stop()
    assert [out[i] for i in range(len(params))] == alone
    assert rows == [1]  # one prompt row prefilled for all seven
