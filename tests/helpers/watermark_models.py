"""Tiny Llamas set to be count bigram models: watermark teachers, and students radioactivity reads.

A count bigram model's next token depends on the previous token only, which is what a student
learns at CPU scale from watermarked text at a window of 1 (see benchmarks/watermark_loop.py).
`bigram_llama` writes such a distribution into a real Llama directory (weights set, nothing
trained), so `seed serve` and `seed watermark radioactivity --model` run on it as on any model:

- `text_bigram_teacher`: a teacher that writes like real text, one character at a time (Seed's
  `chars` tokenizer: decoded text tokenizes back to the same ids, so a re-tokenized answer keeps
  every watermarked token);
- `count_student`: the student a count of the teacher's answers gives (each token's followers
  counted in the records `seed generate` wrote), in the teacher's tokenizer.

What the models say is for the tests and benchmarks to assert; this module only builds them.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from helpers.models import tiny_model
from seed.protect.detect import read_texts

# hidden width of the teachers: above the ~96 characters of ASCII text (bigram_llama's one
# dimension per written token, plus one)
TEACHER_HIDDEN = 128


def bigram_counts(sequences: list[list[int]], vocab: int) -> torch.Tensor:
    """How often each token follows each token in the training sequences, backed off a little to
    how often each token occurs (so a token never seen is followed by the most frequent one, and
    every token that occurs, even only first in a sequence, has a finite log-count after every
    token: backing off to the followers' counts alone gave such a token -inf, and the student
    NaN weights)."""
    counts = torch.zeros(vocab, vocab)
    occurs = torch.zeros(vocab)
    for seq in (s for s in sequences if s):
        t = torch.tensor(seq)
        occurs.index_add_(0, t, torch.ones(len(seq)))
        counts.index_put_((t[:-1], t[1:]), torch.ones(len(seq) - 1), accumulate=True)
    return counts + 1e-3 * occurs / occurs.sum()


def bigram_llama(path: Path, counts: torch.Tensor, writes: list[int]) -> Path:
    """Set the tiny Llama in `path` so that its next-token distribution after token x is the
    count model's, over the tokens it `writes` (the others get e^-20 of the weight): attention and
    MLP write nothing (o_proj, down_proj zero); embedding x holds the log-counts after x plus 20
    in one dimension per written token and a last dimension that gives every row the same norm,
    the final norm's weight undoes the RMS scaling, and lm_head reads each written token's
    dimension."""
    from transformers import AutoConfig, LlamaForCausalLM

    config = AutoConfig.from_pretrained(str(path))
    config.tie_word_embeddings = False
    hidden = config.hidden_size
    assert len(writes) < hidden, f"{len(writes)} written tokens need a hidden size above that"
    logits = torch.log(counts[:, writes] / counts[:, writes].sum(-1, keepdim=True)) + 20.0
    assert torch.isfinite(logits).all(), "every written token needs a count above 0 after each"
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


def ascii_text(text: str) -> str:
    """`text` with every character outside printable ASCII and newlines left out (one byte, so
    one token, each)."""
    return "".join(c for c in text if c == "\n" or (c.isascii() and c.isprintable()))


def token_lists(model_dir: Path, texts: list[str]) -> list[list[int]]:
    """Each text's token ids in the tokenizer of `model_dir`."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model_dir))
    return [tok(t, add_special_tokens=False)["input_ids"] for t in texts]


def vocab_size(model_dir: Path) -> int:
    return int(json.loads((model_dir / "config.json").read_text())["vocab_size"])


def written(sequences: list[list[int]]) -> list[int]:
    """The tokens that occur in the sequences."""
    return sorted({t for s in sequences for t in s})


def text_bigram_teacher(path: Path, texts: list[str], *, layers: int = 1) -> Path:
    """A tiny Llama with Seed's `chars` tokenizer in `path` that writes the characters of `texts`
    (printable ASCII and newlines) with their count bigram distribution; it never writes its end
    token, so every answer runs to max_tokens."""
    texts = [ascii_text(t) for t in texts]
    tiny_model(path, tokenizer="chars", hidden=TEACHER_HIDDEN, layers=layers, context=1024)
    seqs = token_lists(path, texts)
    return bigram_llama(path, bigram_counts(seqs, vocab_size(path)), written(seqs))


def count_student(teacher_dir: Path, records: Path, path: Path) -> Path:
    """The count bigram student of the assistant turns in `records` (Seed records), saved in `path`
    as a Llama with the teacher's tokenizer and shape."""
    shutil.copytree(teacher_dir, path)
    seqs = token_lists(path, read_texts(records))
    return bigram_llama(path, bigram_counts(seqs, vocab_size(path)), written(seqs))
