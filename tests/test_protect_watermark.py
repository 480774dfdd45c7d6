"""The watermark's hash, green list, detection statistics and the engine's bias, in process.

The green list must be the same whether computed for one (window, token) pair in pure Python or
for a batch on tensors, hold a gamma share of the vocabulary and change with the window and the key;
the detector's p-values must be uniform on text written without the key, its binomial tail exact,
its evidence counted once per distinct pair; the engine must add delta to exactly the green tokens,
greedy rows included, and return the watermarked model's logprobs.
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import threading
from fractions import Fraction

import pytest
import torch
import transformers

from seed.errors import UserError
from seed.protect import watermark
from seed.protect.detect import binomial_tail, detect, distinct_pairs, read_texts
from seed.protect.watermark import (
    GreenList,
    Watermark,
    WatermarkKey,
    key_id,
    pair_is_green,
    read_key,
)
from seed.serve.engine import Engine, Event, SamplingParams, Sequence

KEY = b"the deployed watermark key \x00\xff"
OTHER_KEY = b"a key nobody served with"
GAMMA, DELTA = 0.25, 2.0
VOCAB = 400


def _random_texts(count: int, length: int, seed: int) -> list[list[int]]:
    rng = random.Random(seed)
    return [[rng.randrange(VOCAB) for _ in range(length)] for _ in range(count)]


def _watermarked_texts(count: int, length: int, seed: int, context: int = 2) -> list[list[int]]:
    """Texts sampled from uniform logits with the key's green tokens raised by DELTA."""
    green = GreenList(WatermarkKey.from_bytes(KEY), GAMMA, context)
    gen = torch.Generator().manual_seed(seed)
    texts = []
    for _ in range(count):
        ids = torch.randint(0, VOCAB, (context,), generator=gen).tolist()
        for _ in range(length):
            mask = green.mask(torch.tensor([ids[-context:]]), VOCAB)[0]
            probs = torch.softmax(mask.float() * DELTA, dim=-1)
            ids.append(int(torch.multinomial(probs, 1, generator=gen)))
        texts.append(ids)
    return texts


# -- the hash -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("context", "gamma"), [(1, GAMMA), (2, GAMMA), (3, GAMMA), (2, 0.7)])
def test_tensor_green_list_is_the_pure_python_hash(context, gamma):
    key = WatermarkKey.from_bytes(KEY)
    green = GreenList(key, gamma, context)
    rng = random.Random(context)
    windows = [[rng.randrange(150_000) for _ in range(context)] for _ in range(6)]
    mask = green.mask(torch.tensor(windows), 300)
    expected = [[pair_is_green(key, w, t, gamma) for t in range(300)] for w in windows]
    assert mask.tolist() == expected
    tokens = torch.tensor([rng.randrange(300) for _ in windows])
    assert green.pairs(torch.tensor(windows), tokens).tolist() == [
        expected[i][t] for i, t in enumerate(tokens.tolist())]


def test_cached_rows_are_the_masks_through_evictions(monkeypatch):
    """The server's per-window rows (`masks`) equal `mask`'s, batch after batch, with the cache
    held to 50 rows so that it evicts: repeated windows in a batch, hits, misses and evicted
    windows asked again."""
    monkeypatch.setattr(watermark, "MASK_CACHE_BYTES", 50 * 300)
    green = GreenList(WatermarkKey.from_bytes(KEY), GAMMA, 2)
    rng = random.Random(3)
    for _ in range(200):
        windows = [(rng.randrange(12), rng.randrange(12)) for _ in range(rng.randrange(1, 40))]
        assert torch.equal(green.masks(windows, 300), green.mask(torch.tensor(windows), 300))


def test_green_list_holds_a_gamma_share_and_changes_with_window_and_key():
    windows = torch.tensor(_random_texts(256, 2, seed=1))
    mask = GreenList(WatermarkKey.from_bytes(KEY), GAMMA, 2).mask(windows, 4000).float()
    assert abs(mask.mean().item() - GAMMA) < 0.004  # 1M cells: sd 0.0004
    # two different windows share a token's greenness no more than chance (gamma^2 of tokens)
    both = (mask[0::2] * mask[1::2]).mean().item()
    assert abs(both - GAMMA ** 2) < 0.004
    other = GreenList(WatermarkKey.from_bytes(OTHER_KEY), GAMMA, 2).mask(windows, 4000).float()
    assert abs((mask * other).mean().item() - GAMMA ** 2) < 0.004


def test_key_id_is_a_sha256_prefix_and_the_seeds_are_not_derived_from_it():
    key = WatermarkKey.from_bytes(KEY)
    assert key.key_id == key_id(KEY) == hashlib.sha256(KEY).hexdigest()[:12]
    digest = int(hashlib.sha256(KEY).hexdigest()[:16], 16)
    assert digest not in (key.window_seed, key.token_seed, key.multiplier)
    assert "window_seed" not in repr(key) and str(key.window_seed) not in repr(key)


def test_a_missing_or_empty_key_file_is_one_line_naming_the_file(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        read_key(tmp_path / "absent")
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    with pytest.raises(UserError, match="empty") as e:
        read_key(empty)
    assert "\n" not in str(e.value) and str(empty) in str(e.value)
    key = tmp_path / "key"
    key.write_bytes(KEY)
    assert read_key(key) == KEY


# -- detection statistics -------------------------------------------------------------------------


def _exact_tail(k: int, n: int, p: Fraction) -> float:
    return float(sum(math.comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1)))


@pytest.mark.parametrize(("k", "n", "p"), [
    (5, 10, Fraction(1, 2)), (10, 10, Fraction(1, 4)), (3, 10, Fraction(1, 4)),
    (1, 1, Fraction(1, 4)), (0, 7, Fraction(1, 4)), (280, 1000, Fraction(1, 4)),
    (200, 1000, Fraction(1, 4)), (140, 200, Fraction(1, 4)), (600, 1000, Fraction(1, 10))])
def test_binomial_tail_matches_exact_rational_arithmetic(k, n, p):
    expected = _exact_tail(k, n, p)
    assert binomial_tail(k, n, float(p)) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_binomial_tail_known_values():
    assert binomial_tail(5, 10, 0.5) == pytest.approx(638 / 1024, rel=1e-12)
    assert binomial_tail(10, 10, 0.25) == pytest.approx(0.25 ** 10, rel=1e-12)
    assert binomial_tail(11, 10, 0.25) == 0.0
    assert binomial_tail(0, 10, 0.25) == 1.0


def test_p_values_of_unwatermarked_texts_are_uniform():
    texts = _random_texts(200, 4000, seed=7)  # long: the binomial's steps stay small
    p = sorted(detect([t], [KEY], gamma=GAMMA, context=2).p_value for t in texts)
    n = len(p)
    ks = max(max((i + 1) / n - x, x - i / n) for i, x in enumerate(p))
    assert ks < 1.628 / math.sqrt(n)  # Kolmogorov-Smirnov at the 1% level
    assert sum(x < 0.05 for x in p) <= 20  # 10 expected


def test_watermarked_texts_are_detected_and_the_wrong_key_finds_nothing():
    texts = _watermarked_texts(4, 50, seed=3)
    right = detect(texts, [KEY], gamma=GAMMA, context=2)
    wrong = detect(texts, [OTHER_KEY], gamma=GAMMA, context=2)
    assert right.tokens_scored == 200 and right.keys[0].green_rate > 0.6
    assert right.p_value < 1e-10
    assert wrong.p_value > 0.01 and abs(wrong.keys[0].z) < 3


def test_a_sentence_repeated_100_times_scores_like_the_sentence_once():
    [sentence] = _watermarked_texts(1, 30, seed=5)
    once = detect([sentence], [KEY], gamma=GAMMA, context=2)
    copies = detect([sentence] * 100, [KEY], gamma=GAMMA, context=2)
    assert (copies.tokens_scored, copies.keys[0].green, copies.p_value) == (
        once.tokens_scored, once.keys[0].green, once.p_value)
    # repeated inside one text: only the windows across each seam are new (at most 2 pairs)
    repeated = detect([sentence * 100], [KEY], gamma=GAMMA, context=2)
    assert once.tokens_scored <= repeated.tokens_scored <= once.tokens_scored + 2
    assert copies.tokens == 100 * once.tokens


def test_key_epochs_are_bonferroni_corrected():
    texts = _watermarked_texts(1, 40, seed=11)
    alone = detect(texts, [KEY], gamma=GAMMA, context=2)
    epochs = detect(texts, [OTHER_KEY, KEY, b"third epoch"], gamma=GAMMA, context=2)
    assert epochs.key_id == key_id(KEY)
    assert epochs.p_value == pytest.approx(min(1.0, 3 * alone.p_value))
    assert [s.key_id for s in epochs.keys] == [key_id(k) for k in (OTHER_KEY, KEY, b"third epoch")]


def test_distinct_pairs_start_after_a_whole_window():
    assert distinct_pairs([[1, 2, 3, 4], [2, 3, 4]], 2) == [(1, 2, 3), (2, 3, 4)]
    assert distinct_pairs([[1, 2]], 2) == []


def test_inputs_are_plain_text_records_and_openai_bodies(tmp_path):
    plain = tmp_path / "a.txt"
    plain.write_text("just text\n")
    records = tmp_path / "r.jsonl"
    records.write_text(json.dumps({"id": "x", "messages": [
        {"role": "user", "content": "q"}, {"role": "assistant", "content": "first"},
        {"role": "user", "content": "q2"}, {"role": "assistant", "content": "second"}]}) + "\n")
    chat = tmp_path / "c.json"
    chat.write_text(json.dumps({"object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "chat one"}},
        {"index": 1, "message": {"role": "assistant", "content": "chat two"}}]}))
    bodies = tmp_path / "b.json"
    bodies.write_text(json.dumps([
        {"object": "text_completion", "choices": [{"index": 0, "text": "completed"}]},
        {"object": "response", "output": [{"type": "message", "content": [
            {"type": "output_text", "text": "responded"}]}]}]))
    assert read_texts(plain) == ["just text\n"]
    assert read_texts(records) == ["first", "second"]
    assert read_texts(chat) == ["chat one", "chat two"]
    assert read_texts(bodies) == ["completed", "responded"]
    wrong = tmp_path / "w.json"
    wrong.write_text('{"text": "no shape"}')
    with pytest.raises(UserError, match="neither a Seed record"):
        read_texts(wrong)
    torn = tmp_path / "t.jsonl"
    torn.write_text('{"messages": [')
    with pytest.raises(UserError, match=r"t\.jsonl:1: not valid JSON"):
        read_texts(torn)


# -- the engine's bias ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
                                   num_hidden_layers=2, num_attention_heads=4,
                                   num_key_value_heads=2, max_position_embeddings=256,
                                   initializer_range=0.3)
    return transformers.LlamaForCausalLM(cfg).eval()


class _Tokenizer:
    """The engine decodes text for stop strings; these tests read token ids only."""

    def decode(self, ids, skip_special_tokens=True):
        return " ".join(map(str, ids))


def _generate(model, params: list[SamplingParams], prompt: list[int],
              watermark: Watermark | None) -> list[Event]:
    """Run sequences to the end on an engine; each one's events merged into one."""
    merged: dict[int, Event] = {}
    done = threading.Event()

    def sink(posts: list[tuple[Sequence, Event]]) -> None:
        for seq, ev in posts:
            m = merged.setdefault(seq.index, Event(seq.index, "", [], []))
            m.token_ids += ev.token_ids
            m.logprobs += ev.logprobs
            if ev.finish_reason:
                assert not ev.finish_reason.startswith("error"), ev.finish_reason
                m.finish_reason = ev.finish_reason
        if len(merged) == len(params) and all(m.finish_reason for m in merged.values()):
            done.set()

    engine = Engine(model, _Tokenizer(), eos_ids=set(), max_running=8, on_events=sink,
                    watermark=watermark)
    engine.start()
    try:
        engine.submit(prompt, params)
        assert done.wait(60)
    finally:
        engine.stop()
    return [merged[i] for i in range(len(params))]


def _raw_logprobs(model, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)


def test_engine_adds_delta_to_green_tokens_and_returns_the_watermarked_logprobs(model):
    watermark = Watermark.from_key(KEY, gamma=GAMMA, delta=DELTA, context=2)
    prompt = [17]  # shorter than the window: the first token is not biased
    sampled, greedy = _generate(model, [
        SamplingParams(max_tokens=6, temperature=1.0, seed=1, logprobs=True, top_logprobs=3,
                       watermark=True),
        SamplingParams(max_tokens=6, temperature=0.0, watermark=True)], prompt, watermark)
    ids = prompt + sampled.token_ids
    raw = _raw_logprobs(model, ids)
    for step, lp in enumerate(sampled.logprobs):
        pos = len(prompt) - 1 + step  # the logits that chose this token
        expected = raw[pos]
        if pos + 1 >= 2:
            green = watermark.green.mask(torch.tensor([ids[pos - 1:pos + 1]]), VOCAB)[0]
            expected = torch.log_softmax(raw[pos] + DELTA * green.float(), dim=-1)
        assert lp.token_id == ids[pos + 1]
        assert lp.logprob == pytest.approx(float(expected[lp.token_id]), abs=1e-4)
        assert [t for t, _ in lp.top] == expected.topk(3).indices.tolist()
    greedy_ids = prompt + greedy.token_ids
    raw = _raw_logprobs(model, greedy_ids)
    assert greedy_ids[1] == int(raw[0].argmax())  # no window yet: the model's own choice
    for pos in range(1, len(greedy_ids) - 1):
        green = watermark.green.mask(torch.tensor([greedy_ids[pos - 1:pos + 1]]), VOCAB)[0]
        assert greedy_ids[pos + 1] == int((raw[pos] + DELTA * green.float()).argmax())


def test_scored_prompts_get_the_watermarked_models_logprobs(model):
    watermark = Watermark.from_key(KEY, gamma=GAMMA, delta=DELTA, context=2)
    prompt = [3, 141, 59, 265, 35, 89]
    merged: list[Event] = []
    done = threading.Event()

    def sink(posts: list[tuple[Sequence, Event]]) -> None:
        merged.extend(ev for _, ev in posts)
        done.set()

    engine = Engine(model, _Tokenizer(), eos_ids=set(), on_events=sink, watermark=watermark)
    engine.start()
    try:
        engine.submit(prompt, [SamplingParams(max_tokens=0, prompt_logprobs=0, watermark=True)])
        assert done.wait(60)
    finally:
        engine.stop()
    [event] = merged
    raw = _raw_logprobs(model, prompt)
    scores = event.prompt_logprobs or []
    assert [lp.token_id for lp in scores] == prompt[1:]
    assert scores[0].logprob == pytest.approx(float(raw[0, prompt[1]]), abs=1e-4)  # no window
    for pos in range(1, len(prompt) - 1):
        green = watermark.green.mask(torch.tensor([prompt[pos - 1:pos + 1]]), VOCAB)[0]
        expected = torch.log_softmax(raw[pos] + DELTA * green.float(), dim=-1)
        assert scores[pos].logprob == pytest.approx(float(expected[prompt[pos + 1]]), abs=1e-4)


def test_watermark_raises_the_models_own_nll_by_a_measured_amount(model):
    """The cost of the watermark to the text: the unwatermarked model's mean NLL of samples drawn
    with and without it (same prompts, seeds and temperature 1)."""
    watermark = Watermark.from_key(KEY, gamma=GAMMA, delta=DELTA, context=2)
    prompt = [5, 9, 33]
    params = [SamplingParams(max_tokens=128, temperature=1.0, seed=s) for s in range(4)]
    nll, green_rates = {}, {}
    for marked in (False, True):
        runs = _generate(model, [SamplingParams(**{**p.__dict__, "watermark": marked})
                                 for p in params], prompt, watermark)
        total, count = 0.0, 0
        for ev in runs:
            ids = prompt + ev.token_ids
            raw = _raw_logprobs(model, ids)
            picked = raw[len(prompt) - 1:-1].gather(1, torch.tensor(ev.token_ids)[:, None])
            total -= float(picked.sum())
            count += len(ev.token_ids)
        nll[marked] = total / count
        green_rates[marked] = detect([prompt + ev.token_ids for ev in runs], [KEY], gamma=GAMMA,
                                     context=2).keys[0].green_rate
    print(f"\nteacher NLL of its own samples: {nll[False]:.4f} without the watermark, "
          f"{nll[True]:.4f} with it (+{nll[True] - nll[False]:.4f} nats/token); green rate "
          f"{green_rates[False]:.3f} -> {green_rates[True]:.3f}")
    assert green_rates[True] > 0.5 > green_rates[False]
    assert nll[True] > nll[False]
