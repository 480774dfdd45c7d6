"""Training data: chats rendered with the chat template, an assistant-only loss mask, and packing.

The mask is computed by rendering prefixes of the conversation: the tokens an assistant turn adds
are those of `messages[:i+1]` beyond `messages[:i]` plus the generation prompt. That works for any
template without generation markers in it, and it checks that each prefix tokenizes to a prefix of
the ids (a template where it does not cannot be masked this way, and says so).

Packing puts several examples in one fixed-length row with `position_ids` restarting at 0 for each,
which is how transformers' attention keeps packed examples from attending to each other when no
attention mask is passed. This module knows nothing about models, optimizers or the loop.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from seed.errors import UserError

Chat = list[dict[str, str]]
TEMPLATE_SETTING = "train.student.chat_template"  # the key that fixes a template problem


@dataclass
class Example:
    """One rendered conversation: token ids and, per token, 1 where the loss is taken."""

    ids: list[int]
    mask: list[int]


@dataclass
class Batch:
    """Packed rows: ids, loss mask and position ids, each of shape (rows, seq_len)."""

    input_ids: torch.Tensor
    mask: torch.Tensor
    position_ids: torch.Tensor

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def rows(self, start: int, stop: int) -> Batch:
        return Batch(self.input_ids[start:stop], self.mask[start:stop],
                     self.position_ids[start:stop])


def render(tokenizer: PreTrainedTokenizerBase, chats: Sequence[Chat],
           source: str = "the records") -> list[Example]:
    """Each chat's ids with an assistant-only mask, found by rendering and diffing prefixes.

    For assistant message i, the ids of `chat[:i]` with the generation prompt must be a prefix of
    the ids of `chat[:i+1]`, which must be a prefix of the whole chat's; the difference is trained.
    A template for which that fails is a UserError naming `source` (the records file) and the chat.
    """
    prompts: list[Chat] = []  # chat[:i], rendered with the generation prompt
    turns: list[Chat] = []  # chat[:i+1]; the last one of each chat is the whole chat
    plan: list[tuple[list[tuple[int, int]], int]] = []  # per chat: [(prompt, turn)], whole chat
    for chat in chats:
        pairs = []
        for i, m in enumerate(chat):
            if m["role"] == "assistant":
                prompts.append(chat[:i])
                turns.append(chat[: i + 1])
                pairs.append((len(prompts) - 1, len(turns) - 1))
        if not pairs or len(chat) != len(turns[-1]):
            turns.append(chat)
        plan.append((pairs, len(turns) - 1))
    texts = _render_texts(tokenizer, turns, False) + _render_texts(tokenizer, prompts, True)
    ids = tokenizer(texts, add_special_tokens=False)["input_ids"]
    turn_ids, prompt_ids = ids[: len(turns)], ids[len(turns):]

    examples = []
    for n, (pairs, whole) in enumerate(plan, 1):
        full = turn_ids[whole]
        mask = [0] * len(full)
        for p, t in pairs:
            prefix, turn = prompt_ids[p], turn_ids[t]
            if turn[: len(prefix)] != prefix or full[: len(turn)] != turn:
                raise UserError(f"{source} record {n}: the chat template does not render the "
                                "conversation's prefixes as prefixes of its tokens, so the "
                                "assistant mask cannot be computed; set "
                                f"{TEMPLATE_SETTING} to a template that does")
            if len(turn) == len(prefix):
                raise UserError(f"{source} record {n}: an assistant turn renders to no tokens "
                                f"with this chat template; set {TEMPLATE_SETTING} to one that "
                                "keeps the assistant's content")
            mask[len(prefix): len(turn)] = [1] * (len(turn) - len(prefix))
        examples.append(Example(full, mask))
    return examples


def _render_texts(tokenizer: PreTrainedTokenizerBase, chats: list[Chat],
                  generation_prompt: bool) -> list[str]:
    if not chats:
        return []
    # One batched call renders far faster than one call per chat.
    return list(tokenizer.apply_chat_template(chats, tokenize=False,
                                              add_generation_prompt=generation_prompt))


def assistant_mask(tokenizer: PreTrainedTokenizerBase, chat: Chat) -> Example:
    """One chat's ids and assistant-only mask."""
    return render(tokenizer, [chat])[0]


def pack(examples: Sequence[Example], seq_len: int, pad_id: int) -> Batch:
    """Greedy, in order: fill rows of `seq_len` with whole examples; a longer one is truncated.

    Padding gets mask 0 and its own positions from 0, so it is a separate (ignored) sequence.
    """
    rows: list[tuple[list[int], list[int], list[int]]] = []
    ids: list[int] = []
    mask: list[int] = []
    pos: list[int] = []

    def flush() -> None:
        if ids:
            pad = seq_len - len(ids)
            rows.append((ids + [pad_id] * pad, mask + [0] * pad, pos + list(range(pad))))

    for ex in examples:
        n = min(len(ex.ids), seq_len)
        if len(ids) + n > seq_len:
            flush()
            ids, mask, pos = [], [], []
        ids.extend(ex.ids[:n])
        mask.extend(ex.mask[:n])
        pos.extend(range(n))
    flush()
    if not rows:
        raise ValueError("nothing to pack: no examples")
    return Batch(torch.tensor([r[0] for r in rows]), torch.tensor([r[1] for r in rows]),
                 torch.tensor([r[2] for r in rows]))
