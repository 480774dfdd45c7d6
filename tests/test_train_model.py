"""The student model: packed sequences stay apart; gradient accumulation equals one big batch."""

from __future__ import annotations

import pytest
import torch

from seed.errors import UserError
from seed.train.data import Example, pack
from seed.train.layout import Layout, Rows, packed_rows, token_count
from seed.train.loop import accumulate_gradients
from seed.train.models import build_student, load_student, student_config
from seed.train.runtime import Runtime
from seed.train.sft import full_loss

ONE_CPU = Runtime(torch.device("cpu"), rank=0, world=1, dtype="auto", threads=1, sharded=False)


def _backprop(model: torch.nn.Module, rows: Rows, micro_batch_size: int) -> float:
    """The SFT loop's gradient accumulation over `rows`, one process."""
    layout = Layout(lambda epoch: rows, full_loss, token_count, "rows")
    return accumulate_gradients(model, layout, rows, micro_batch_size, ONE_CPU)


@pytest.fixture()
def model(tiny_model_dir):
    torch.manual_seed(0)
    return load_student(tiny_model_dir).eval()


def _examples(n: int, vocab: int, seed: int = 0) -> list[Example]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        length = int(torch.randint(5, 20, (1,), generator=g))
        ids = torch.randint(10, vocab, (length,), generator=g).tolist()
        mask = (torch.rand(length, generator=g) < 0.5).long().tolist()
        out.append(Example(ids, mask))
    return out


def test_packed_logits_equal_per_example_logits_only_with_restarting_positions(model):
    examples = _examples(4, model.config.vocab_size)
    batch = pack(examples, 128, pad_id=0)
    assert len(batch) == 1
    with torch.no_grad():
        # No KV cache: with one, transformers does not look for packed sequences in position_ids.
        packed = model(input_ids=batch.input_ids, position_ids=batch.position_ids,
                       use_cache=False).logits[0]
        unaware = model(input_ids=batch.input_ids, use_cache=False).logits[0]
        start, diffs, unaware_diffs = 0, [], []
        for ex in examples:
            alone = model(input_ids=torch.tensor([ex.ids])).logits[0]
            end = start + len(ex.ids)
            diffs.append((packed[start:end] - alone).abs().max().item())
            unaware_diffs.append((unaware[start:end] - alone).abs().max().item())
            start = end
    assert max(diffs) < 1e-4
    # Without restarting positions the later examples attend to the earlier ones.
    assert min(unaware_diffs[1:]) > 1e-2


def test_accumulating_four_micro_batches_gives_the_gradients_of_one_big_batch(model):
    examples = _examples(24, model.config.vocab_size, seed=1)
    batch = {k: v[:8] for k, v in packed_rows(examples, 40, pad_id=0).items()}
    assert len(batch["input_ids"]) == 8
    per_row = batch["mask"][:, 1:].sum(1)
    assert per_row.min() != per_row.max()  # uneven rows: a plain mean of micro-losses would differ

    def grads(micro: int) -> tuple[float, list[torch.Tensor]]:
        model.zero_grad(set_to_none=True)
        loss = _backprop(model, batch, micro)
        return loss, [p.grad.clone() for p in model.parameters()]

    big_loss, big = grads(8)
    acc_loss, acc = grads(2)
    assert acc_loss == pytest.approx(big_loss, rel=1e-6)
    for g_big, g_acc in zip(big, acc, strict=True):
        torch.testing.assert_close(g_acc, g_big, rtol=1e-5, atol=1e-7)

    # The naive average of per-micro-batch means is a different loss.
    naive = []
    for start in range(0, 8, 2):
        micro = {k: v[start:start + 2] for k, v in batch.items()}
        naive.append(_backprop(model, micro, 2))
    assert sum(naive) / 4 != pytest.approx(big_loss, rel=1e-4)


def test_a_batch_without_trainable_tokens_is_a_one_line_error_naming_the_key(model):
    batch = {"input_ids": torch.ones(2, 8, dtype=torch.long),
             "mask": torch.zeros(2, 8, dtype=torch.long),
             "position_ids": torch.arange(8).repeat(2, 1)}
    with pytest.raises(UserError, match=r"nothing to learn from.*train\.seq_len"):
        _backprop(model, batch, 1)


def test_the_same_seed_builds_the_same_student_and_another_seed_does_not():
    cfg = student_config("nano", 100, 64, 0, 1)
    a, b, c = build_student(cfg, 3), build_student(cfg, 3), build_student(cfg, 4)
    wa, wb, wc = (m.model.embed_tokens.weight for m in (a, b, c))
    assert torch.equal(wa, wb)
    assert not torch.equal(wa, wc)


def test_unknown_size_and_missing_checkpoint_are_user_errors(tmp_path):
    with pytest.raises(UserError, match=r"train\.student\.size"):
        student_config("huge-ish", 100, 64, 0, 1)
    with pytest.raises(UserError, match="not a model directory"):
        load_student(tmp_path / "nope")
