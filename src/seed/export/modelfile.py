"""The Ollama `Modelfile` written beside an exported GGUF: `ollama create NAME -f Modelfile`.

Ollama renders prompts with Go templates, not the Jinja chat template inside the GGUF, so Seed's
template (seed.train.tokenizer.CHAT_TEMPLATE: `<|role|>content<|end|>` per turn, an assistant's
thinking trace as `<think>\\n...\\n</think>\\n\\n` before its answer, `<|assistant|>` to prompt a
reply) is written again as the Go template below, and `<|end|>` as the stop sequence. A student
with another chat template (a checkpoint's) gets no TEMPLATE: Ollama then picks one from the
GGUF's `tokenizer.chat_template` itself, and the eos token is the stop. Sampling: greedy
(temperature 0), as `seed eval` grades the student, unless the model's generation_config.json
asks to sample. Ollama is not installed where Seed is tested: the template is checked by reading,
not by running Ollama. This module writes text; it reads nothing but generation_config.json.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from seed.export.gguf_vocab import Vocab
from seed.train.tokenizer import CHAT_TEMPLATE, END

# Seed's chat template in Ollama's Go template syntax (.Messages: Role, Content, Thinking).
GO_TEMPLATE = (
    '{{- range .Messages }}<|{{ .Role }}|>'
    '{{- if and (eq .Role "assistant") .Thinking }}<think>\n{{ .Thinking }}\n</think>\n\n'
    '{{ end }}{{ .Content }}<|end|>{{ end }}<|assistant|>'
)


def _sampling(model_dir: Path) -> dict[str, float | int]:
    """Ollama PARAMETERs from generation_config.json: greedy unless it asks to sample."""
    path = model_dir / "generation_config.json"
    try:
        config: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        config = {}
    if not config.get("do_sample"):
        return {"temperature": 0}
    out: dict[str, float | int] = {"temperature": float(config.get("temperature", 1.0))}
    if config.get("top_p") is not None:
        out["top_p"] = float(config["top_p"])
    if config.get("top_k"):
        out["top_k"] = int(config["top_k"])
    return out


def modelfile_text(gguf_name: str, vocab: Vocab, config: dict[str, Any], model_dir: Path) -> str:
    """The Modelfile of `gguf_name` (a file in the same directory)."""
    lines = ["# Load with: ollama create NAME -f Modelfile",
             f"FROM ./{gguf_name}"]
    if vocab.chat_template == CHAT_TEMPLATE:
        lines.append(f'TEMPLATE """{GO_TEMPLATE}"""')
        stops = [END]
    else:
        eos = vocab.tokens[vocab.eos_id] if vocab.eos_id is not None else None
        stops = [eos] if eos else []
    for stop in stops:
        lines.append(f"PARAMETER stop {json.dumps(stop)}")
    for key, value in _sampling(model_dir).items():
        lines.append(f"PARAMETER {key} {value}")
    lines.append(f"PARAMETER num_ctx {int(config['max_position_embeddings'])}")
    return "\n".join(lines) + "\n"
