"""The student's tokenizer: trained with `tokenizers` on the training records, for transformers.

Three kinds: `digits` (byte-level BPE whose pre-tokenizer splits every digit into its own token, so
numbers are read digit by digit, which arithmetic learns far faster), `bpe` (plain byte-level BPE)
and `chars` (one token per byte, no merges). All share the special tokens of the chat template
below; `<|end|>` closes every turn and is the eos token, so generation stops after an assistant
turn.
This module knows nothing about models or training; it only turns text into ids and back. A saved
tokenizer (ours or a checkpoint's) is loaded with `seed.endpoints.local.load_tokenizer`, through
`load_saved_tokenizer`, which turns a directory whose tokenizer does not load into a UserError.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerBase, PreTrainedTokenizerFast

from seed.endpoints.local import load_tokenizer
from seed.errors import UserError, first_line
from seed.train.data import TEMPLATE_SETTING

PAD, END = "<|pad|>", "<|end|>"
ROLES = ("system", "user", "assistant", "tool")
SPECIAL_TOKENS = [PAD, END, *(f"<|{r}|>" for r in ROLES)]

# Each turn is `<|role|>content<|end|>`; a generation prompt is `<|assistant|>`. Turns begin and end
# on special tokens, so rendering a prefix of the conversation tokenizes to a prefix of the ids. An
# assistant turn's thinking trace comes first, as `<think>\n...\n</think>\n\n` (Qwen3's layout), so
# a student trained on traces thinks, and `seed serve`'s `auto` reasoning parser splits it. Tools
# offered are listed in a system turn at the start (the conversation's own system prompt first), one
# JSON object a line; an assistant's calls follow its content in Hermes' blocks,
# `<tool_call>\n{"name": ..., "arguments": ...}\n</tool_call>` joined by newlines (what `seed
# serve --tool-parser auto` detects, parses and holds to the schema); a tool's answer is a `tool`
# turn. A conversation without tools or calls renders as it always did. (transformers renders with
# trim_blocks: a newline right after a `{% ... %}` tag is dropped, hence `{{ '\n' }}`.)
CHAT_TEMPLATE = (
    "{% if tools %}<|system|>"
    "{% if messages and messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n"
    "{% endif %}You can call these functions. To call one, write <tool_call>\n"
    "{\"name\": NAME, \"arguments\": ARGUMENTS}\n</tool_call>\n"
    "{% for t in tools %}{{ t | tojson }}\n{% endfor %}<|end|>{% endif %}"
    "{% for m in messages %}"
    "{% if not (tools and loop.first and m['role'] == 'system') %}<|{{ m['role'] }}|>"
    "{% if m['role'] == 'assistant' and m['reasoning_content'] %}"
    "<think>\n{{ m['reasoning_content'] }}\n</think>\n\n{% endif %}"
    "{{ m['content'] or '' }}"
    "{% for c in m['tool_calls'] or [] %}{{ '\\n' if not loop.first else '' }}<tool_call>\n"
    "{\"name\": {{ c['function']['name'] | tojson }}, \"arguments\": "
    "{% if c['function']['arguments'] is string %}{{ c['function']['arguments'] }}"
    "{% else %}{{ c['function']['arguments'] | tojson }}{% endif %}}\n</tool_call>{% endfor %}"
    "<|end|>{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)

KINDS = ("digits", "bpe", "chars")


def _pre_tokenizer(kind: str) -> pre_tokenizers.PreTokenizer:
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if kind == "digits":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    return byte_level


def train_tokenizer(texts: Iterable[str], kind: str = "digits",
                    vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """A tokenizer of `kind` trained on `texts`, with the chat template and special tokens set."""
    if kind not in KINDS:
        raise UserError(f"train.tokenizer.kind = {kind!r}: use one of {', '.join(KINDS)}")
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if kind == "chars":
        vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + sorted(alphabet))}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    else:
        tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = _pre_tokenizer(kind)
    tok.decoder = decoders.ByteLevel()
    if kind == "chars":
        tok.add_special_tokens(SPECIAL_TOKENS)
    else:
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                      initial_alphabet=alphabet, show_progress=False)
        tok.train_from_iterator(texts, trainer=trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=END, pad_token=PAD,
                                      additional_special_tokens=SPECIAL_TOKENS[2:])
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def load_saved_tokenizer(path: str | Path, template: str | None = None,
                         setting: str | None = None) -> PreTrainedTokenizerBase:
    """A saved tokenizer with its chat template (`load_tokenizer`); one that does not load is a
    UserError naming `setting`, the recipe key that gave the directory, if any."""
    try:
        return load_tokenizer(path, template, template_setting=TEMPLATE_SETTING)
    except (OSError, ValueError, KeyError) as e:
        where = f"{setting} = {str(path)!r}" if setting else str(path)
        raise UserError(f"{where}: its tokenizer does not load ({first_line(e)}); the directory "
                        "needs the "
                        "tokenizer files saved with the model (tokenizer.json, ...)") from None
