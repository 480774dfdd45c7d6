"""The terms gate for image teachers and datasets: which images may train an image student, and why.

Records are written here in the image-record shape (one JSON line per image, the PNG beside it,
the chat records' provenance), the way `seed generate` writes them for an image recipe.
"""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path
from typing import Any

import pytest
from huggingface_hub import ModelCard
from PIL import Image

from helpers.cli import run_cli
from seed.errors import UserError
from seed.policy.cards import write_dataset_card, write_model_card
from seed.policy.commands import use_from
from seed.policy.gate import CheckResult, Use, check_file, gate_training
from seed.recipe import PolicyConfig
from seed.records import Source, Teacher

# The Images API returns no model name: `model_requested` is what the gate matches.
GPT_IMAGE = Teacher(route="direct", host="api.openai.com", model_requested="gpt-image-1")
DALL_E = Teacher(route="direct", host="api.openai.com", model_requested="dall-e-3")
FLUX_DEV = Teacher(route="local", model_requested="black-forest-labs/FLUX.1-dev")
FLUX_SCHNELL = Teacher(route="local", model_requested="black-forest-labs/FLUX.1-schnell")
SD15 = Teacher(route="local", model_requested="runwayml/stable-diffusion-v1-5")
SD35 = Teacher(route="local", model_requested="stabilityai/stable-diffusion-3.5-medium")
MIDJOURNEY = Teacher(route="declared", model_requested="midjourney-v5")
SHAPES = Teacher(route="tasks", model_requested="shapes")
PROMPTS = Source(kind="file", name="prompts.txt", license="cc0-1.0")
SHAPES_SOURCE = Source(kind="shapes", name="shapes", version="1", seed=0)
JOURNEYDB = Source(kind="import", name="JourneyDB", license="JourneyDB")

IMAGE_STUDENT: dict[str, Any] = {"task": "image_generator"}


def write_image_records(path: Path, teacher: Teacher | None, source: Source | None = PROMPTS,
                        n: int = 3) -> Path:
    """`n` image records (contract 1: the PNG content-addressed beside the records file)."""
    lines = []
    for i in range(n):
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (40 * i, 0, 0)).save(buf, format="PNG")
        data = buf.getvalue()
        sha = hashlib.sha256(data).hexdigest()
        file = path.parent / "images" / sha[:2] / f"{sha}.png"
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_bytes(data)
        prov: dict = {"purpose": "train"}
        if teacher is not None:
            prov["teacher"] = teacher.model_dump(exclude_none=True)
        if source is not None:
            prov["source"] = source.model_dump(exclude_none=True)
        lines.append(json.dumps({
            "id": sha[:16], "prompt": f"red circle left of blue square {i}",
            "image": {"file": f"images/{sha[:2]}/{sha}.png", "sha256": sha, "width": 8,
                      "height": 8, "format": "png", "phash": "0" * 16},
            "provenance": prov, "meta": {}}))
    path.write_text("\n".join(lines) + "\n")
    return path


def check(tmp_path: Path, teacher: Teacher | None, source: Source | None = PROMPTS,
          **use: Any) -> CheckResult:
    records = write_image_records(tmp_path / "train.jsonl", teacher, source)
    return check_file(records, Use(**use))


@pytest.mark.parametrize("teacher", [GPT_IMAGE, DALL_E], ids=["gpt-image-1", "dall-e-3"])
def test_openai_images_are_blocked_for_a_distributed_image_student(tmp_path: Path,
                                                                   teacher: Teacher) -> None:
    result = check(tmp_path, teacher, distribute=True, **IMAGE_STUDENT)
    assert result.verdict == "block" and result.blocked == 3
    [f] = result.findings
    assert f.entry == "openai-images"
    assert "develop models that compete with OpenAI" in " ".join(f.reasons)
    assert any("openai.com/policies/services-agreement" in c for c in f.citations)
    # An internal image student is a judgment call (warn); the carve-out covers classifiers only.
    assert check(tmp_path, teacher, distribute=False, **IMAGE_STUDENT).verdict == "warn"
    assert check(tmp_path, teacher, distribute=False, task="classifier").verdict == "allow"


def test_flux_dev_is_blocked_naming_the_competing_model_clause(tmp_path: Path) -> None:
    result = check(tmp_path, FLUX_DEV, distribute=True, commercial=False, **IMAGE_STUDENT)
    assert result.verdict == "block"
    [f] = result.findings
    assert f.entry == "flux-dev"
    assert "competitive with the FLUX.1 [dev] Model" in " ".join(f.reasons)
    assert "FLUX.1-dev/blob/main/LICENSE.md" in f.citations[0]
    # Non-commercial only: a commercial student is blocked even when kept internal, ...
    internal = check(tmp_path, FLUX_DEV, distribute=False, commercial=True, **IMAGE_STUDENT)
    assert internal.verdict == "block"
    assert any("non-commercial use only" in r for r in internal.findings[0].reasons)
    # ... and an internal non-commercial one is a warning, not an allow.
    assert check(tmp_path, FLUX_DEV, distribute=False, commercial=False,
                 **IMAGE_STUDENT).verdict == "warn"


def test_flux_schnell_and_procedural_shapes_are_allowed(tmp_path: Path) -> None:
    schnell = check(tmp_path, FLUX_SCHNELL, distribute=True, commercial=True, **IMAGE_STUDENT)
    assert schnell.verdict == "allow" and schnell.findings[0].entry == "flux-schnell"
    assert "Apache-2.0" in " ".join(schnell.findings[0].reasons)
    shapes = check(tmp_path, SHAPES, SHAPES_SOURCE, distribute=True, **IMAGE_STUDENT)
    assert shapes.verdict == "allow" and shapes.findings[0].entry == "shapes"
    # Procedural records that name no teacher are matched by their source kind.
    bare = check(tmp_path, None, SHAPES_SOURCE, distribute=True, **IMAGE_STUDENT)
    assert bare.verdict == "allow" and bare.findings[0].entry == "shapes-source"
    assert bare.obligations() == []


def test_a_source_kind_does_not_clear_a_real_teacher(tmp_path: Path) -> None:
    """Shapes captions drawn by gpt-image-1 carry OpenAI's terms, not the generator's."""
    result = check(tmp_path, GPT_IMAGE, SHAPES_SOURCE, distribute=True, **IMAGE_STUDENT)
    assert result.verdict == "block" and result.findings[0].entry == "openai-images"
    # With no teacher and a source no entry names, the verdict is policy.unknown's.
    unknown = check(tmp_path, None, Source(kind="file", name="p.txt", license="mit"),
                    **IMAGE_STUDENT)
    assert unknown.findings[0].entry == "unknown" and unknown.verdict == "warn"


def test_openrail_students_inherit_use_restrictions_in_the_card(tmp_path: Path) -> None:
    result = check(tmp_path, SD15, distribute=True, student_name="shapes-sd", **IMAGE_STUDENT)
    assert result.verdict == "allow"
    [f] = result.findings
    assert f.entry == "stable-diffusion-openrail"
    assert "distillation methods" in " ".join(f.reasons)
    assert any("Attachment A" in o and "enforceable provision" in o for o in f.obligations)
    assert any("copy of the CreativeML OpenRAIL-M" in o for o in f.obligations)
    card = ModelCard.load(write_model_card(tmp_path / "model", result, model_name="shapes-sd",
                                           license="creativeml-openrail-m"))
    assert card.data.pipeline_tag == "text-to-image"
    assert card.data.library_name == "diffusers"
    assert "text-to-image" in card.data.tags
    assert card.data.eval_results is None
    assert "teacher-drawn images" in card.text
    assert "Attachment A" in card.text and "runwayml/stable-diffusion-v1-5" in card.text
    assert "distributed commercial image-generator student" in card.text
    # The use restrictions bind an internal student too; the license copy only on distribution.
    internal = check(tmp_path, SD15, distribute=False, **IMAGE_STUDENT)
    assert any("Attachment A" in o for o in internal.obligations())
    assert not any("copy of the CreativeML" in o for o in internal.obligations())


def test_stability_community_license_warns_and_carries_its_notice(tmp_path: Path) -> None:
    result = check(tmp_path, SD35, distribute=True, **IMAGE_STUDENT)
    assert result.verdict == "warn"
    [f] = result.findings
    assert f.entry == "stability-community"
    assert "foundational" in " ".join(f.reasons) and "1,000,000" in " ".join(f.reasons)
    assert result.notices() == ["Powered by Stability AI"]
    assert any("Enterprise license" in o for o in f.obligations)
    card = ModelCard.load(write_model_card(tmp_path / "m", result, model_name="s35",
                                           eval_results={"exact": 0.81}))
    assert "**Powered by Stability AI**" in card.text
    assert card.data.eval_results[0].task_type == "text-to-image"
    # For a chat or internal student the foundational-model clause does not bite.
    assert check(tmp_path, SD35, distribute=False, **IMAGE_STUDENT).verdict == "allow"


def test_journeydb_blocks_a_commercial_student_and_midjourney_a_distributed_one(
        tmp_path: Path) -> None:
    result = check(tmp_path, MIDJOURNEY, JOURNEYDB, distribute=True, commercial=True,
                   **IMAGE_STUDENT)
    assert result.verdict == "block"
    [f] = result.findings
    assert f.entry == "midjourney"
    assert any("build competing products" in r for r in f.reasons)
    assert any(r.startswith("Source license JourneyDB:") for r in f.reasons)
    # Internal and non-commercial: Midjourney's clause warns, JourneyDB's license allows.
    research = check(tmp_path, MIDJOURNEY, JOURNEYDB, distribute=False, commercial=False,
                     **IMAGE_STUDENT)
    assert research.verdict == "warn"
    # JourneyDB alone (no teacher declared) still blocks a commercial student.
    bare = check(tmp_path, None, JOURNEYDB, distribute=False, commercial=True, **IMAGE_STUDENT)
    assert bare.verdict == "block"


def test_gate_refuses_training_and_keeps_an_accepted_risk(tmp_path: Path) -> None:
    records = write_image_records(tmp_path / "train.jsonl", FLUX_DEV)
    use = use_from(PolicyConfig(task="image_generator", commercial=False))
    assert use.task == "image_generator"
    with pytest.raises(UserError, match=r"3 of 3 records are forbidden for a distributed non-"
                                        r"commercial image-generator student .*FLUX\.1 \[dev\]"):
        gate_training(records, use)
    accepted = gate_training(records, use, accept_terms_risk="BFL commercial license #123")
    assert accepted.accepted_risk == "BFL commercial license #123"
    card = write_dataset_card(tmp_path, accepted, name="flux data")
    text = card.read_text()
    assert "task_categories:\n- text-to-image" in text
    assert "Images with their prompts" in text and "BFL commercial license #123" in text


def test_a_broken_image_line_names_its_file_and_line(tmp_path: Path) -> None:
    records = write_image_records(tmp_path / "train.jsonl", SHAPES, SHAPES_SOURCE)
    lines = records.read_text().splitlines()
    bad = json.loads(lines[1])
    bad["provenance"]["teacher"] = {"host": "x"}  # no route
    records.write_text("\n".join([lines[0], json.dumps(bad), lines[2]]) + "\n")
    with pytest.raises(UserError, match=r"train\.jsonl:2: not a valid record "
                                        r"\(provenance\.teacher\.route"):
        check_file(records, Use(task="image_generator"))


def test_seed_check_reads_image_records(tmp_path: Path) -> None:
    """`seed check` on an image records file: it needs no `messages`, exits 1 on a block."""
    mixed = tmp_path / "train.jsonl"
    write_image_records(tmp_path / "a.jsonl", GPT_IMAGE, n=2)
    write_image_records(tmp_path / "b.jsonl", None, SHAPES_SOURCE, n=2)
    mixed.write_text((tmp_path / "a.jsonl").read_text() + (tmp_path / "b.jsonl").read_text())
    proc = run_cli("check", mixed, "--json", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    out = json.loads(proc.stdout)
    assert out["verdict"] == "block" and out["blocked_records"] == 2 and out["records"] == 4
    by_entry = {f["entry"]: f for f in out["findings"]}
    assert by_entry["openai-images"]["verdict"] == "block"
    assert by_entry["shapes-source"]["verdict"] == "allow"


def test_the_shapes_writers_records_pass_for_a_distributed_commercial_image_student(
        tmp_path: Path) -> None:
    """The records `seed generate` writes for `kind = "shapes"`, judged as they are written."""
    from seed.generate.images import generate_shapes
    from seed.recipe import GenerateConfig

    config = GenerateConfig.model_validate({"num_records": 6, "eval_prompts": 0,
                                            "teacher": {"kind": "shapes", "size": 16}})
    generate_shapes(config, 3, tmp_path)
    result = check_file(tmp_path / "train.jsonl", Use())  # the default use: a chat student
    assert result.use.task == "image_generator"  # image records train no chat model
    assert result.verdict == "allow" and result.records == 6
    [f] = result.findings
    assert f.entry == "shapes" and f.teacher.startswith("shapes:seed-shapes==")
