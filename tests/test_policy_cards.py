"""Model and dataset cards carry the provenance and the obligations a student inherited."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import DatasetCard, ModelCard

from seed.policy.cards import write_dataset_card, write_model_card
from seed.policy.gate import Use, check_file, gate_training
from seed.records import Provenance, Record, Source, Teacher, write_records

LLAMA31 = Teacher(route="local", model_requested="meta-llama/Llama-3.1-8B-Instruct")
OPENAI = Teacher(route="direct", host="api.openai.com", model_requested="gpt-4o")
TASKS = Teacher(route="tasks", model_requested="reasoning-gym")


def write(path: Path, teacher: Teacher, n: int, source: Source | None = None) -> Path:
    write_records(path, [Record.new([{"role": "user", "content": f"q{i}"},
                                     {"role": "assistant", "content": f"a{i}"}],
                                    provenance=Provenance(teacher=teacher, source=source))
                         for i in range(n)])
    return path


def test_llama_card_carries_built_with_llama_and_the_counts(tmp_path: Path) -> None:
    data = write(tmp_path / "d.jsonl", LLAMA31, 7)
    result = check_file(data, Use(distribute=True, student_name="Llama-tiny"))
    path = write_model_card(tmp_path / "model", result, model_name="Llama-tiny",
                            eval_results={"accuracy": 0.42}, training={"steps": 10})
    card = ModelCard.load(path)
    assert "**Built with Llama**" in card.text
    assert "| `local:meta-llama/Llama-3.1-8B-Instruct` | `(none)` | 7 | allow |" in card.text
    assert "The model's name starts with 'Llama'." in card.text
    assert "github.com/meta-llama/llama-models" in card.text
    assert card.data.tags == ["seed", "distillation"]
    assert card.data.eval_results[0].metric_value == 0.42
    assert card.data.model_name == "Llama-tiny"


def test_override_and_accepted_risk_show_in_the_card(tmp_path: Path) -> None:
    data = write(tmp_path / "d.jsonl", OPENAI, 3)
    overrides = tmp_path / "perm.toml"
    overrides.write_text('[[entry]]\nid = "acme-permission"\nfamily = "OpenAI (Acme agreement)"\n'
                         'hosts = ["api.openai.com"]\ninternal = "allow"\ndistributed = "allow"\n'
                         'source_url = "contracts/acme-openai.pdf"\nread_on = "2026-09-01"\n'
                         'clause = "Section 4: Acme may distribute models trained on outputs."\n')
    card = ModelCard.load(write_model_card(tmp_path / "m1", check_file(data, Use(), overrides),
                                           model_name="acme-bot"))
    assert "acme-permission from" in card.text
    assert str(overrides) in card.text
    assert "contracts/acme-openai.pdf" in card.text
    risky = gate_training(data, Use(), accept_terms_risk="internal red-team study, deleted after")
    card = ModelCard.load(write_model_card(tmp_path / "m2", risky, model_name="acme-bot"))
    assert "Terms risk accepted" in card.text
    assert "internal red-team study, deleted after" in card.text
    assert "| block |" in card.text


def test_dataset_card_is_machine_generated_with_the_source_license(tmp_path: Path) -> None:
    src = Source(kind="tasks", name="basic_arithmetic", license="Apache-2.0")
    data = write(tmp_path / "train.jsonl", TASKS, 5, src)
    path = write_dataset_card(tmp_path, check_file(data, Use()), name="quickstart data")
    card = DatasetCard.load(path)
    assert card.data.annotations_creators == ["machine-generated"]
    assert card.data.license == "apache-2.0"
    assert "| `tasks:reasoning-gym` | `tasks:basic_arithmetic (Apache-2.0)` | 5 | allow |" \
        in card.text
    assert "None: the terms of every teacher and source allow this use" in card.text
