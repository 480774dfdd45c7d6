"""The procedural teacher: provenance on every record, and held-out prompts never in training."""

import pytest

from seed.endpoints.tasks import TasksEndpoint, score
from seed.errors import UserError
from seed.generate import generate_from_tasks
from seed.recipe import GenerateConfig, TasksEndpointConfig, TaskSpec
from seed.records import read_records

# A small task space (2-term sums of 1-digit numbers: a few hundred distinct questions), where
# nearby seeds would share many items: the overlap filter has real work to do.
SMALL = TaskSpec(name="basic_arithmetic", config={"min_terms": 2, "max_terms": 2, "min_digits": 1,
                                                  "max_digits": 1, "operators": ["+", "-"]})


def test_eval_prompts_never_appear_in_training(tmp_path):
    cfg = GenerateConfig(teacher=TasksEndpointConfig(tasks=[SMALL]), num_records=2000,
                         eval_prompts=100, eval_seed_offset=1)
    info = generate_from_tasks(cfg, seed=7, out_dir=tmp_path)
    train = list(read_records(tmp_path / "train.jsonl"))
    held = list(read_records(tmp_path / "eval.jsonl"))
    assert len(held) == 100
    questions = {r.messages[0].content for r in held}
    assert not questions & {r.messages[0].content for r in train}
    assert info["dropped_overlap"] > 0  # with offset 1 the seeds share items: they were dropped
    assert len(train) == 2000 - info["dropped_overlap"]


def test_records_carry_the_generator_its_version_config_and_seed(tmp_path):
    cfg = GenerateConfig(teacher=TasksEndpointConfig(tasks=[SMALL]), num_records=5,
                         eval_prompts=2)
    generate_from_tasks(cfg, seed=3, out_dir=tmp_path)
    r = next(read_records(tmp_path / "train.jsonl"))
    src = r.provenance.source
    assert (src.kind, src.name, src.seed) == ("tasks", "basic_arithmetic", 3)
    assert src.version and src.config["max_digits"] == 1
    assert r.provenance.teacher.route == "tasks"
    assert r.messages[1].role == "assistant" and r.messages[1].content == r.meta["answer"]
    held = next(read_records(tmp_path / "eval.jsonl"))
    assert held.provenance.purpose == "eval" and len(held.messages) == 1


def test_the_verifier_scores_exact_answers_only(tmp_path):
    cfg = GenerateConfig(teacher=TasksEndpointConfig(tasks=[SMALL]), num_records=1,
                         eval_prompts=3)
    generate_from_tasks(cfg, seed=0, out_dir=tmp_path)
    for r in read_records(tmp_path / "eval.jsonl"):
        assert score(r, r.meta["answer"]) == 1.0
        assert score(r, str(int(r.meta["answer"]) + 1)) < 1.0


def test_an_unknown_family_is_a_user_error():
    with pytest.raises(UserError, match="'no_such_task' is not in reasoning-gym"):
        TasksEndpoint([TaskSpec(name="no_such_task")])


def test_a_bad_family_config_is_a_user_error():
    with pytest.raises(UserError, match="bad config"):
        TasksEndpoint([TaskSpec(name="basic_arithmetic", config={"digits": 3})])
