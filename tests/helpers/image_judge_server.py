"""A vision judge whose verdicts can be worked out by hand: a real OpenAI-compatible chat server
that takes `image_url` content parts and grades both images with the shapes verifier.

An image the verifier accepts for the caption beats one it rejects (much better); two images with
the same verdict go to whichever is shown first, a position bias the two orders must cancel.
Every request body is appended to the log the caller passes.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from contextlib import contextmanager

from fastapi import FastAPI, Request
from PIL import Image

from helpers.thread_server import app_in_thread
from seed.endpoints.shapes import Shapes
from seed.recipe import ShapesConfig


def _image(part: dict) -> Image.Image:
    url = part["image_url"]["url"]
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("RGB")


def image_judge_app(config: ShapesConfig, log: list[dict]) -> FastAPI:
    app, shapes = FastAPI(), Shapes(config)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> dict:
        body = await request.json()
        log.append(body)
        parts = body["messages"][-1]["content"]
        caption = parts[0]["text"].split("[Caption]", 1)[1].split("\n\n", 1)[0].strip()
        a, b = (shapes.verify(_image(p), caption).exact for p in parts[1:3])
        verdict = "A>>B" if a and not b else "B>>A" if b and not a else "A>B"
        text = json.dumps({"verdict": verdict, "reason": f"A right: {a}, B right: {b}"})
        return {"id": "x", "object": "chat.completion", "model": body["model"],
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": 100, "completion_tokens": 10, "total_tokens": 110}}

    return app


@contextmanager
def image_judge_server(config: ShapesConfig) -> Iterator[tuple[str, list[dict]]]:
    """The verifier judge on a free port: its base URL (ending in /v1) and its request log."""
    log: list[dict] = []
    with app_in_thread(image_judge_app(config, log), "the image judge") as url:
        yield url, log
