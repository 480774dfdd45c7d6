"""`seed watermark radioactivity`: a student trained on watermarked text is found, others are not.

The teacher is a random bigram table (logits over the next token after each token); the
watermarked teacher adds delta to the green list of the key at context 1, as `seed serve` does,
and samples. A count-based bigram student (its top-1 next token is the most frequent follower
in its training text) trained on the watermarked samples must be radioactive (p < 1e-5, the real
key first among the decoys); one trained on the same teacher's unwatermarked samples must not
(p > 0.01), nor the radioactive one under another key. The command itself, on model directories
and a served student, is tests/test_protect_loop.py's closed loop.
"""

from __future__ import annotations

import hashlib

import pytest
import torch

from helpers.watermark_models import bigram_counts
from seed.protect.detect import binomial_tail
from seed.protect.radioactivity import (
    decoy_keys,
    read_mode,
    reading_tuples,
    tokens_needed,
)
from seed.protect.watermark import GreenList, WatermarkKey

KEY = b"radio-secret-41c7-never-printed"
KEY_ID = hashlib.sha256(KEY).hexdigest()[:12]
GAMMA, DELTA, CONTEXT = 0.25, 2.0, 1


def teacher_samples(vocab: int, *, watermark: bool, sequences: int = 800, length: int = 100,
                    seed: int = 0) -> list[list[int]]:
    """Token sequences from a random bigram teacher, watermarked (delta on the key's green list
    after the previous token) or not; the same teacher table either way."""
    logits = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(1234))
    if watermark:
        green = GreenList(WatermarkKey.from_bytes(KEY), GAMMA, CONTEXT)
        logits = logits + DELTA * green.mask(torch.arange(vocab)[:, None], vocab)
    cdf = torch.softmax(logits, -1).cumsum(-1)
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(vocab, (sequences,), generator=gen)
    out = [tokens]
    for _ in range(length - 1):  # inverse-CDF sampling: a few small ops per step
        u = torch.rand(sequences, 1, generator=gen)
        tokens = torch.searchsorted(cdf[tokens], u)[:, 0].clamp(max=vocab - 1)
        out.append(tokens)
    return torch.stack(out, 1).tolist()


def bigram_student(sequences: list[list[int]], vocab: int) -> list[int]:
    """The count student: each token's most frequent follower in the training sequences."""
    return bigram_counts(sequences, vocab).argmax(-1).tolist()


class Ids:
    """A tokenizer for texts that are already token ids ("3 17 5")."""

    def __call__(self, text: str, add_special_tokens: bool = False) -> dict[str, list[int]]:
        return {"input_ids": [int(t) for t in text.split()]}


def read(student: list[int], texts: list[list[int]], key: bytes = KEY, decoys: int = 100):
    def predict(token_lists):
        return [[student[t] for t in ids] for ids in token_lists]

    return read_mode([" ".join(map(str, t)) for t in texts], Ids(), predict,
                     WatermarkKey.from_bytes(key), gamma=GAMMA, context=CONTEXT, decoys=decoys)


VOCAB = 300


@pytest.fixture(scope="module")
def watermarked():
    return teacher_samples(VOCAB, watermark=True)


@pytest.fixture(scope="module")
def readings(watermarked):
    """Texts to read the suspects with: fresh watermarked outputs of the teacher."""
    return teacher_samples(VOCAB, watermark=True, sequences=40, length=100, seed=7)


def test_a_student_trained_on_watermarked_text_is_radioactive(watermarked, readings):
    student = bigram_student(watermarked, VOCAB)
    result = read(student, readings)
    assert result.key_id == KEY_ID and result.mode == "reading"
    assert result.p_value < 1e-5 and result.green_rate > 0.5
    assert result.decoy_rank == 1 and result.decoy_p_value == pytest.approx(1 / 101)
    assert result.tokens_needed == 0
    assert result.tokens_scored == len({t for s in readings for t in s})  # one per input token


def test_a_student_trained_on_unwatermarked_text_is_not(readings):
    control = bigram_student(teacher_samples(VOCAB, watermark=False), VOCAB)
    result = read(control, readings)
    assert result.p_value > 0.01
    assert result.decoy_rank > 1


def test_another_key_finds_nothing_in_the_radioactive_student(watermarked, readings):
    result = read(bigram_student(watermarked, VOCAB), readings, key=b"some other key")
    assert result.p_value > 0.01 and result.key_id != KEY_ID


def test_each_window_and_prediction_counts_once():
    text = [5, 9, 2, 9, 2, 7]
    preds = [1, 3, 4, 3, 4, 8]
    once = reading_tuples([text], [preds], 1)
    assert once == [(5, 1), (9, 3), (2, 4), (7, 8)]
    assert reading_tuples([text] * 100, [preds] * 100, 1) == once
    assert reading_tuples([text], [preds], 2) == [(5, 9, 3), (9, 2, 4), (2, 9, 3), (2, 7, 8)]


def test_decoys_are_fixed_distinct_keys():
    keys = decoy_keys(50)
    assert keys == decoy_keys(50)
    assert len({k.window_seed for k in keys}) == 50
    assert KEY_ID not in {k.key_id for k in keys}


def test_tokens_needed_reaches_the_target_and_not_before():
    more = tokens_needed(0.35, 100, GAMMA)
    assert more is not None and more > 0
    n = 100 + more
    assert binomial_tail(-(-35 * n // 100), n, GAMMA) < 1e-5
    assert binomial_tail(-(-35 * (n - 1) // 100), n - 1, GAMMA) >= 1e-5
    assert tokens_needed(0.25, 1000, GAMMA) is None
    assert tokens_needed(0.2, 1000, GAMMA) is None
    assert tokens_needed(0.9, 200, GAMMA) == 0
