"""The terms gate: which teachers' records may train which student, and why."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from seed.endpoints.tasks import TasksEndpoint
from seed.errors import UserError
from seed.policy.gate import Use, check_file, evaluate, gate_training, summarize
from seed.policy.terms import load_terms
from seed.recipe import TaskSpec
from seed.records import Provenance, Record, Source, Teacher, write_records

OPENAI = Teacher(route="direct", host="api.openai.com", model_requested="gpt-4o-mini",
                 model_returned="gpt-4o-mini-2024-07-18", system_fingerprint="fp_0ba0d124f1")
ANTHROPIC = Teacher(route="direct", host="api.anthropic.com",
                    model_requested="claude-sonnet-4-5")
LLAMA31 = Teacher(route="local", model_requested="meta-llama/Llama-3.1-8B-Instruct",
                  weights_revision="0e9e39f")
LLAMA2 = Teacher(route="openrouter", host="openrouter.ai",
                 model_requested="meta-llama/llama-2-70b-chat")
AZURE = Teacher(route="azure", host="acme.openai.azure.com", model_requested="gpt-4o")
QWEN_RESEARCH = Teacher(route="local", model_requested="Qwen/Qwen2.5-3B-Instruct")
GEMMA = Teacher(route="local", model_requested="google/gemma-2-9b-it")
TERMS = load_terms()


def records(teacher: Teacher | None, n: int = 3, source: Source | None = None) -> list[Record]:
    return [Record.new([{"role": "user", "content": f"question {i} for {teacher}"},
                        {"role": "assistant", "content": f"answer {i}"}],
                       provenance=Provenance(teacher=teacher, source=source))
            for i in range(n)]


def verdict(teacher: Teacher | None, **use: object) -> str:
    return evaluate(records(teacher), Use(**use), TERMS).verdict  # type: ignore[arg-type]


def test_openai_records_are_blocked_for_a_distributed_student() -> None:
    result = evaluate(records(OPENAI), Use(distribute=True), TERMS)
    assert result.verdict == "block"
    assert result.blocked == 3
    [f] = result.findings
    assert f.entry == "openai-api"
    assert "compete" in f.reasons[0]
    assert any("openai.com/policies" in c for c in f.citations)


def test_openai_allows_an_internal_classifier_but_not_a_distributed_one() -> None:
    assert verdict(OPENAI, distribute=False, task="classifier") == "allow"
    assert verdict(OPENAI, distribute=True, task="classifier") == "block"
    assert verdict(OPENAI, distribute=False, task="chat") == "warn"


def test_anthropic_has_no_classifier_carve_out() -> None:
    assert verdict(ANTHROPIC, distribute=False, task="classifier") == "warn"
    assert verdict(ANTHROPIC, distribute=True, task="classifier") == "block"


def test_llama_31_needs_the_llama_name_prefix_when_distributed() -> None:
    unnamed = evaluate(records(LLAMA31), Use(distribute=True, student_name="tiny-math"), TERMS)
    assert unnamed.verdict == "block"
    assert unnamed.findings[0].reasons[0].startswith("The student's name must start with 'Llama'")
    named = evaluate(records(LLAMA31), Use(distribute=True, student_name="Llama-tiny-math"), TERMS)
    assert named.verdict == "allow"
    assert named.notices() == ["Built with Llama"]
    assert "The model's name starts with 'Llama'." in named.obligations()


def test_llama_31_internal_use_has_no_naming_duty() -> None:
    result = evaluate(records(LLAMA31), Use(distribute=False), TERMS)
    assert result.verdict == "allow"
    assert result.obligations() == []


def test_llama_2_outputs_may_not_improve_another_model_at_all() -> None:
    assert verdict(LLAMA2, distribute=False) == "block"
    assert TERMS.match(LLAMA2).id == "llama-2"


@pytest.mark.parametrize(("model", "entry"), [
    ("meta-llama/Meta-Llama-3-70B-Instruct", "llama-3"),
    ("llama3-70b-8192", "llama-3"),
    ("llama3.1:8b", "llama-3.1+"),
    ("meta.llama3-1-70b-instruct-v1:0", "llama-3.1+"),
    ("meta-llama/Llama-3.3-70B-Instruct", "llama-3.1+"),
    ("gpt-oss-20b", "gpt-oss"),
    ("o3-mini", "openai-api"),
    ("google/gemma-3-27b-it", "gemma"),
    ("google/gemma-4-31b-it", "gemma-4"),
    ("Qwen/Qwen2.5-72B-Instruct", "qwen-license"),
    ("Qwen/Qwen2.5-7B-Instruct", "qwen-apache"),
    ("Qwen/Qwen3-8B", "qwen-apache"),
    ("mistralai/Mistral-7B-Instruct-v0.3", "mistral-apache"),
    ("deepseek-ai/DeepSeek-R1", "deepseek-r1-mit"),
    ("deepseek-ai/DeepSeek-V3", "deepseek-model-license"),
    ("some-unheard-of-model", "unknown"),
])
def test_model_names_match_their_family(model: str, entry: str) -> None:
    assert TERMS.match(Teacher(route="openrouter", model_requested=model)).id == entry


def test_hosted_apis_of_open_models_are_not_judged_by_the_weights_license() -> None:
    mistral_api = Teacher(route="direct", host="api.mistral.ai", model_requested="open-mistral-7b")
    deepseek_api = Teacher(route="direct", host="api.deepseek.com", model_requested="deepseek-chat")
    assert TERMS.match(mistral_api).id == "mistral-api"
    assert TERMS.match(deepseek_api).id == "deepseek-api"


def test_unverified_terms_follow_the_unknown_policy() -> None:
    assert verdict(AZURE, unknown="warn") == "warn"
    assert verdict(AZURE, unknown="block") == "block"
    assert verdict(None, unknown="warn") == "warn"
    assert verdict(None, unknown="block") == "block"


def test_research_license_blocks_a_commercial_student_only() -> None:
    assert verdict(QWEN_RESEARCH, distribute=False, commercial=True) == "block"
    result = evaluate(records(QWEN_RESEARCH), Use(distribute=True, commercial=False), TERMS)
    assert result.verdict == "allow"
    assert result.notices() == ["Built with Qwen"]


def test_gemma_terms_pass_on_even_to_an_internal_student() -> None:
    result = evaluate(records(GEMMA), Use(distribute=False), TERMS)
    assert result.verdict == "allow"
    assert any("Gemma Model Derivative" in o for o in result.obligations())


def test_a_noncommercial_data_license_blocks_a_commercial_student() -> None:
    src = Source(kind="file", name="alpaca_data.json", license="CC BY-NC 4.0")
    tasks_teacher = Teacher(route="tasks", model_requested="reasoning-gym")
    assert evaluate(records(tasks_teacher, source=src), Use(commercial=True), TERMS).verdict \
        == "block"
    assert evaluate(records(tasks_teacher, source=src), Use(commercial=False), TERMS).verdict \
        == "allow"


def test_procedural_teacher_passes_for_any_use() -> None:
    teacher = TasksEndpoint([TaskSpec(name="basic_arithmetic", config={"max_terms": 2})])
    recs = [teacher.answer(r) for r in teacher.prompts(5, seed=3)]
    for use in (Use(distribute=True), Use(distribute=False, task="classifier")):
        result = evaluate(recs, use, TERMS)
        assert result.verdict == "allow"
        assert [f.entry for f in result.findings] == ["procedural"]
        assert result.records == 5


def test_a_mixed_file_gets_a_breakdown_per_teacher(tmp_path: Path) -> None:
    path = tmp_path / "mixed.jsonl"
    write_records(path, records(OPENAI, 4) + records(LLAMA31, 2) + records(None, 1))
    rows = summarize(path, Use(distribute=True, student_name="Llama-mix"))
    by_entry = {r["entry"]: r for r in rows}
    assert set(by_entry) == {"openai-api", "llama-3.1+", "unknown"}
    assert by_entry["openai-api"]["records"] == 4
    assert by_entry["openai-api"]["verdict"] == "block"
    assert by_entry["llama-3.1+"]["records"] == 2
    assert by_entry["llama-3.1+"]["verdict"] == "allow"
    assert by_entry["unknown"]["records"] == 1
    assert by_entry["unknown"]["teacher"] == "(no provenance)"
    assert check_file(path, Use(student_name="Llama-mix")).blocked == 4


def test_an_override_file_changes_the_verdict_and_is_recorded(tmp_path: Path) -> None:
    overrides = tmp_path / "permissions.toml"
    overrides.write_text('''
[[entry]]
id = "acme-openai-permission"
family = "OpenAI, under Acme's written agreement"
routes = ["direct"]
models = ["gpt-4o-mini*"]
internal = "allow"
distributed = "allow"
source_url = "contracts/openai-acme-2026.pdf section 4.2"
read_on = "2026-10-01"
clause = "OpenAI grants Acme the right to distribute models trained on outputs."
''')
    path = tmp_path / "openai.jsonl"
    write_records(path, records(OPENAI))
    assert check_file(path, Use()).verdict == "block"
    result = check_file(path, Use(), overrides)
    assert result.verdict == "allow"
    assert result.overrides == [str(overrides)]
    assert result.findings[0].overrides == [f"acme-openai-permission from {overrides}"]
    assert "override from" in result.findings[0].citations[0]


def test_training_is_refused_unless_the_risk_is_accepted_in_words(tmp_path: Path) -> None:
    path = tmp_path / "openai.jsonl"
    write_records(path, records(OPENAI))
    with pytest.raises(UserError, match="training refused, 3 of 3 records"):
        gate_training(path, Use())
    with pytest.raises(UserError, match="--accept-terms-risk"):
        gate_training(path, Use(), accept_terms_risk="   ")
    result = gate_training(path, Use(), accept_terms_risk="research prototype, never shipped")
    assert result.accepted_risk == "research prototype, never shipped"
    assert result.to_dict()["accepted_risk"] == "research prototype, never shipped"


def test_an_empty_file_is_a_clear_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.jsonl"
    path.write_text("")
    with pytest.raises(UserError, match="no records to check"):
        check_file(path, Use())


def test_summarize_run_reads_the_recorded_decision(tmp_path: Path) -> None:
    from seed.policy.gate import summarize_run

    (tmp_path / "data").mkdir()
    write_records(tmp_path / "data" / "train.jsonl", records(OPENAI, 2) + records(LLAMA31, 1))
    fresh = summarize_run(tmp_path)
    assert fresh["verdict"] == "block"
    assert [f["records"] for f in fresh["findings"]] == [2, 1]
    recorded = gate_training(tmp_path / "data" / "train.jsonl", Use(), accept_terms_risk="demo")
    (tmp_path / "manifest.json").write_text(json.dumps({"policy": recorded.to_dict()}))
    assert summarize_run(tmp_path)["accepted_risk"] == "demo"


def test_a_local_gpt_named_model_is_not_taken_for_openai() -> None:
    assert TERMS.match(Teacher(route="local", model_requested="gpt-j-6b")).id == "unknown"
    assert TERMS.match(Teacher(route="direct", model_requested="gpt-j-6b")).id == "openai-api"


def test_a_platform_route_is_judged_on_top_of_the_model_terms() -> None:
    bedrock_llama = Teacher(route="bedrock", model_requested="meta.llama3-1-70b-instruct-v1:0")
    result = evaluate(records(bedrock_llama), Use(distribute=True, student_name="Llama-x"), TERMS)
    [f] = result.findings
    assert (f.entry, f.route_terms) == ("llama-3.1+", ["bedrock-platform"])
    assert f.verdict == "warn"  # Meta allows it; AWS's no-competing-models clause warns
    assert any("aws.amazon.com/service-terms" in c for c in f.citations)
    assert evaluate(records(bedrock_llama), Use(distribute=False), TERMS).verdict == "allow"
    bedrock_claude = Teacher(route="bedrock", model_requested="anthropic.claude-3-5-sonnet-v2:0")
    assert evaluate(records(bedrock_claude), Use(), TERMS).verdict == "block"
    assert [e.id for e in TERMS.route_terms(LLAMA2)] == ["openrouter-platform"]
