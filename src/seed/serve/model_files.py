"""What `seed serve` reads from a model directory's files without loading its weights.

`generation_config.json`'s defaults (an unreadable one counts as absent, as transformers treats
it) and the end-of-sequence ids (the generation config's and the tokenizer's). Both processes read
them from the same files: the API process for its defaults and grammars, the engine process to
stop sequences. This module imports neither torch nor transformers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def read_generation_config(path: Path) -> dict[str, Any]:
    """The model's `generation_config.json`, or {} when it has none or it is not JSON."""
    f = path / "generation_config.json"
    if not f.is_file():
        return {}
    try:
        config = json.loads(f.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return config if isinstance(config, dict) else {}


def end_of_sequence_ids(tokenizer: Any, generation: dict[str, Any]) -> set[int]:
    """Every id that ends a sequence: the generation config's `eos_token_id` (one or a list) and
    the tokenizer's own."""
    eos = generation.get("eos_token_id", tokenizer.eos_token_id)
    ids = set(eos if isinstance(eos, list) else [eos])
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    ids.discard(None)
    return {int(i) for i in ids}
