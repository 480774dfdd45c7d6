"""The image sampler: stepwise, batched rows that join at step boundaries, seeded per request,
and the same images from diffusers' own loader of the saved pipeline directory."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DiffusionPipeline

from helpers.images import tiny_image_pipeline
from seed.endpoints.diffusion import DrawRequest, ImagePipeline
from seed.errors import UserError

CAPTION = "red circle left of blue square"


@pytest.fixture(scope="module")
def directory(tmp_path_factory):
    return tiny_image_pipeline(tmp_path_factory.mktemp("pipe") / "tiny", sizes=[(16, 16), (24, 16)])


@pytest.fixture(scope="module")
def pipeline(directory):
    return ImagePipeline.load(directory)


def finished(pipeline, request):
    rows = pipeline.start([request])
    while not rows[0].done:
        pipeline.step(rows)
    return rows[0].sample


def test_the_pipeline_reads_its_sizes_steps_and_quality_from_the_directory(pipeline):
    assert pipeline.sizes == [(16, 16), (24, 16)]
    assert (pipeline.default_steps, pipeline.default_guidance) == (4, 2.0)
    assert pipeline.quality_steps == {"low": 2, "medium": 4, "high": 8}


def test_diffusers_loads_the_directory_offline_and_draws_what_seed_draws(directory, pipeline):
    request = DrawRequest(CAPTION, negative_prompt="green", seed=7, steps=5, guidance=3.0)
    theirs = DiffusionPipeline.from_pretrained(directory, custom_pipeline=str(directory),
                                               trust_remote_code=True)
    out = theirs(CAPTION, negative_prompt="green", num_inference_steps=5, guidance_scale=3.0,
                 generator=torch.Generator().manual_seed(7), output_type="pt").images
    ours = finished(pipeline, request)
    assert ours.abs().max() > 0.1
    torch.testing.assert_close(out, ours, atol=1e-4, rtol=1e-4)
    image = theirs(CAPTION, num_inference_steps=5, guidance_scale=3.0,
                   generator=torch.Generator().manual_seed(7)).images[0]
    mine = pipeline.draw([DrawRequest(CAPTION, seed=7, steps=5, guidance=3.0)])[0]
    assert image.size == mine.size == (16, 16)
    assert np.abs(np.asarray(image, int) - np.asarray(mine, int)).max() <= 1


def test_rows_that_join_at_step_boundaries_end_as_if_drawn_alone(pipeline):
    early = DrawRequest(CAPTION, seed=1, steps=6, guidance=2.0)
    late = DrawRequest("green square left of red circle", seed=2, steps=3, guidance=4.0)
    rows = pipeline.start([early])
    pipeline.step(rows)
    pipeline.step(rows)
    rows += pipeline.start([late])  # joins two steps in, with fewer steps of its own
    while not all(r.done for r in rows):
        pipeline.step(rows)
    assert [r.index for r in rows] == [6, 3]
    torch.testing.assert_close(rows[0].sample, finished(pipeline, early), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rows[1].sample, finished(pipeline, late), atol=1e-5, rtol=1e-5)


def test_the_seed_decides_the_image(pipeline):
    same = pipeline.draw([DrawRequest(CAPTION, seed=3), DrawRequest(CAPTION, seed=3),
                          DrawRequest(CAPTION, seed=4)])
    arrays = [np.asarray(im, int) for im in same]
    assert (arrays[0] == arrays[1]).all()
    assert (arrays[0] != arrays[2]).any()


def test_a_supported_wide_size_draws_and_an_unsupported_one_names_the_sizes(pipeline):
    wide = pipeline.draw([DrawRequest(CAPTION, seed=1, width=24, height=16)])[0]
    assert wide.size == (24, 16)
    with pytest.raises(UserError, match="16x16, 24x16"):
        pipeline.start([DrawRequest(CAPTION, width=32, height=32)])


def test_a_preview_is_the_current_estimate_and_the_image_needs_every_step(pipeline):
    rows = pipeline.start([DrawRequest(CAPTION, seed=5, steps=4)])
    pipeline.step(rows)
    preview = pipeline.preview(rows[0])
    assert preview.size == (16, 16)
    with pytest.raises(ValueError, match="steps left"):
        pipeline.image(rows[0])
    while not rows[0].done:
        pipeline.step(rows)
    last = np.asarray(pipeline.preview(rows[0]), int)
    assert np.abs(last - np.asarray(pipeline.image(rows[0]), int)).max() <= 1


def test_a_directory_that_is_not_a_pipeline_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="not an image pipeline directory"):
        ImagePipeline.load(tmp_path)
