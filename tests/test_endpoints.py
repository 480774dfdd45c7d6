"""Endpoints: each kind's recipe section takes only its own keys, one factory builds every kind,
and every kind answers the whole interface (the defaults where a kind has nothing to do)."""

import asyncio
from pathlib import Path

import pytest

from helpers.cli import assert_one_line_error, run_cli
from helpers.models import tiny_model
from helpers.recipes import write_recipe
from seed.endpoints.factory import make_endpoint
from seed.endpoints.local import LocalModel
from seed.endpoints.openai import OpenAIEndpoint
from seed.endpoints.tasks import TasksEndpoint
from seed.errors import UserError
from seed.generate.engine import Limits, Request, Result, run_sync
from seed.recipe import (
    LocalEndpointConfig,
    OpenAIEndpointConfig,
    TasksEndpointConfig,
    TaskSpec,
    load_recipe,
)

SUMS = TaskSpec(name="basic_arithmetic", config={"min_terms": 2, "max_terms": 2, "min_digits": 1,
                                                 "max_digits": 1, "operators": ["+"]})
TASKS = {"kind": "tasks", "tasks": [{"name": "basic_arithmetic"}]}
RECIPE = {"name": "endpoints", "generate": {"teacher": TASKS}}
UNREACHABLE = "http://127.0.0.1:9/v1"  # the discard port: nothing listens


@pytest.mark.parametrize(("overrides", "message"), [
    ({"generate.teacher.base_url": "http://x/v1"}, "generate.teacher.base_url: unknown key"),
    ({"generate.teacher": {"kind": "openai", "base_url": "http://x/v1"}},
     "generate.teacher.model: missing key"),
    ({"generate.teacher": {"kind": "local", "path": "m", "model": "m"}},
     "generate.teacher.model: unknown key"),
    ({"generate.teacher": {"kind": "anthropic"}}, "generate.teacher.model: missing key"),
    ({"generate.teacher": {"kind": "gemini"}},
     "generate.teacher.kind: input should be 'openai', 'anthropic', 'local', 'tasks', 'shapes', "
     "'images' or 'pipeline'"),
    ({"generate.teacher": {"path": "m"}}, "generate.teacher.kind: missing key"),
    ({"eval.judge.endpoint": {"kind": "local", "path": "j", "base_url": "http://x/v1"}},
     "eval.judge.endpoint.base_url: unknown key"),
    ({"eval.judge.endpoint": {"kind": "local", "path": "j"},
      "eval.judge.baseline": {"kind": "tasks", "tasks": [{"name": 3}]}},
     "eval.judge.baseline.tasks.0.name: input should be a valid string"),
])
def test_a_key_of_another_kind_is_a_recipe_error_naming_its_path(tmp_path, overrides, message):
    path = write_recipe(tmp_path / "r.toml", RECIPE, overrides)
    with pytest.raises(UserError) as err:
        load_recipe(path)
    assert str(err.value) == f"{path}: {message}"


def test_the_seed_command_reports_a_key_of_another_kind_in_one_line(tmp_path):
    write_recipe(tmp_path / "r.toml", RECIPE, {"generate.teacher.base_url": "http://x/v1"})
    proc = run_cli("generate", "r.toml", "--out", "data", cwd=tmp_path)
    assert_one_line_error(proc, "r.toml: generate.teacher.base_url: unknown key")
    assert not (tmp_path / "data").exists()


def test_each_variant_holds_only_its_own_keys(tmp_path):
    recipe, _ = load_recipe(write_recipe(tmp_path / "r.toml", RECIPE))
    assert recipe.generate.teacher.model_dump() == {
        "kind": "tasks", "tasks": [{"name": "basic_arithmetic", "weight": 1.0, "config": {}}]}


def test_the_factory_builds_an_openai_endpoint_named_for_its_section():
    cfg = OpenAIEndpointConfig(base_url=UNREACHABLE, model="judge-model")
    endpoint = make_endpoint(cfg, "eval.judge.endpoint", timeout=5.0, max_connections=8)
    assert isinstance(endpoint, OpenAIEndpoint)
    assert endpoint.teacher().model_dump(exclude_none=True, exclude_defaults=True) == {
        "route": "local", "host": "127.0.0.1", "model_requested": "judge-model"}
    assert endpoint.identity() == {"base_url": UNREACHABLE, "model": "judge-model",
                                   "route": "local", "api_version": None}
    with pytest.raises(UserError, match=r"^cannot reach the judge at http://127.0.0.1:9/v1 .*"
                                        r"check eval.judge.endpoint.base_url and"):
        asyncio.run(endpoint.check_reachable())
    asyncio.run(endpoint.aclose())


@pytest.mark.parametrize(("cfg", "message"), [
    (OpenAIEndpointConfig(base_url="ftp://x", model="m"),
     "eval.judge.baseline.base_url = 'ftp://x' is not an http(s) URL"),
    (OpenAIEndpointConfig(base_url=UNREACHABLE, model="m", api_key_env="SEED_NO_SUCH_KEY_VAR"),
     "the API key variable SEED_NO_SUCH_KEY_VAR is not set; export it or set "
     "eval.judge.baseline.api_key_file"),
    (OpenAIEndpointConfig(base_url="https://x.openai.azure.com", model="m"),
     "an Azure OpenAI endpoint needs eval.judge.baseline.api_version"),
    (TasksEndpointConfig(), "the tasks teacher needs at least one [[eval.judge.baseline.tasks]]"),
])
def test_factory_errors_name_the_section_used(cfg, message, monkeypatch):
    monkeypatch.delenv("SEED_NO_SUCH_KEY_VAR", raising=False)
    with pytest.raises(UserError) as err:
        make_endpoint(cfg, "eval.judge.baseline")
    assert str(err.value).startswith(message), err.value


def test_the_factory_builds_a_tasks_endpoint_with_the_interface_defaults():
    endpoint = make_endpoint(TasksEndpointConfig(tasks=[SUMS]), "generate.teacher")
    assert isinstance(endpoint, TasksEndpoint)
    assert endpoint.on_headers is None
    assert endpoint.identity() == {**endpoint.teacher().model_dump(mode="json"),
                                   "route": "tasks", "model_requested": "reasoning-gym"}
    assert endpoint.answer_batch([[{"role": "user", "content": "1 + 2"}]], 8) is None
    assert asyncio.run(endpoint.check_reachable()) is None
    assert asyncio.run(endpoint.aclose()) is None


def test_the_engine_runs_a_kind_without_http_through_the_same_interface():
    endpoint = make_endpoint(TasksEndpointConfig(tasks=[SUMS]), "generate.teacher")
    assert isinstance(endpoint, TasksEndpoint)
    prompts = list(endpoint.prompts(5, seed=3))
    answers: dict[str, str] = {}

    def keep(r: Result) -> None:
        answers[r.request.key] = r.completions[0].text

    stats = run_sync([Request(p.id, p.chat()) for p in prompts], endpoint, Limits(concurrency=2),
                     on_result=keep)
    assert (stats.done, stats.failed, stats.retries) == (5, 0, 0)
    assert answers == {p.id: p.meta["answer"] for p in prompts}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.mktemp("local") / "tiny-chat")


def test_the_factory_builds_a_local_model_that_answers_in_batches(model_dir):
    endpoint = make_endpoint(LocalEndpointConfig(path=str(model_dir)), "eval.judge.endpoint")
    assert isinstance(endpoint, LocalModel)
    teacher = endpoint.teacher()
    assert (teacher.route, teacher.model_requested) == ("local", "tiny-chat")
    assert endpoint.identity() == teacher.model_dump(mode="json")
    chats = [[{"role": "user", "content": "Hello!"}], [{"role": "user", "content": "What is 12?"}]]
    batched = endpoint.answer_batch(chats, 6)
    assert batched is not None and len(batched) == 2
    alone = [asyncio.run(endpoint.complete(chat, max_tokens=6))[0].text for chat in chats]
    assert batched == alone  # greedy: a left-padded batch answers as each conversation alone
    asyncio.run(endpoint.aclose())
