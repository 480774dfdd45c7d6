"""A teacher round trip with real parts: an image student trained by the diffusion mode, served by
`seed serve`, is the HTTP Images API teacher of Seed's own image generation. The records hold
the served PNGs byte for byte, name the model asked for, and a rerun asks the server for nothing."""

from __future__ import annotations

import httpx
import pytest
from PIL import Image

from helpers.images import write_shapes
from helpers.serve import running_server
from seed.generate.images import generate_images
from seed.recipe import GenerateConfig, TrainConfig
from seed.records import read_image_records
from seed.train import train_student

TRAIN = {"mode": "diffusion", "max_steps": 4, "batch_size": 8, "warmup_steps": 1, "lr": 2e-3,
         "checkpoint_every": 4, "log_every": 2, "threads": 1,
         "diffusion": {"size": 16, "channels": [8, 16], "attention": [False, True],
                       "head_dim": 8, "text_width": 16, "sample_steps": 3}}
PROMPTS = ["red circle left of blue square", "green square left of yellow triangle",
           "blue triangle left of red circle", "yellow circle left of green square"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("roundtrip")
    records = write_shapes(root / "data" / "train.jsonl", 16)
    train_student(records, root / "train", TrainConfig(**TRAIN), seed=1)
    with running_server(root / "train" / "model", "--model-name", "shapes-student",
                        "--threads", "1") as url:
        yield url


def _images_generated(url: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith("seed_images_generated_total"):
            return float(line.split()[1])
    raise AssertionError("no seed_images_generated_total in /metrics")


@pytest.mark.slow
def test_a_served_student_is_the_image_teacher_and_a_rerun_asks_for_nothing(served, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(p + "\n" for p in PROMPTS))
    config = GenerateConfig.model_validate({
        "teacher": {"kind": "images", "base_url": served + "/v1", "model": "shapes-student"},
        "prompts": [{"path": str(prompts), "license": "CC0-1.0"}],
        "limits": {"concurrency": 4}})
    out = tmp_path / "data"
    before = _images_generated(served)
    info = generate_images(config, 0, out)
    assert info["records_written"] == len(PROMPTS)
    assert _images_generated(served) - before == len(PROMPTS)
    records = list(read_image_records(out / "train.jsonl"))  # checks every file's sha256
    assert sorted(r.prompt for r in records) == sorted(PROMPTS)
    for r in records:
        assert (r.image.width, r.image.height, r.image.format) == (16, 16, "png")
        assert r.provenance.teacher.model_requested == "shapes-student"
        assert r.provenance.teacher.host == "127.0.0.1"
        assert Image.open(r.image_path(out / "train.jsonl")).size == (16, 16)
    for r in records:  # content-addressed: each file is named by the hash of its bytes
        assert r.image.file.endswith(r.image.sha256 + ".png")
    again = generate_images(config, 0, out)
    assert again["records_written"] == 0 and again["prompts_already_done"] == len(PROMPTS)
    assert _images_generated(served) - before == len(PROMPTS)  # nothing asked twice

