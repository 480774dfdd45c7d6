"""Recipes name a bad key's path; a stage is skipped only while inputs and outputs are unchanged."""

import pytest

from helpers.recipes import write_recipe
from seed.errors import UserError
from seed.recipe import load_recipe
from seed.runs import Run

GOOD = {"name": "t",
        "generate": {"teacher": {"kind": "tasks", "tasks": [{"name": "basic_arithmetic"}]}}}


def test_quickstart_recipe_is_valid():
    recipe, text = load_recipe("recipes/quickstart.toml")
    assert recipe.name == "quickstart"
    assert recipe.generate.teacher.tasks[0].name
    assert "[generate]" in text


@pytest.mark.parametrize(("key", "value", "message"), [
    ("train.lerning_rate", 1, "train.lerning_rate: unknown key"),
    ("train.lr", "fast", "train.lr: input should be a valid number"),
    ("eval.samples", -1, "eval.samples: input should be greater than or equal to 0"),
])
def test_a_bad_key_is_an_error_that_names_its_path(tmp_path, key, value, message):
    path = write_recipe(tmp_path / "r.toml", GOOD, {key: value})
    with pytest.raises(UserError, match=message):
        load_recipe(path)


def test_a_missing_section_is_named(tmp_path):
    path = write_recipe(tmp_path / "r.toml", {"name": "t"})
    with pytest.raises(UserError, match="generate: missing key"):
        load_recipe(path)


def test_a_stage_is_fresh_only_while_inputs_and_outputs_are_unchanged(tmp_path):
    run = Run(tmp_path / "run")
    run.begin("t", 'name = "t"\n', {}, 0)
    src = tmp_path / "in.txt"
    src.write_text("v1")
    h = run.inputs_hash({"lr": 1}, [src])
    assert not run.is_fresh("s", h)
    with run.stage("s", h, ["out.txt"]) as info:
        run.path("out.txt").write_text("result")
        info["n"] = 1
    assert run.is_fresh("s", h)
    assert Run(tmp_path / "run").is_fresh("s", h)  # the manifest on disk says the same
    assert run.manifest["stages"]["s"]["info"] == {"n": 1}
    assert not run.is_fresh("s", run.inputs_hash({"lr": 2}, [src]))  # config changed
    src.write_text("v2")
    assert not run.is_fresh("s", run.inputs_hash({"lr": 1}, [src]))  # input changed
    src.write_text("v1")
    run.path("out.txt").write_text("tampered")
    assert not run.is_fresh("s", h)  # output changed


def test_a_failed_stage_is_recorded_and_not_fresh(tmp_path):
    run = Run(tmp_path / "run")
    run.begin("t", 'name = "t"\n', {}, 0)
    with pytest.raises(RuntimeError), run.stage("s", "h", []):
        raise RuntimeError("boom")
    assert run.manifest["stages"]["s"]["status"] == "failed"
    assert not run.is_fresh("s", "h")
