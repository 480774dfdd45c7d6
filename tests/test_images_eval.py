"""The image eval (verifier accuracy on held-out compositions), its report section, and the image
judge: real shapes records on disk, a real (untrained) pipeline drawing, a real vision judge
server over HTTP."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from helpers.image_judge_server import image_judge_server
from helpers.images import tiny_image_pipeline
from seed.evaluate.html import page
from seed.evaluate.images import Graded, evaluate_images
from seed.evaluate.images_report import image_section
from seed.evaluate.judge_images import run_image_judge
from seed.evaluate.judge_report import write_judge_report
from seed.generate.images import generate_shapes
from seed.recipe import GenerateConfig, ImageEvalConfig, JudgeConfig, ShapesConfig
from seed.records import read_image_records

SHAPES = ShapesConfig(size=16)


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("data")
    generate_shapes(GenerateConfig(teacher=SHAPES, num_records=8, eval_prompts=6), 0, out)
    return out


@pytest.fixture(scope="module")
def student(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_image_pipeline(tmp_path_factory.mktemp("pipe") / "student", size=16)


def test_graded_summary_counts_exact_per_seed_and_per_attribute() -> None:
    g = Graded()
    for exact, left, seed in [(True, True, 0), (False, True, 0), (False, False, 1),
                              (True, True, 1), (True, True, 1)]:
        g.add(exact, {"left_color": left, "right_shape": exact}, seed)
    s = g.summary()
    assert (s["n"], s["correct"], s["accuracy"]) == (5, 3, 0.6)
    assert s["per_seed"] == {"0": 0.5, "1": pytest.approx(2 / 3)}
    assert s["attributes"] == {"left_color": 0.8, "right_shape": 0.6}
    assert s["ci_low"] < 0.6 < s["ci_high"]


def test_untrained_student_scores_near_zero_and_the_report_shows_the_grid(
        data: Path, student: Path, tmp_path: Path) -> None:
    config = ImageEvalConfig(seeds=[0, 3], grid=4, batch_size=4)
    out = tmp_path / "eval"
    summary = evaluate_images(student, data / "eval.jsonl", out, config, SHAPES,
                              baseline_dir=student)
    results = json.loads((out / "results.json").read_text())
    assert summary["n"] == results["n"] == 12  # 6 held-out captions x 2 sampling seeds
    assert results["accuracy"] <= 0.1 and results["baseline_accuracy"] == results["accuracy"]
    assert set(results["per_seed"]) == {"0", "3"}
    assert set(results["attributes"]) == {"left_color", "left_shape", "right_color",
                                          "right_shape"}
    assert "clip_score" in results["skipped"] and "fid" in results["skipped"]
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4
    eval_records = {r.id: r for r in read_image_records(data / "eval.jsonl")}
    for s in samples:
        assert (out / s["student"]).is_file() and (out / s["baseline"]).is_file()
        teacher = out / s["teacher"]  # relative to the eval dir: the run can move
        assert teacher.read_bytes() == eval_records[s["id"]].read_bytes(data / "eval.jsonl")
    html = page("r", image_section(out, results, samples))
    assert html.count("data:image/png;base64,") == 12  # teacher, student, untrained per cell
    assert "left color" in html and samples[0]["prompt"] in html


def test_image_judge_sees_both_images_in_both_orders_and_rerun_pays_nothing(
        data: Path, student: Path, tmp_path: Path) -> None:
    records = list(read_image_records(data / "eval.jsonl"))
    with image_judge_server(SHAPES) as (url, log):
        cfg = JudgeConfig(endpoint={"kind": "openai", "base_url": url, "model": "vision-judge"})
        res = run_image_judge(cfg, student, tmp_path / "judge", data / "eval.jsonl")
        assert len(log) == 2 * len(records)
        # The teacher's image is always right and the untrained student's never: every pair is a
        # loss in both orders, whichever image the judge saw first.
        assert res["stats"]["win_rate"] == 0.0 and res["stats"]["n"] == len(records)
        assert res["stats"]["lc_win_rate"] is None
        teacher_uris = {base64.b64encode(r.read_bytes(data / "eval.jsonl")).decode()
                        for r in records}
        shown = [[p["image_url"]["url"].split(",", 1)[1] for p in body["messages"][-1]["content"]
                  if p["type"] == "image_url"] for body in log]
        assert all(len(pair) == 2 for pair in shown)
        assert sum(pair[1] in teacher_uris for pair in shown) == len(records)  # student first
        assert sum(pair[0] in teacher_uris for pair in shown) == len(records)  # then second
        again = run_image_judge(cfg, student, tmp_path / "judge", data / "eval.jsonl")
        assert len(log) == 2 * len(records) and again["stats"] == res["stats"]
    html = write_judge_report(tmp_path / "judge").read_text()
    assert html.count("data:image/png;base64,") >= 2 * min(5, len(records))  # both images shown
    assert "length-controlled" not in html


def tiny_clip(directory: Path, tokenizer_dir: Path) -> Path:
    """A random 16x16 CLIP with a processor, built from configs and saved (nothing downloads)."""
    from transformers import (
        AutoTokenizer,
        CLIPConfig,
        CLIPImageProcessorPil,
        CLIPModel,
        CLIPProcessor,
    )

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    ids = {"bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id,
           "pad_token_id": tok.pad_token_id}
    small = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1,
             "num_attention_heads": 2}
    config = CLIPConfig(text_config={"vocab_size": len(tok), "max_position_embeddings": 16,
                                     **ids, **small},
                        vision_config={"image_size": 16, "patch_size": 8, **small},
                        projection_dim=16)
    CLIPModel(config).save_pretrained(directory)
    images = CLIPImageProcessorPil(size={"shortest_edge": 16},
                                   crop_size={"height": 16, "width": 16})
    CLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(directory)
    return directory


def test_clip_score_from_local_weights_matches_the_embeddings_cosine(
        data: Path, student: Path, tmp_path: Path) -> None:
    import torch
    from transformers import CLIPModel, CLIPProcessor

    clip = tiny_clip(tmp_path / "clip", student / "tokenizer")
    config = ImageEvalConfig(seeds=[0], grid=3, clip_model=str(clip))
    evaluate_images(student, data / "eval.jsonl", tmp_path / "eval", config, SHAPES)
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert "clip_score" not in results["skipped"] and "fid" in results["skipped"]
    model, processor = CLIPModel.from_pretrained(clip), CLIPProcessor.from_pretrained(clip)
    samples = [json.loads(line) for line in (tmp_path / "eval" / "samples.jsonl").open()]
    from PIL import Image

    with torch.no_grad():
        inputs = processor(text=[s["prompt"] for s in samples], return_tensors="pt",
                           padding=True, images=[Image.open(tmp_path / "eval" / s["student"])
                                                 for s in samples])
        # the projections of the two towers' pooled outputs, by hand
        img = model.visual_projection(
            model.vision_model(pixel_values=inputs["pixel_values"]).pooler_output)
        txt = model.text_projection(model.text_model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).pooler_output)
        expected = (100 * torch.cosine_similarity(img, txt)).clamp(min=0).mean()
    assert results["clip_score"] == pytest.approx(float(expected), abs=1e-4)
