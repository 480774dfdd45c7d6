"""The image scheduler in process, on a real tiny pipeline (tests/helpers/images.py): rows join
the running batch at step boundaries within `max_running`, a full queue is a 429, a cancelled job
leaves the batch, and sizes take turns; the images equal the pipeline's own `draw`. A latent
Stable Diffusion-style checkpoint is served too, and refuses edits."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from PIL import Image

from helpers.images import tiny_image_pipeline, tiny_latent_pipeline
from seed.endpoints.diffusion import DrawRequest, ImagePipeline
from seed.serve.errors import APIError
from seed.serve.image_edits import EditForm, EditRequest, edit_guides
from seed.serve.image_engine import ImageEngine, ImageMetrics, preview_steps
from seed.serve.images import Plan


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory):
    directory = tiny_image_pipeline(tmp_path_factory.mktemp("engine") / "tiny-image",
                                    sizes=[(16, 16), (24, 16)])
    return ImagePipeline.load(directory)


def _req(seed: int, steps: int = 4, width: int = 16) -> DrawRequest:
    return DrawRequest("red circle left of blue square", seed=seed, steps=steps, width=width,
                       height=16)


async def _images(job, n: int) -> list:
    got: dict[int, object] = {}
    while len(got) < n:
        ev = await asyncio.wait_for(job.events.get(), 60)
        assert ev.kind != "error", ev.message
        if ev.kind == "image":
            got[ev.index] = ev.image
    return [got[i] for i in range(n)]


def test_batches_stay_within_max_running_and_images_match_draw(pipeline):
    metrics = ImageMetrics()
    engine = ImageEngine(pipeline, max_running=2, max_queue=16, metrics=metrics)

    async def run() -> list:
        engine.start()
        try:
            jobs = [engine.submit([_req(s)]) for s in range(5)]
            jobs.append(engine.submit([_req(10, width=24)]))
            return [img for job in jobs for img in await _images(job, 1)]
        finally:
            engine.stop()

    images = asyncio.run(run())
    expected = pipeline.draw([_req(s) for s in range(5)] + [_req(10, width=24)])
    for got, want in zip(images, expected, strict=True):
        assert np.abs(np.asarray(got, np.int16) - np.asarray(want, np.int16)).max() <= 1
    assert images[-1].size == (24, 16)
    counts = metrics.batch.counts  # per bucket: 1, 2, 4, ...
    assert sum(counts[2:]) == 0 and counts[1] > 0  # rows joined, never more than max_running
    assert metrics.images.values[()] == 6
    assert metrics.row_steps.values[()] == 6 * 4


def test_a_full_queue_is_a_429_and_a_cancelled_job_leaves(pipeline):
    engine = ImageEngine(pipeline, max_running=2, max_queue=2, metrics=ImageMetrics())

    async def run() -> None:
        first = engine.submit([_req(1, steps=200)])  # never started: nothing steps it yet
        engine.submit([_req(2)])
        with pytest.raises(APIError) as e:
            engine.submit([_req(3)])
        assert e.value.status == 429 and e.value.headers == {"Retry-After": "1"}
        engine.cancel(first)
        assert engine.waiting == 1
        engine.start()
        try:
            [image] = await _images(engine.submit([_req(4)]), 1)
            assert image.size == (16, 16)
        finally:
            engine.stop()

    asyncio.run(run())


def test_partial_images_are_spread_over_the_steps():
    assert preview_steps(6, 2) == (2, 4)
    assert preview_steps(12, 3) == (3, 6, 9)
    assert preview_steps(2, 3) == (1,)  # too few steps for three: one
    assert preview_steps(4, 0) == ()


def test_a_latent_checkpoint_is_served_and_refuses_edits(tmp_path):
    latent = ImagePipeline.load(tiny_latent_pipeline(tmp_path / "sd"))
    engine = ImageEngine(latent, max_running=4, max_queue=8, metrics=ImageMetrics())
    (w, h) = latent.sizes[0]

    async def run() -> list:
        engine.start()
        try:
            return await _images(engine.submit([DrawRequest("red circle", seed=s, steps=2,
                                                            width=w, height=h)
                                                for s in (1, 2)]), 2)
        finally:
            engine.stop()

    images = asyncio.run(run())
    assert [i.size for i in images] == [(w, h)] * 2 and images[0].tobytes() != images[1].tobytes()
    form = EditForm(EditRequest(prompt="red circle"), b"", None)
    plan = Plan(width=w, height=h, steps=2, guidance=1.0, quality="auto")
    with pytest.raises(APIError) as e:
        edit_guides(form, Image.new("RGB", (w, h)), plan, latent)
    assert e.value.status == 400 and "pixel-space rectified-flow" in e.value.message
