"""The Images API as a client sees it: the official `openai` client against one real `seed serve`
of a tiny image pipeline (tests/helpers/images.py), with a keys.toml (alice unlimited, bob at most
2 images a request), a usage log and a 3-second URL lifetime from a serve-only recipe.

b64 and URL responses, n distinct images and seeds that repeat, jpeg and webp, streamed partial
images, the 400s and 404s in OpenAI's shape, concurrent requests joining one denoising batch
(/metrics) with the images they get alone, and a text model's server refusing images.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
from PIL import Image

from helpers.images import tiny_image_pipeline
from helpers.serve import running_server
from seed.errors import UserError
from seed.recipe import ServeConfig
from seed.serve.images import ImageBackend

ALICE, BOB = "sk-images-alice", "sk-images-bob"
TTL_S = 3.0
PROMPT = "red circle left of blue square"


def _sha(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    pipeline = tiny_image_pipeline(root / "tiny-image", sizes=[(16, 16), (24, 16)])
    keys = root / "keys.toml"
    keys.write_text(f'[keys.alice]\nsha256 = "{_sha(ALICE)}"\n\n'
                    f'[keys.bob]\nsha256 = "{_sha(BOB)}"\nmax_n = 2\n')
    recipe = root / "serve.toml"
    recipe.write_text(f"[serve]\nimage_url_ttl = {TTL_S}\nmax_images_running = 16\n")
    usage = root / "usage.jsonl"
    with running_server(pipeline, "--recipe", recipe, "--keys-file", keys, "--usage-log", usage,
                        "--threads", "1") as url:
        yield url, usage


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=ALICE, max_retries=0, timeout=120)


def _image(b64: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(b64)))


def _pixels(b64: str) -> np.ndarray:
    return np.asarray(_image(b64).convert("RGB"), dtype=np.int16)


def test_b64_png_of_the_asked_size_and_listed_model(client):
    assert [m.id for m in client.models.list()] == ["tiny-image"]
    r = client.images.generate(model="tiny-image", prompt=PROMPT, size="24x16",
                               extra_body={"seed": 3})
    assert (r.size, r.quality, r.output_format) == ("24x16", "medium", "png")
    assert len(r.data) == 1 and r.data[0].url is None
    img = _image(r.data[0].b64_json)
    assert (img.format, img.size, img.mode) == ("PNG", (24, 16), "RGB")


def test_n_images_differ_and_a_seed_repeats_them(client):
    r = client.images.generate(model="tiny-image", prompt=PROMPT, n=3, extra_body={"seed": 11})
    three = [d.b64_json for d in r.data]
    assert len(set(three)) == 3
    again = client.images.generate(model="tiny-image", prompt=PROMPT, n=3,
                                   extra_body={"seed": 11})
    assert [d.b64_json for d in again.data] == three
    # image i of a request draws with seed + i: the second is seed 12 drawn alone
    alone = client.images.generate(model="tiny-image", prompt=PROMPT, extra_body={"seed": 12})
    assert np.abs(_pixels(alone.data[0].b64_json) - _pixels(three[1])).max() <= 1
    other = client.images.generate(model="tiny-image", prompt="green square left of red circle",
                                   extra_body={"seed": 11})
    assert other.data[0].b64_json != three[0]


def test_quality_steps_and_output_formats(client):
    low = client.images.generate(model="tiny-image", prompt=PROMPT, quality="low",
                                 extra_body={"seed": 4})
    steps2 = client.images.generate(model="tiny-image", prompt=PROMPT,
                                    extra_body={"seed": 4, "num_inference_steps": 2})
    hd = client.images.generate(model="tiny-image", prompt=PROMPT, quality="hd",
                                extra_body={"seed": 4})
    assert (low.quality, steps2.quality, hd.quality) == ("low", "low", "high")
    assert low.data[0].b64_json == steps2.data[0].b64_json != hd.data[0].b64_json
    jpeg = client.images.generate(model="tiny-image", prompt=PROMPT, output_format="jpeg",
                                  output_compression=80, extra_body={"seed": 4})
    webp = client.images.generate(model="tiny-image", prompt=PROMPT, output_format="webp",
                                  extra_body={"seed": 4})
    assert _image(jpeg.data[0].b64_json).format == "JPEG" and jpeg.output_format == "jpeg"
    assert _image(webp.data[0].b64_json).format == "WEBP"
    default = client.images.generate(model="tiny-image", prompt=PROMPT, extra_body={"seed": 4})
    # webp without output_compression is lossless: the same pixels as the png
    assert np.array_equal(_pixels(webp.data[0].b64_json), _pixels(default.data[0].b64_json))


def test_url_serves_the_same_bytes_then_expires(client, server):
    r = client.images.generate(model="tiny-image", prompt=PROMPT, response_format="url",
                               extra_body={"seed": 21})
    url = r.data[0].url
    assert r.data[0].b64_json is None and url.startswith(server[0] + "/v1/images/files/img_")
    got = httpx.get(url, timeout=30)  # no key: the unguessable id is the capability
    assert got.status_code == 200 and got.headers["content-type"] == "image/png"
    b64 = client.images.generate(model="tiny-image", prompt=PROMPT, extra_body={"seed": 21})
    assert got.content == base64.b64decode(b64.data[0].b64_json)
    guessed = httpx.get(url[:-8] + "AAAA.png", timeout=30)
    assert guessed.status_code == 404 and guessed.json()["error"]["code"] == "image_not_found"
    time.sleep(TTL_S + 0.5)
    gone = httpx.get(url, timeout=30)
    assert gone.status_code == 404 and "serve.image_url_ttl" in gone.json()["error"]["message"]


def test_stream_sends_partial_images_then_the_image(client):
    events = list(client.images.generate(model="tiny-image", prompt=PROMPT, stream=True,
                                         partial_images=2,
                                         extra_body={"seed": 31, "num_inference_steps": 6}))
    assert [e.type for e in events] == ["image_generation.partial_image"] * 2 + [
        "image_generation.completed"]
    assert [e.partial_image_index for e in events[:2]] == [0, 1]
    assert all(e.size == "16x16" and e.output_format == "png" for e in events)
    whole = client.images.generate(model="tiny-image", prompt=PROMPT,
                                   extra_body={"seed": 31, "num_inference_steps": 6})
    assert events[-1].b64_json == whole.data[0].b64_json
    assert events[0].b64_json != events[1].b64_json != events[-1].b64_json


@pytest.mark.parametrize(("body", "param", "needle"), [
    ({"size": "1024x1024"}, "size", "16x16, 24x16"),
    ({"style": "vivid"}, "style", "style"),
    ({"made_up": 1}, "made_up", "made_up"),
    ({"background": "transparent"}, "background", "opaque"),
    ({"n": 11}, "n", "n"),
    ({"partial_images": 2}, "partial_images", "stream"),
    ({"quality": "low", "num_inference_steps": 3}, "num_inference_steps", "not both"),
    ({"output_compression": 50}, "output_compression", "jpeg"),
])
def test_a_field_it_cannot_honour_is_a_400_naming_it(client, body, param, needle):
    with pytest.raises(openai.BadRequestError) as e:
        client.images.generate(model="tiny-image", prompt=PROMPT, extra_body=body)
    error = e.value.body
    assert error["param"] == param and needle in error["message"], error


def test_wrong_model_text_routes_and_key_policy(client, server):
    with pytest.raises(openai.NotFoundError) as e:
        client.images.generate(model="dall-e-3", prompt=PROMPT)
    assert e.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="tiny-image",
                                       messages=[{"role": "user", "content": "hi"}])
    assert "/v1/images/generations" in e.value.body["message"]
    bob = openai.OpenAI(base_url=server[0] + "/v1", api_key=BOB, max_retries=0)
    with pytest.raises(openai.BadRequestError) as e:
        bob.images.generate(model="tiny-image", prompt=PROMPT, n=3)
    assert e.value.body["param"] == "n"
    assert len(bob.images.generate(model="tiny-image", prompt=PROMPT, n=2).data) == 2
    nobody = openai.OpenAI(base_url=server[0] + "/v1", api_key="sk-wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        nobody.images.generate(model="tiny-image", prompt=PROMPT)


def _batch_sizes(url: str) -> dict[str, float]:
    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {ALICE}"}).text
    return {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines()
            if line.startswith(("seed_image_batch_size", "seed_images_generated_total",
                                "seed_denoising_steps_total"))}


def test_concurrent_requests_join_one_batch_with_the_images_they_get_alone(client, server):
    seeds = [41, 42, 43, 44]
    body = {"num_inference_steps": 12}
    alone = [client.images.generate(model="tiny-image", prompt=PROMPT,
                                    extra_body={**body, "seed": s}).data[0].b64_json
             for s in seeds]
    before = _batch_sizes(server[0])

    def one(seed: int) -> str:
        r = client.images.generate(model="tiny-image", prompt=PROMPT,
                                   extra_body={**body, "seed": seed})
        return r.data[0].b64_json

    with ThreadPoolExecutor(len(seeds)) as pool:
        together = list(pool.map(one, seeds))
    after = _batch_sizes(server[0])
    for a, b in zip(alone, together, strict=True):
        assert np.abs(_pixels(a) - _pixels(b)).max() <= 1
    assert after["seed_images_generated_total"] - before["seed_images_generated_total"] == 4
    forwards = after["seed_denoising_steps_total"] - before["seed_denoising_steps_total"]
    single = (after['seed_image_batch_size_bucket{le="1"}']
              - before['seed_image_batch_size_bucket{le="1"}'])
    assert forwards < 4 * 12 and single < forwards  # most forwards held more than one request


def test_usage_log_has_a_line_per_request_without_the_prompt(client, server):
    client.images.generate(model="tiny-image", prompt="yellow triangle left of green circle",
                           n=2, extra_body={"seed": 51})
    lines = [json.loads(line) for line in server[1].read_text().splitlines()]
    mine = [e for e in lines if e["route"] == "/v1/images/generations" and e["status"] == 200]
    assert mine and mine[-1]["key"] == "alice" and mine[-1]["n"] == 2
    assert mine[-1]["size"] == "16x16" and mine[-1]["steps"] == 4
    assert "yellow" not in server[1].read_text()


def test_a_text_model_server_refuses_images(tiny_server):
    r = httpx.post(tiny_server + "/v1/images/generations", json={"prompt": PROMPT, "model": "tiny"},
                   timeout=60)
    assert r.status_code == 400
    assert r.json()["error"]["code"] == "model_not_image"
    assert "text model `tiny`" in r.json()["error"]["message"]
    edit = httpx.post(tiny_server + "/v1/images/edits", data={"prompt": PROMPT},
                      files={"image": ("in.png", _png(Image.new("RGB", (16, 16))), "image/png")},
                      timeout=60)
    assert edit.status_code == 400 and edit.json()["error"]["code"] == "model_not_image"
    gone = httpx.get(tiny_server + "/v1/images/files/img_x.png", timeout=60)
    assert gone.status_code == 404 and gone.json()["error"]["code"] == "image_not_found"


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


def test_edits_redraw_an_image_and_inpaint_only_the_masked_half(client):
    given_b64 = client.images.generate(model="tiny-image", prompt=PROMPT,
                                       extra_body={"seed": 61}).data[0].b64_json
    given = base64.b64decode(given_b64)
    kw = {"model": "tiny-image", "prompt": "green square left of red circle"}
    edit = client.images.edit(image=("in.png", given, "image/png"), **kw,
                              extra_body={"seed": 62, "strength": 0.5})
    again = client.images.edit(image=("in.png", given, "image/png"), **kw,
                               extra_body={"seed": 62, "strength": 0.5})
    out = _pixels(edit.data[0].b64_json)
    assert edit.size == "16x16" and out.shape == (16, 16, 3)
    assert edit.data[0].b64_json == again.data[0].b64_json != given_b64
    fresh = client.images.generate(extra_body={"seed": 62}, **kw)
    # half the steps from the given image: nearer to it than a new image of the same seed is
    source = _pixels(given_b64)
    assert np.abs(out - source).mean() < np.abs(_pixels(fresh.data[0].b64_json) - source).mean()
    mask = Image.new("RGBA", (16, 16), (0, 0, 0, 255))
    mask.paste((0, 0, 0, 0), (0, 0, 8, 16))  # the left half transparent: redraw it
    painted = client.images.edit(image=("in.png", given, "image/png"),
                                 mask=("mask.png", _png(mask), "image/png"), **kw,
                                 extra_body={"seed": 63})
    result = _pixels(painted.data[0].b64_json)
    assert np.array_equal(result[:, 8:], source[:, 8:])  # kept exactly
    assert np.abs(result[:, :8] - source[:, :8]).mean() > 10  # redrawn


def test_edits_stream_and_refuse_a_mask_without_alpha(client):
    given = base64.b64decode(client.images.generate(model="tiny-image", prompt=PROMPT,
                                                    extra_body={"seed": 71}).data[0].b64_json)
    events = list(client.images.edit(image=("in.png", given, "image/png"), prompt=PROMPT,
                                     model="tiny-image", stream=True, partial_images=1,
                                     extra_body={"seed": 72, "strength": 1.0}))
    assert [e.type for e in events] == ["image_edit.partial_image", "image_edit.completed"]
    opaque = Image.new("RGB", (16, 16))
    with pytest.raises(openai.BadRequestError) as e:
        client.images.edit(image=("in.png", given, "image/png"), prompt=PROMPT,
                           mask=("mask.png", _png(opaque), "image/png"))
    assert e.value.body["param"] == "mask" and "alpha" in e.value.body["message"]
    with pytest.raises(openai.BadRequestError) as e:
        client.images.edit(image=("in.png", b"not an image", "image/png"), prompt=PROMPT)
    assert e.value.body["param"] == "image"


def test_an_image_pipeline_refuses_a_watermark_key(tmp_path):
    config = ServeConfig(model=tmp_path / "tiny-image", watermark_key_file=tmp_path / "wm.key")
    with pytest.raises(UserError, match="image pipeline: --watermark-key-file"):
        ImageBackend(config)  # before anything loads
