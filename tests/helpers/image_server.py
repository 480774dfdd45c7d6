"""A local server speaking OpenAI's Images API, with faults on command (tests only).

Run: `python tests/helpers/image_server.py --port P [--models A,B] [--log FILE] [--latency S]`;
in tests, `with image_server(tmp_path, models=...) as server:` starts it in a subprocess.

`POST /v1/images/generations` answers as OpenAI documents: `{"created", "data": [{"b64_json" |
"url", "revised_prompt"?}], "usage"?}`. It draws a shapes caption ("red circle left of blue
square") with Seed's shapes teacher and any other prompt as a plain colour picked by the prompt's
hash, at `size` (default 32x32), one image per `n` (image i differs by a pixel). It refuses what
OpenAI refuses: a model it does not serve (404), `response_format` sent to a GPT image model,
`style` to one that is not dall-e-3, `n` > 1 to dall-e-3 (400, `invalid_request_error`). GPT
image models get `output_format` (png, jpeg, webp) and `usage` (input tokens = words, 272 output
tokens an image); dall-e-3 gets a `revised_prompt`; `response_format: "url"` gives a URL that
`GET` serves.

`POST /v1/chat/completions` stands for a chat teacher that expands image prompts (seed's
`generate.expand`): "Write K ... Picture: X" gets a numbered list "i. X, variation i".

Faults: `POST /_control/faults {"match": "<substring>", "faults": [...]}`: requests whose prompt
holds the substring take the next fault in order: `429` or `429:<retry-after>`, `500`,
`slow:<s>` (sleep s seconds, then answer), `notimage` (a 200 whose b64_json is not an image).
`POST /_control/refuse {"match": "<substring>"}`: every prompt holding it is refused as OpenAI's
moderation refuses (400, code `moderation_blocked`, type `image_generation_user_error`), each time.
Every request is appended to the `--log` file as a JSON line when it arrives: prompt, model, n,
the body's field names, the fault; `status` lines follow when it is answered.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import time
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "src"))  # run as a script

app = FastAPI()
STATE: dict[str, Any] = {"models": ["gpt-image-1"], "log": None, "latency": 0.0, "rules": [],
                         "refuse": [], "files": {}}
FORMATS = {"png": "PNG", "jpeg": "JPEG", "webp": "WEBP"}


def _log(entry: dict[str, Any]) -> None:
    if STATE["log"]:
        with open(STATE["log"], "a") as f:
            f.write(json.dumps({"t": time.time(), **entry}) + "\n")


def _error(status: int, message: str, kind: str = "invalid_request_error",
           code: str | None = None, param: str | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": kind, "param": param,
                                   "code": code}}, status)


def _draw(prompt: str, width: int, height: int, index: int) -> Image.Image:
    from seed.endpoints.shapes import Shapes
    from seed.recipe import ShapesConfig

    shapes = Shapes(ShapesConfig(size=width)) if width == height and 12 <= width <= 256 else None
    spec = shapes.parse(prompt) if shapes is not None else None
    if shapes is not None and spec is not None:
        img = shapes.draw(spec)
    else:
        h = hashlib.sha256(prompt.encode()).digest()
        img = Image.new("RGB", (width, height), (h[0], h[1], h[2]))
    if index:
        img.putpixel((index % width, 0), (index * 37 % 256, 255, 0))
    return img


def _encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=FORMATS[fmt])
    return buf.getvalue()


def _checked(body: dict[str, Any]) -> JSONResponse | None:
    """OpenAI's refusals of fields a model does not take."""
    model = str(body.get("model"))
    if model not in STATE["models"]:
        return _error(404, f"The model `{model}` does not exist or you do not have access to it.",
                      code="model_not_found")
    gpt = model.startswith("gpt-image")
    if gpt and "response_format" in body:
        return _error(400, "Unknown parameter: 'response_format'.", param="response_format",
                      code="unknown_parameter")
    if "style" in body and model != "dall-e-3":
        return _error(400, "Unknown parameter: 'style'.", param="style")
    if not gpt and ("output_format" in body or "background" in body):
        return _error(400, "Unknown parameter: 'output_format'.", param="output_format")
    if model == "dall-e-3" and body.get("n", 1) != 1:
        return _error(400, "Invalid 'n': dall-e-3 supports only n=1.", param="n")
    return None


def _next_fault(prompt: str) -> str | None:
    for rule in STATE["rules"]:
        if rule["faults"] and rule["match"] in prompt:
            return rule["faults"].popleft()
    return None


@app.post("/_control/faults")
async def set_faults(request: Request) -> dict[str, int]:
    spec = await request.json()
    STATE["rules"].append({"match": spec.get("match", ""), "faults": deque(spec["faults"])})
    return {"rules": len(STATE["rules"])}


@app.post("/_control/refuse")
async def set_refuse(request: Request) -> dict[str, int]:
    STATE["refuse"].append((await request.json())["match"])
    return {"refuse": len(STATE["refuse"])}


@app.get("/v1/models")
async def models() -> dict[str, Any]:
    return {"object": "list", "data": [{"id": m, "object": "model"} for m in STATE["models"]]}


@app.get("/files/{name}")
async def files(name: str) -> Response:
    if name not in STATE["files"]:
        return _error(404, "expired")
    data, fmt = STATE["files"][name]
    return Response(data, media_type=f"image/{fmt}")


@app.post("/v1/chat/completions")
async def chat(request: Request) -> Response:
    """A chat teacher that expands image prompts: "Write K ... Picture: X" gets a numbered list
    of K lines "i. X, variation i"; any other message is echoed."""
    body = await request.json()
    text = body["messages"][-1]["content"]
    match = re.search(r"Write (\d+) .*Picture: (.*)$", text, re.S)
    reply = (f"echo: {text}" if match is None else "\n".join(
        f"{i}. {match.group(2).strip()}, variation {i}" for i in range(1, int(match.group(1)) + 1)))
    _log({"chat": text[-80:], "model": body.get("model")})
    return JSONResponse({"id": "chat-1", "object": "chat.completion", "model": body.get("model"),
                         "choices": [{"index": 0, "finish_reason": "stop", "message": {
                             "role": "assistant", "content": reply}}],
                         "usage": {"prompt_tokens": len(text.split()),
                                   "completion_tokens": len(reply.split())}})


@app.post("/v1/images/generations")
async def generations(request: Request) -> Response:
    body = await request.json()
    prompt = str(body.get("prompt", ""))
    fault = _next_fault(prompt)
    _log({"prompt": prompt, "model": body.get("model"), "n": body.get("n", 1),
          "fields": sorted(body), "fault": fault})
    if STATE["latency"]:
        await asyncio.sleep(STATE["latency"])
    kind, _, arg = (fault or "").partition(":")
    if kind == "slow":
        await asyncio.sleep(float(arg or 5))
    if (refused := _checked(body)) is not None:
        _log({"prompt": prompt, "status": refused.status_code})
        return refused
    if any(m in prompt for m in STATE["refuse"]):
        _log({"prompt": prompt, "status": 400})
        return _error(400, "Your request was rejected by the safety system. If you believe this "
                      "is an error, contact us at help.openai.com and include the request ID "
                      "req_test. safety_violations=[violence].", "image_generation_user_error",
                      "moderation_blocked")
    if kind == "429":
        _log({"prompt": prompt, "status": 429})
        limited = _error(429, "Rate limit reached for images per minute.", "requests",
                         "rate_limit_exceeded")
        limited.headers["retry-after"] = arg or "1"
        return limited
    if kind == "500":
        _log({"prompt": prompt, "status": 500})
        return _error(500, "The server had an error while processing your request.",
                      "server_error")
    return _answer(request, body, prompt, kind)


def _answer(request: Request, body: dict[str, Any], prompt: str, kind: str) -> Response:
    model = body["model"]
    gpt = model.startswith("gpt-image")
    width, _, height = str(body.get("size") or "32x32").partition("x")
    fmt = body.get("output_format", "png") if gpt else "png"
    data = []
    for i in range(int(body.get("n", 1))):
        raw = _encode(_draw(prompt, int(width), int(height or width), i), fmt)
        if kind == "notimage":
            raw = b"this is not an image"
        item: dict[str, Any] = {}
        if body.get("response_format") == "url":
            name = f"{hashlib.sha256(raw).hexdigest()[:20]}.{fmt}"
            STATE["files"][name] = (raw, fmt)
            item["url"] = f"{str(request.base_url).rstrip('/')}/files/{name}"
        else:
            item["b64_json"] = base64.b64encode(raw).decode()
        if model == "dall-e-3":
            item["revised_prompt"] = f"A picture of {prompt}"
        data.append(item)
    answer: dict[str, Any] = {"created": int(time.time()), "data": data}
    if gpt:
        words = len(prompt.split())
        answer["usage"] = {"input_tokens": words, "output_tokens": 272 * len(data),
                           "total_tokens": words + 272 * len(data),
                           "input_tokens_details": {"text_tokens": words, "image_tokens": 0}}
        answer["output_format"] = fmt
    _log({"prompt": prompt, "status": 200, "images": len(data)})
    return JSONResponse(answer)


# -- for tests: the server in a subprocess -------------------------------------------------------

@dataclass
class ImageServer:
    base_url: str
    log: Path

    def _control(self, what: str, spec: dict[str, Any]) -> None:
        import httpx

        httpx.post(f"{self.base_url.removesuffix('/v1')}/_control/{what}",
                   json=spec).raise_for_status()

    def faults(self, faults: list[str], match: str = "") -> None:
        self._control("faults", {"match": match, "faults": faults})

    def refuse(self, match: str) -> None:
        self._control("refuse", {"match": match})

    def entries(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(x) for x in self.log.read_text().splitlines() if x.strip()]

    def requests(self) -> list[dict[str, Any]]:
        """Requests as they arrived (one entry each)."""
        return [e for e in self.entries() if "fields" in e]

    def paid(self) -> list[str]:
        """Prompts of the requests answered with images (what a real teacher bills)."""
        return [e["prompt"] for e in self.entries() if e.get("status") == 200]


@contextmanager
def image_server(tmp: Path, models: str = "gpt-image-1,dall-e-3,dall-e-2", latency: float = 0.0
                 ) -> Iterator[ImageServer]:
    from helpers.servers import free_port, wait_until_up

    port = free_port()
    log = tmp / f"image-server-{port}.jsonl"
    proc = subprocess.Popen([sys.executable, __file__, "--port", str(port), "--models", models,
                             "--log", str(log), "--latency", str(latency)], env=dict(os.environ))
    base = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_up(proc, f"{base}/models", 30, "the image server")
        yield ImageServer(base, log)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--models", default="gpt-image-1")
    ap.add_argument("--log", default=None)
    ap.add_argument("--latency", type=float, default=0.0)
    args = ap.parse_args()
    STATE.update(models=args.models.split(","), log=args.log, latency=args.latency)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="critical", access_log=False)


if __name__ == "__main__":
    main()
