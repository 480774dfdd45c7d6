"""The one tiny-model builder: a random-weight Llama and its tokenizer, saved in a directory.

Built from a config in a few seconds and loadable offline with `AutoModelForCausalLM` and
`AutoTokenizer`; nothing is downloaded. Two kinds of tokenizer:

- `"chatml"` (the default): a byte-level BPE trained on a small corpus, with a ChatML chat
  template, like a chat checkpoint from a model hub; every string (JSON included) encodes. For
  serving, generation and judging tests.
- one of Seed's kinds (`"digits"`, `"bpe"`, `"chars"`): `seed.train.tokenizer.train_tokenizer`
  with Seed's chat template, like a student Seed trains. For training tests; trained on the
  arithmetic chats of `helpers.training.sums` unless `texts` is given.

`size` takes the shape from Seed's named student sizes (the model `seed train` builds);
otherwise `hidden` and `layers` set it. The weights are noise: what the model says is for a test
to pass through a real server or loop, not to assert.
"""

from __future__ import annotations

from pathlib import Path

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Compact versions of real tool-calling templates: each renders `tools`, an assistant's
# `tool_calls` (arguments as objects) and `role: "tool"` messages as its family's does.
# Qwen3's layout (tools in the system turn, <tool_call> blocks, <tool_response> in a user turn,
# reasoning_content of a replayed turn in <think>), with QwQ's and DeepSeek-R1's generation
# prompt that opens <think> (`enable_thinking=False` closes it at once, as Qwen3's does).
HERMES_THINK = """
{%- if tools %}
{{- '<|im_start|>system\n' }}
{%- if messages[0].role == 'system' %}{{- messages[0].content + '\n\n' }}{%- endif %}
{{- '# Tools\n\nYou are provided with function signatures within <tools></tools> XML tags:' }}
{{- '\n<tools>' }}
{%- for tool in tools %}{{- '\n' }}{{- tool | tojson }}{%- endfor %}
{{- '\n</tools>\n\nFor each function call, return a json object with function name and ' }}
{{- 'arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n' }}
{{- '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call><|im_end|>\n' }}
{%- elif messages[0].role == 'system' %}
{{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
{%- endif %}
{%- for m in messages %}
{%- if m.role == 'assistant' %}
{{- '<|im_start|>assistant\n' }}
{%- if m.reasoning_content %}{{- '<think>\n' + m.reasoning_content + '\n</think>\n\n' }}{%- endif %}
{{- m.content or '' }}
{%- for tc in m.tool_calls or [] %}
{%- if m.content or not loop.first %}{{- '\n' }}{%- endif %}
{{- '<tool_call>\n{"name": "' + tc.function.name + '", "arguments": ' }}
{{- tc.function.arguments | tojson }}
{{- '}\n</tool_call>' }}
{%- endfor %}
{{- '<|im_end|>\n' }}
{%- elif m.role == 'tool' %}
{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}
{{- '<|im_start|>user' }}
{%- endif %}
{{- '\n<tool_response>\n' + m.content + '\n</tool_response>' }}
{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}
{%- elif m.role != 'system' or not loop.first %}
{{- '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|im_start|>assistant\n' }}
{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\n\n</think>\n\n' }}
{%- else %}{{- '<think>\n' }}{%- endif %}
{%- endif %}
"""

# DeepSeek-R1's: the generation prompt opens <think>, a replayed reply keeps only its answer; no
# tools.
THINK_CHATML = """
{%- for m in messages %}
{%- if m.role == 'assistant' %}
{{- '<|im_start|>assistant\n' + m.content.split('</think>')[-1] + '<|im_end|>\n' }}
{%- else %}
{{- '<|im_start|>' + m.role + '\n' + m.content + '<|im_end|>\n' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n<think>\n' }}{%- endif %}
"""

# Llama 3.1's: the tools and the JSON call format in the first user turn, a call as the whole
# assistant turn, a tool's answer in an `ipython` turn.
LLAMA31_JSON = """
{%- for m in messages %}
{%- if m.role == 'user' and loop.first and tools %}
{{- '<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, please ' }}
{{- 'respond with a JSON for a function call with its proper arguments that best answers ' }}
{{- 'the given prompt.\n\nRespond in the format {"name": function name, "parameters": ' }}
{{- 'dictionary of argument name and its value}.Do not use variables.\n\n' }}
{%- for t in tools %}{{- t | tojson(indent=4) }}{{- '\n\n' }}{%- endfor %}
{{- m.content + '<|eot_id|>' }}
{%- elif m.role == 'assistant' and m.tool_calls %}
{%- set tc = m.tool_calls[0].function %}
{{- '<|start_header_id|>assistant<|end_header_id|>\n\n{"name": "' + tc.name + '", "parameters": ' }}
{{- tc.arguments | tojson }}
{{- '}<|eot_id|>' }}
{%- elif m.role == 'tool' %}
{{- '<|start_header_id|>ipython<|end_header_id|>\n\n' + m.content + '<|eot_id|>' }}
{%- else %}
{{- '<|start_header_id|>' + m.role + '<|end_header_id|>\n\n' + m.content + '<|eot_id|>' }}
{%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

# Mistral's (v3): the tools before the last user turn, calls as a [TOOL_CALLS] list with ids,
# a tool's answer in [TOOL_RESULTS].
MISTRAL_TOOLS = """
{%- set ns = namespace(last_user=0) %}
{%- for m in messages %}
{%- if m.role == 'user' %}{%- set ns.last_user = loop.index0 %}{%- endif %}
{%- endfor %}
{%- for m in messages %}
{%- if m.role == 'user' %}
{%- if tools and loop.index0 == ns.last_user %}
{{- '[AVAILABLE_TOOLS] ' }}{{- tools | tojson }}{{- '[/AVAILABLE_TOOLS]' }}
{%- endif %}
{{- '[INST] ' + m.content + '[/INST]' }}
{%- elif m.role == 'assistant' and m.tool_calls %}
{{- '[TOOL_CALLS] [' }}
{%- for tc in m.tool_calls %}
{{- '{"name": "' + tc.function.name + '", "arguments": ' }}
{{- tc.function.arguments | tojson }}
{{- ', "id": "' + tc.id + '"}' }}
{%- if not loop.last %}{{- ', ' }}{%- endif %}
{%- endfor %}
{{- ']<|im_end|>' }}
{%- elif m.role == 'assistant' %}
{{- m.content + '<|im_end|>' }}
{%- elif m.role == 'tool' %}
{{- '[TOOL_RESULTS] {"content": ' }}{{- m.content | tojson }}
{{- ', "call_id": "' + m.tool_call_id + '"}[/TOOL_RESULTS]' }}
{%- endif %}
{%- endfor %}
"""

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Seed builds a chat model you own from a stronger model you can call.",
    '{"verdict": "A", "score": 7, "reason": "clear and correct"}',
    '{"name": "Ada", "age": 36, "tags": ["math", "code"], "ok": true, "none": null}',
    "What is 12 + 30? The answer is 42. 0 1 2 3 4 5 6 7 8 9 10 100 1000",
    "Hello! How can I help you today? Please explain the idea in simple words.",
    "user assistant system: a helpful, honest and harmless assistant answers questions.",
]

# Seed's kinds ask for 200 tokens unless told: below the 256 bytes plus specials, so the BPE learns
# no merges and every character is one token, as the training tests were written for.
CHATML_VOCAB, SEED_KIND_VOCAB = 400, 200


def tiny_model(path: Path, *, tokenizer: str = "chatml", texts: list[str] | None = None,
               vocab: int | None = None, size: str | None = None, hidden: int = 64,
               layers: int = 2, context: int = 256, chat_template: bool = True,
               seed: int = 0, template: str = CHATML, added_tokens: tuple[str, ...] = ()) -> Path:
    """Save a random-weight Llama chat model with its tokenizer in `path`; returns `path`.

    `tokenizer`: "chatml" or a Seed tokenizer kind; `texts` it is trained on; `vocab` its
    requested size; `size`: a Seed student size ("nano", "tiny", ...) instead of `hidden` and
    `layers`; `context`: positions; `chat_template=False` leaves the tokenizer without one
    ("chatml" only); `seed` draws the weights; `template`: the chat template ("chatml" only:
    CHATML, HERMES_THINK, THINK_CHATML, LLAMA31_JSON, MISTRAL_TOOLS); `added_tokens`: whole
    tokens that are not special (decoded as text, as Qwen3's `<think>` and `<tool_call>` are).
    """
    if tokenizer == "chatml":
        tok = _chatml_tokenizer(texts or CORPUS, vocab or CHATML_VOCAB,
                                template if chat_template else None, added_tokens)
    else:
        from seed.train.tokenizer import train_tokenizer

        tok = train_tokenizer(texts or _sums_texts(), tokenizer, vocab or SEED_KIND_VOCAB)
    tok.save_pretrained(str(path))
    if size is not None:
        _save_seed_student(path, tok, size, context, seed)
    else:
        _save_chat_llama(path, tok, hidden, layers, context, seed)
    return path


def _sums_texts() -> list[str]:
    from helpers.training import sums

    return [m["content"] for chat in sums() for m in chat] * 3


def _chatml_tokenizer(texts: list[str], vocab: int, chat_template: str | None,
                      added_tokens: tuple[str, ...] = ()):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(texts * 20, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>",
                                  eos_token="<|im_end|>", pad_token="<|endoftext|>")
    if added_tokens:
        from tokenizers import AddedToken

        tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in added_tokens])
    if chat_template:
        tok.chat_template = chat_template
    return tok


def _save_seed_student(path: Path, tok, size: str, context: int, seed: int) -> None:
    from seed.train.models import build_student, student_config

    config = student_config(size, len(tok), context, tok.pad_token_id, tok.eos_token_id)
    build_student(config, seed).save_pretrained(str(path))


def _save_chat_llama(path: Path, tok, hidden: int, layers: int, context: int, seed: int) -> None:
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=context, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True, initializer_range=0.3)
    LlamaForCausalLM(cfg).save_pretrained(str(path))
    GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                     temperature=1.0, top_p=1.0).save_pretrained(str(path))
