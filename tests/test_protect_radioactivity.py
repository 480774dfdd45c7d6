"""`seed watermark radioactivity`: a student trained on watermarked text is found, others are not.

The teacher is a random bigram table (logits over the next token after each token); the
watermarked teacher adds delta to the green list of the key at context 1, as `seed serve` does,
and samples. A count-based bigram student (its top-1 next token is the most frequent follower
in its training text) trained on the watermarked samples must be radioactive (p < 1e-5, the real
key first among the decoys); one trained on the same teacher's unwatermarked samples must not
(p > 0.01), nor the radioactive one under another key. The CLI reads a real Llama directory whose
weights are set so that its top-1 prediction is the count student's.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch

from helpers.cli import run_cli
from helpers.models import tiny_model
from helpers.serve import running_server
from seed.protect.detect import binomial_tail
from seed.protect.radioactivity import (
    decoy_keys,
    model_predictor,
    read_mode,
    reading_tuples,
    tokens_needed,
)
from seed.protect.radioactivity_api import run_api
from seed.protect.watermark import GreenList, WatermarkKey

KEY = b"radio-secret-41c7-never-printed"
KEY_ID = hashlib.sha256(KEY).hexdigest()[:12]
GAMMA, DELTA, CONTEXT = 0.25, 2.0, 1


def teacher_samples(vocab: int, *, watermark: bool, sequences: int = 200, length: int = 400,
                    seed: int = 0, writes: list[int] | None = None) -> list[list[int]]:
    """Token sequences from a random bigram teacher, watermarked (delta on the key's green list
    after the previous token) or not; the same teacher table either way. `writes`: the only
    tokens it writes (all when None)."""
    logits = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(1234))
    if writes is not None:
        logits[:, [t for t in range(vocab) if t not in set(writes)]] = -torch.inf
    if watermark:
        green = GreenList(WatermarkKey.from_bytes(KEY), GAMMA, CONTEXT)
        logits = logits + DELTA * green.mask(torch.arange(vocab)[:, None], vocab)
    probs = torch.softmax(logits, -1)
    gen = torch.Generator().manual_seed(seed)
    first = torch.tensor(writes) if writes is not None else torch.arange(vocab)
    tokens = first[torch.randint(len(first), (sequences,), generator=gen)]
    out = [tokens]
    for _ in range(length - 1):
        tokens = torch.multinomial(probs[tokens], 1, generator=gen)[:, 0]
        out.append(tokens)
    return torch.stack(out, 1).tolist()


def bigram_counts(sequences: list[list[int]], vocab: int) -> torch.Tensor:
    """How often each token follows each token in the training sequences, backed off a little to
    the overall counts (so a token never seen is followed by the most frequent one)."""
    counts = torch.zeros(vocab, vocab)
    for seq in sequences:
        t = torch.tensor(seq)
        counts.index_put_((t[:-1], t[1:]), torch.ones(len(seq) - 1), accumulate=True)
    return counts + 1e-3 * counts.sum(0) / counts.sum()


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
    return teacher_samples(VOCAB, watermark=True, sequences=20, length=200, seed=7)


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


def bigram_llama(path, counts: torch.Tensor, writes: list[int]):
    """A tiny Llama whose next-token distribution after token x is the count student's, over the
    tokens it `writes` (the others get e^-20 of the weight): attention and MLP write nothing
    (o_proj, down_proj zero); embedding x holds the log-counts after x plus 20 in one dimension
    per written token and a last dimension that gives every row the same norm, the final norm's
    weight undoes the RMS scaling, and lm_head reads each written token's dimension."""
    from transformers import AutoConfig, LlamaForCausalLM

    config = AutoConfig.from_pretrained(str(path))
    config.tie_word_embeddings = False
    hidden = config.hidden_size
    assert len(writes) < hidden
    logits = torch.log(counts[:, writes] / counts[:, writes].sum(-1, keepdim=True)) + 20.0
    radius = float(logits.norm(dim=-1).max())
    embed = torch.zeros(config.vocab_size, hidden)
    embed[:, :len(writes)] = logits
    embed[:, -1] = (radius ** 2 - logits.pow(2).sum(-1)).clamp(min=0).sqrt()
    head = torch.zeros(config.vocab_size, hidden)
    head[torch.tensor(writes), torch.arange(len(writes))] = 1.0
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight.copy_(embed)
        model.lm_head.weight.copy_(head)
        model.model.norm.weight.fill_(radius / hidden ** 0.5)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
    model.save_pretrained(str(path))
    return path


def plain_characters(model_dir) -> list[int]:
    """The tokens that are one printable ASCII character no BPE merge touches: text written in
    them tokenizes back to the same tokens (a random model's arbitrary tokens mostly do not, a
    real model's text mostly does)."""
    spec = json.loads((model_dir / "tokenizer.json").read_text())
    merged = {part for m in spec["model"]["merges"]
              for part in (m if isinstance(m, list) else m.split(" "))}
    return sorted(i for t, i in spec["model"]["vocab"].items()
                  if len(t) == 1 and t.isascii() and t.isprintable() and t not in merged)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """The tiny Llama directory (a teacher that writes plain characters, learned by the count
    student), the key file, and watermarked texts it reads."""
    tmp = tmp_path_factory.mktemp("radio")
    path = tiny_model(tmp / "student")
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    plain = plain_characters(path)
    assert len(plain) >= 30
    counts = bigram_counts(teacher_samples(vocab, watermark=True, writes=plain), vocab)
    student = counts.argmax(-1).tolist()
    bigram_llama(path, counts, plain)
    key = tmp / "watermark.key"
    key.write_bytes(KEY)
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(path))
    texts = tmp / "outputs.txt"
    texts.write_text("\n".join(tok.decode(s) for s in teacher_samples(
        vocab, watermark=True, sequences=10, length=200, seed=9, writes=plain)))
    prompts = tmp / "prompts.txt"
    prompts.write_text("\n".join(f"Write a story about the number {i}." for i in range(24)))
    return {"path": path, "key": key, "texts": texts, "prompts": prompts, "student": student,
            "tmp": tmp}


def test_the_llama_predicts_as_the_count_student(llama):
    _, predict = model_predictor(llama["path"])
    ids = list(range(0, len(llama["student"]), 7))
    assert predict([ids])[0] == [llama["student"][t] for t in ids]


def test_the_cli_reads_a_radioactive_model_directory(llama):
    proc = run_cli("watermark", "radioactivity", "--model", llama["path"], "--key-file",
                   llama["key"], "--texts", llama["texts"], "--context", "1", "--json")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert KEY.decode() not in proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["radioactive"] is True and result["key_id"] == KEY_ID
    assert result["p_value"] < 1e-5 and result["decoy_rank"] == 1 and result["decoys"] == 100
    assert result["tokens_scored"] >= 30  # one tuple per distinct input token at context 1
    assert "evidence consistent with training on outputs watermarked with key id " + KEY_ID in \
        result["verdict"]


def test_api_mode_asks_a_served_radioactive_model(llama, capsys):
    """The Llama behind a real `seed serve` (no watermark of its own), sampled at temperature 1:
    its answers follow the count student, so their own windows are green."""
    cache = llama["tmp"] / "requests.sqlite"
    with running_server(llama["path"]) as url:
        found = run_api(url + "/v1", "student", llama["key"], [llama["prompts"]], llama["path"],
                        gamma=GAMMA, context=CONTEXT, decoys=100, threshold=1e-5, as_json=True,
                        api_key_env=None, max_tokens=48, temperature=1.0, max_cost=None,
                        cache=cache)
    out = capsys.readouterr()
    assert found is True and KEY.decode() not in out.out + out.err
    result = json.loads(out.out)
    assert result["mode"] == "api" and result["texts"] == 24 and result["key_id"] == KEY_ID
    assert result["p_value"] < 1e-5 and result["decoy_rank"] == 1
    assert result["tokens_scored"] >= 200
    assert KEY not in cache.read_bytes()
