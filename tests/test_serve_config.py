"""`seed serve --recipe R`: one serve config from a recipe's `[serve]` table and the flags.

Served recipes run a real server on a free port (the port flag always overrides the recipe's) and
are checked with the official `openai` client; errors are checked as the user sees them.
"""

from __future__ import annotations

import json
import pickle
import re

import openai
import pytest

from helpers.cli import run_cli
from helpers.models import tiny_model
from helpers.recipes import write_recipe
from helpers.serve import running_server, seed_env
from helpers.servers import free_port
from seed.errors import UserError
from seed.recipe import load_recipe, load_serve_config

KEY = "sk-from-the-keys-file"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_model(tmp_path_factory.mktemp("serve_config") / "tiny")


def served_models(url: str, key: str | None) -> list[str]:
    client = openai.OpenAI(base_url=url + "/v1", api_key=key or "none", max_retries=0)
    return [m.id for m in client.models.list().data]


def test_a_recipe_gives_keys_log_and_limits_and_flags_override_its_model_and_name(
        model_dir, tmp_path):
    """One server: the recipe's keys file, usage log and limits are used; the flags' model and
    name replace the recipe's (its model does not exist, so the server would not start on it)."""
    keys = tmp_path / "keys.txt"
    keys.write_text(f"{KEY}\n")
    log = tmp_path / "usage.jsonl"
    recipe = write_recipe(tmp_path / "serve.toml", {"serve": {
        "model": tmp_path / "no-such-model", "model_name": "recipe-name", "keys_file": keys,
        "usage_log": log, "max_running": 2, "port": free_port()}})
    with running_server(model_dir, "--recipe", recipe, "--model-name", "flag-name") as url:
        assert served_models(url, KEY) == ["flag-name"]
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        r = client.chat.completions.create(model="flag-name", max_tokens=4, temperature=0,
                                           messages=[{"role": "user", "content": "Hello!"}])
        assert r.model == "flag-name" and r.usage.completion_tokens >= 1
        with pytest.raises(openai.AuthenticationError):
            served_models(url, "sk-wrong")
    entries = [json.loads(line) for line in log.read_text().splitlines()]
    assert [(e["route"], e["key"], e["status"]) for e in entries] == [
        ("/v1/chat/completions", "key-1", 200), ("/v1/models", None, 401)]
    assert KEY not in log.read_text()


def test_a_serve_only_recipe_names_its_model_when_no_flag_does(model_dir, tmp_path):
    recipe = write_recipe(tmp_path / "serve.toml", {"serve": {"model": model_dir,
                                                              "model_name": "recipe-model"}})
    config = load_serve_config(recipe, {"model": None, "model_name": None})
    assert (config.model, config.model_name) == (model_dir, "recipe-model")


def test_a_typo_in_the_serve_table_is_one_line_naming_its_key(model_dir, tmp_path):
    recipe = write_recipe(tmp_path / "serve.toml", {"serve": {"model": model_dir,
                                                              "max_runing": 4}})
    r = run_cli("serve", "--recipe", recipe, env=seed_env())
    assert r.returncode == 2
    assert r.stderr.strip() == f"error: {recipe}: serve.max_runing: unknown key"


def test_a_bad_flag_value_names_the_flag_not_the_recipe(model_dir, tmp_path):
    recipe = write_recipe(tmp_path / "serve.toml", {"serve": {"model": model_dir,
                                                              "max_running": 4}})
    r = run_cli("serve", "--recipe", recipe, "--max-running", "0", env=seed_env())
    assert r.returncode == 2
    assert r.stderr.strip() == "error: --max-running: input should be greater than 0"


def test_a_recipe_without_a_serve_table_is_one_line(tmp_path):
    recipe = write_recipe(tmp_path / "other.toml", {"name": "x", "seed": 3})
    with pytest.raises(UserError, match=r"other\.toml: no \[serve\] table"):
        load_serve_config(recipe, {})


def test_a_full_recipe_validates_its_serve_table_too(tmp_path):
    full = {"name": "x", "generate": {"teacher": {"kind": "tasks"}}}
    ok = write_recipe(tmp_path / "ok.toml", full, {"serve.port": 9001, "serve.max_queue": 0})
    recipe, _ = load_recipe(ok)
    assert recipe.serve is not None and (recipe.serve.port, recipe.serve.max_queue) == (9001, 0)
    assert load_serve_config(ok, {"port": 9002}).port == 9002
    typo = write_recipe(tmp_path / "typo.toml", full, {"serve.max_runing": 4})
    with pytest.raises(UserError, match=r"typo\.toml: serve\.max_runing: unknown key$"):
        load_recipe(typo)


def test_an_api_key_in_a_recipe_is_refused_wherever_it_is_read(tmp_path):
    recipe = write_recipe(tmp_path / "keyed.toml", {"name": "x", "generate": {
        "teacher": {"kind": "tasks"}}, "serve": {"api_key": "sk-in-a-file"}})
    with pytest.raises(UserError, match=r"serve\.api_key: keep keys out of recipes"):
        load_serve_config(recipe, {})
    with pytest.raises(UserError, match=r"keep keys out of recipes") as e:
        load_recipe(recipe)
    assert "sk-in-a-file" not in str(e.value)


def test_the_api_key_stays_out_of_reprs_and_dumps_but_reaches_the_engine_process(tmp_path):
    config = load_serve_config(None, {"model": tmp_path, "api_key": "sk-secret-value",
                                      "max_running": 3, "port": None})
    assert "sk-secret-value" not in repr(config)
    assert "sk-secret-value" not in config.model_dump_json()
    assert "api_key" not in config.model_dump()
    copy = pickle.loads(pickle.dumps(config))  # how the spawned engine process receives it
    assert copy.api_key is not None and copy.api_key.get_secret_value() == "sk-secret-value"
    assert (copy.model, copy.max_running, copy.port) == (tmp_path, 3, 8000)


@pytest.mark.parametrize(("table", "message"), [
    ({"max_running": 5000}, "serve.max_running: input should be less than or equal to 4096"),
    ({"max_queue": -1}, "serve.max_queue: input should be greater than or equal to 0"),
    ({"max_body_bytes": 0}, "serve.max_body_bytes: input should be greater than 0"),
    ({"upstream_timeout": 0}, "serve.upstream_timeout: input should be greater than 0"),
    ({"allowed_hosts": ["http://seed.internal:80"]},
     "serve.allowed_hosts: 'http://seed.internal:80' is not a host name"),
], ids=["max-running", "max-queue", "max-body-bytes", "upstream-timeout", "allowed-hosts"])
def test_serve_settings_that_cannot_work_are_refused_naming_the_limit(tmp_path, table, message):
    recipe = write_recipe(tmp_path / "serve.toml", {"serve": {"model": tmp_path, **table}})
    with pytest.raises(UserError, match=re.escape(f"{recipe}: {message}")):
        load_serve_config(recipe, {})


def test_allowed_hosts_are_kept_lowercase(tmp_path):
    recipe = write_recipe(tmp_path / "serve.toml", {"serve": {
        "model": tmp_path, "allowed_hosts": ["Seed.Internal", "[fd00::1]"]}})
    assert load_serve_config(recipe, {}).allowed_hosts == ["seed.internal", "[fd00::1]"]
