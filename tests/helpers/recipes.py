"""The one way tests write a recipe: a dict (plus dotted-path overrides) saved as a TOML file.

`write_recipe(path, recipe, {"train.max_steps": 7})` writes `recipe` with `train.max_steps` set,
the dotted paths being the ones Seed's messages name. Nested dicts become tables, lists of dicts
arrays of tables, paths strings. The starting points tests share are here too: `teacher_recipe`
(`seed generate` against an OpenAI-compatible server), `checkpoint_recipe` (fine-tuning a local
checkpoint) and `SMALL` (the `[train]` keys of a short training run). What a recipe should make
Seed do is for each test to assert.
"""

from __future__ import annotations

import copy
import json
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

SMALL = {"seq_len": 48, "batch_size": 8, "max_steps": 12, "warmup_steps": 2, "log_every": 1,
         "checkpoint_every": 100, "threads": 1, "lr": 1e-2}


def write_recipe(path: Path, recipe: Mapping[str, Any],
                 overrides: Mapping[str, Any] | None = None) -> Path:
    """Save `recipe`, with each dotted key of `overrides` set in it, as TOML in `path`."""
    data = with_overrides(recipe, overrides or {})
    text = _table(data, ())
    assert tomllib.loads(text) == json.loads(json.dumps(data, default=str)), text
    path.write_text(text)
    return path


def with_overrides(recipe: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of `recipe` with each dotted key of `overrides` ("train.max_steps") set."""
    data = copy.deepcopy(dict(recipe))
    for dotted, value in overrides.items():
        *tables, key = dotted.split(".")
        node = data
        for name in tables:
            node = node.setdefault(name, {})
        node[key] = value
    return data


def teacher_recipe(base_url: str, prompts: Path | None = None, *,
                   model: str = "fault-model") -> dict[str, Any]:
    """`seed generate` asking `model` at `base_url` (an OpenAI-compatible server) about the
    prompts file `prompts` (CC0), if any."""
    recipe: dict[str, Any] = {
        "name": "gen-test", "seed": 7,
        "generate": {"teacher": {"kind": "openai", "base_url": base_url, "model": model}}}
    if prompts is not None:
        recipe["generate"]["prompts"] = [{"path": str(prompts), "license": "CC0-1.0"}]
    return recipe


def checkpoint_recipe(name: str, base: Path, batch_size: int) -> dict[str, Any]:
    """A 6-step fine-tuning run of the checkpoint `base`, for the one- vs many-process tests."""
    return {"name": name, "generate": {"teacher": {"kind": "tasks"}},
            "train": {"seq_len": SMALL["seq_len"], "batch_size": batch_size, "max_steps": 6,
                      "warmup_steps": 2, "lr": SMALL["lr"], "log_every": 1, "threads": 1,
                      "student": {"checkpoint": str(base)}}}


def write_prompts(path: Path, n: int, prefix: str = "question") -> Path:
    """A prompts file of `n` lines: {"prompt": "question 0"}, ..."""
    path.write_text("".join(json.dumps({"prompt": f"{prefix} {i}"}) + "\n" for i in range(n)))
    return path


def _table(table: Mapping[str, Any], where: tuple[str, ...]) -> str:
    plain = {k: v for k, v in table.items() if not _is_table(v) and not _is_tables(v)}
    lines = [f"{_key(k)} = {_value(v)}" for k, v in plain.items()]
    for k, v in table.items():
        inner = (*where, _key(k))
        if _is_table(v):
            lines += ["", f"[{'.'.join(inner)}]", _table(v, inner)]
        elif _is_tables(v):
            for item in v:
                lines += ["", f"[[{'.'.join(inner)}]]", _table(item, inner)]
    return "\n".join(lines).strip("\n") + "\n"


def _is_table(value: Any) -> bool:
    return isinstance(value, Mapping)


def _is_tables(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, Mapping) for v in value)


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else json.dumps(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))
    if isinstance(value, list):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    raise TypeError(f"no TOML for {value!r}")
