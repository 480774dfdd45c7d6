"""Every recipe key that src/seed names in a message, docstring or comment exists in the recipe.

What counts as a recipe path: in any string literal (messages, docstrings, f-string parts) or
comment, a dotted run of identifiers that starts with a recipe section (`generate`, `train`,
`eval`, `policy`, `serve`: the fields of `Recipe` that hold a table), quoted or not:
`train.distill.teacher`, `[eval.judge]`, `policy.unknown = "block"`. Not counted: a run preceded by
a letter, digit, `.`, `/` or `-` (a module like `seed.train.loop`, a path like `runs/x/eval.x`),
and a file name (`train.jsonl`, `policy.json`). A path exists when each part is a field of the
model the previous part holds (through `| None`, lists and `kind`-tagged unions); a dict field
takes any key below it (`generate.params.logprobs`).
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from pathlib import Path
from typing import Any, get_args, get_origin

from pydantic import BaseModel

from seed.recipe import Recipe

SRC = Path(__file__).resolve().parents[1] / "src" / "seed"
FILE_EXTENSIONS = {"json", "jsonl", "toml", "py", "html", "csv", "txt", "sqlite", "md", "gz",
                   "jinja", "safetensors", "log"}
# Paths that name nothing on purpose, each with the reason.
NOT_RECIPE_KEYS = {
    "train.lerning_rate": "recipe.py's docstring: the example of a typo that is an error",
    "generate.teacher.tasks.base_url": "recipe.py: pydantic's error location, with the union's "
                                       "tag, that recipe_path turns into the author's path",
}


def models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in models_in(arg)]


def holds_dict(annotation: Any) -> bool:
    return annotation is dict or get_origin(annotation) is dict or any(
        holds_dict(arg) for arg in get_args(annotation))


def sections(model: type[BaseModel] = Recipe) -> list[str]:
    return [name for name, field in model.model_fields.items() if models_in(field.annotation)]


def path_exists(path: str, models: list[type[BaseModel]] | None = None) -> bool:
    """Whether a recipe could hold this dotted path (see the module docstring)."""
    head, _, rest = path.partition(".")
    for model in models or [Recipe]:
        field = model.model_fields.get(head)
        if field is None:
            continue
        if not rest or holds_dict(field.annotation):
            return True
        inner = models_in(field.annotation)
        if inner and path_exists(rest, inner):
            return True
    return False


def path_pattern() -> re.Pattern[str]:
    names = "|".join(sections())
    return re.compile(rf"(?<![\w./-])(?:{names})(?:\.[A-Za-z_]\w*)+")


def recipe_paths(source: str) -> list[tuple[int, str]]:
    """(line, path) for each recipe path in the source's string literals and comments."""
    pattern, texts = path_pattern(), []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            texts.append((node.lineno, node.value))
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            texts.append((tok.start[0], tok.string))
    found = []
    for line, text in texts:
        for match in pattern.finditer(text):
            if match.group().rsplit(".", 1)[1] not in FILE_EXTENSIONS:
                found.append((line, match.group()))
    return sorted(found)


def test_every_recipe_path_named_in_src_exists():
    missing = []
    for path in sorted(SRC.rglob("*.py")):
        for line, key in recipe_paths(path.read_text()):
            if key not in NOT_RECIPE_KEYS and not path_exists(key):
                missing.append(f"{path.relative_to(SRC.parent)}:{line}: {key}")
    assert not missing, "recipe paths that no recipe can hold:\n" + "\n".join(missing)


def test_the_sections_are_the_recipe_tables():
    assert sections() == ["generate", "train", "rl", "eval", "policy", "serve"]


def test_a_path_exists_through_models_unions_and_dicts_only():
    assert path_exists("train.distill.teacher")
    assert path_exists("generate.params.logprobs")  # a dict: any key below it
    assert path_exists("eval.judge.endpoint.base_url")  # the openai variant of the union
    assert path_exists("eval.judge.endpoint.tasks")  # the tasks variant
    assert path_exists("train.lora.load_in_4bit")  # through `| None`
    assert path_exists("serve.keys_file")
    assert not path_exists("train.kd_beta")
    assert not path_exists("generate.teacher.api_key")
    assert not path_exists("eval.judge.mode.pairwise")  # below a plain value
    assert not path_exists("train.student.size.tiny")


def test_paths_are_read_from_strings_and_comments_but_not_module_or_file_names():
    source = '''"""Reads [eval.judge] and `train.distill.top_k`."""
import seed.train.loop  # the loop reads train.seq_len
x = f"{name}: set generate.teacher.api_key_file or train.kd_beta = 0.5"
y = "runs/a/train.jsonl, eval.jsonl, policy.json, seed.eval.judge, my-train.x"
'''
    assert recipe_paths(source) == [
        (1, "eval.judge"), (1, "train.distill.top_k"), (2, "train.seq_len"),
        (3, "generate.teacher.api_key_file"), (3, "train.kd_beta")]
