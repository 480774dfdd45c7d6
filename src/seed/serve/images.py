"""OpenAI's Images API for an image student: `POST /v1/images/generations` and its URLs.

(`POST /v1/images/edits` reads its form in `image_edits.py` and draws through
`ImageBackend.answer` here.)

`ImagesRequest` is the body (OpenAI's fields plus Seed's extensions `seed`,
`num_inference_steps`, `guidance_scale`, `negative_prompt`); `ImageBackend` serves a pipeline
directory (one with `model_index.json`: `seed.endpoints.diffusion.ImagePipeline`) with the batching
scheduler of `image_engine.py`, and answers the text routes with a 400 that says where to go
instead. What each field does:

- `size`: "WxH" among the sizes the pipeline draws (a 400 names them), or "auto" (its first);
- `quality`: low / medium / high (and DALL-E's standard = medium, hd = high) are the step counts
  the model card states (`seed.json`'s `quality_steps`), auto its default steps;
  `num_inference_steps` sets them directly (not together with a quality other than auto);
- `response_format`: b64_json (default), or url: `GET /v1/images/files/<id>` for
  `serve.image_url_ttl` seconds (`image_urls.py`);
- `output_format` png / jpeg / webp, `output_compression` 0-100 for jpeg and webp (100, the
  default, is the best quality: webp lossless); `background` auto or opaque (a student draws no
  alpha);
- `stream` with `partial_images` 0-3: `image_generation.partial_image` events at evenly spaced
  steps, then `image_generation.completed`, each with `image_index` (Seed's, for n > 1);
- `n` images get seeds `seed`, `seed + 1`, ... (a random seed each without `seed`).

Any other field is a 400 naming it (a few that ask for nothing are accepted, `_NO_OPS`). Keys,
per-key policies (a request counts as `n` choices and no tokens), the usage log (sizes, steps and
counts, never the prompt) and /metrics are the app's, as for text (`app.py`).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import secrets
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from seed.errors import UserError
from seed.recipe import ServeConfig
from seed.serve.errors import APIError, bad_request, model_not_found
from seed.serve.image_engine import ImageEngine, ImageEvent, ImageJob, ImageMetrics
from seed.serve.image_urls import CONTENT_TYPES, FILES_ROUTE, ImageStore
from seed.serve.openai_format import error_body, model_list
from seed.serve.policy import Ask
from seed.serve.schemas import Name, Str
from seed.serve.usage import RequestRecord

MAX_PROMPT_CHARS = 32000  # OpenAI's bound for its GPT image models
MAX_IMAGE_SEED = 2**31 - 1  # what the sampler's seeded generators take
MAX_STEPS = 1000
QUALITY_ALIASES = {"standard": "medium", "hd": "high"}
POLL_S = 0.5  # how often a waiting non-streamed request looks for its client having left

# Accepted at any value: they ask for nothing Seed would drop.
_NO_OPS = {"safety_identifier", "user"}
# Refused by name, with what to do.
_REFUSED = {
    "style": "Seed's students have no style setting (DALL-E 3's vivid/natural); omit `style`",
    "moderation": "Seed runs no moderation model; omit `moderation`",
    "input_fidelity": "it applies to image edits; omit it",
    "svg": "Seed draws raster images only; omit `svg`",
    "complexity": "Seed's students take no complexity setting; omit `complexity`",
    "frame_count": "Seed draws still images; omit `frame_count`",
    "frame_duration_ms": "Seed draws still images; omit `frame_duration_ms`",
}


class ImagesRequest(BaseModel):
    """The body of `POST /v1/images/generations` (fields it does not declare are kept and refused
    by name in `refuse_extras`)."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    prompt: Str = Field(min_length=1, max_length=MAX_PROMPT_CHARS)
    model: Name | None = None
    n: int = Field(1, ge=1, le=10)
    size: Str | None = Field(None, max_length=32)
    quality: Literal["low", "medium", "high", "auto", "standard", "hd"] | None = None
    response_format: Literal["b64_json", "url"] | None = None
    output_format: Literal["png", "jpeg", "webp"] | None = None
    output_compression: int | None = Field(None, ge=0, le=100)
    background: Literal["auto", "opaque", "transparent"] | None = None
    stream: bool | None = None
    partial_images: int | None = Field(None, ge=0, le=3)
    user: Name | None = None
    # Seed's extensions
    seed: int | None = Field(None, ge=0, le=MAX_IMAGE_SEED)
    num_inference_steps: int | None = Field(None, ge=1, le=MAX_STEPS)
    guidance_scale: float | None = Field(None, ge=0.0, le=100.0)
    negative_prompt: Str | None = Field(None, max_length=MAX_PROMPT_CHARS)

    def policy_ask(self) -> Ask:
        """What a key's policy limits: `n` choices, no tokens (seed.serve.policy)."""
        return Ask(self.model or "", self.n, False, 0, 0, {
            "n": "n", "logprobs": "n", "top_logprobs": "n", "max_tokens": "n"})


def refuse_extras(req: ImagesRequest) -> None:
    """A 400 naming the first field the request sends that Seed would not honour."""
    for name, value in (req.model_extra or {}).items():
        if name in _NO_OPS or value is None:
            continue
        why = _REFUSED.get(name, "this server does not know it; leave it out")
        raise bad_request(f"`{name}` is not supported by this server's images API: {why}.", name)
    if req.background == "transparent":
        raise bad_request("background `transparent` is not supported: the student draws opaque "
                          "images; send `opaque` or `auto`.", "background")
    if req.output_compression is not None and req.output_format in (None, "png"):
        raise bad_request("output_compression applies to jpeg and webp; set output_format to one "
                          "of them or drop output_compression.", "output_compression")
    if req.partial_images and not req.stream:
        raise bad_request("partial_images are sent only when streaming; set stream to true or "
                          "drop partial_images.", "partial_images")
    if req.stream and req.response_format == "url":
        raise bad_request("A stream sends its images as b64_json; drop response_format url or "
                          "stream.", "response_format")


class Plan(BaseModel):
    """What a valid request draws: size, steps, guidance, and the quality it reports."""

    width: int
    height: int
    steps: int
    guidance: float
    quality: str


def plan(req: ImagesRequest, pipeline: Any) -> Plan:
    """The request's size, steps and guidance on `pipeline`, or a 400 naming the field."""
    sizes = [(int(w), int(h)) for w, h in pipeline.sizes]
    supported = ", ".join(f"{w}x{h}" for w, h in sizes)
    if req.size in (None, "auto"):
        width, height = sizes[0]
    else:
        parts = req.size.lower().split("x")
        size = tuple(int(p) for p in parts) if len(parts) == 2 and all(
            p.isdigit() for p in parts) else None
        if size not in sizes:
            raise bad_request(f"size `{req.size}` is not one this model draws; it supports: "
                              f"{supported} (or auto).", "size")
        width, height = size
    quality = QUALITY_ALIASES.get(req.quality or "auto", req.quality or "auto")
    steps_by_quality = {k: int(v) for k, v in pipeline.quality_steps.items()}
    if req.num_inference_steps is not None:
        if quality != "auto":
            raise bad_request("Give quality or num_inference_steps, not both (quality "
                              f"{req.quality} is {steps_by_quality.get(quality)} steps).",
                              "num_inference_steps")
        steps = req.num_inference_steps
        named = [k for k, v in steps_by_quality.items() if v == steps]
        quality = named[0] if named else "auto"
    elif quality == "auto":
        steps = int(pipeline.default_steps)
        named = [k for k, v in steps_by_quality.items() if v == steps]
        quality = named[0] if named else "auto"
    elif quality in steps_by_quality:
        steps = steps_by_quality[quality]
    else:
        raise bad_request(f"quality `{req.quality}`: this model states steps for "
                          f"{', '.join(steps_by_quality)} only.", "quality")
    guidance = (float(pipeline.default_guidance) if req.guidance_scale is None
                else req.guidance_scale)
    return Plan(width=width, height=height, steps=steps, guidance=guidance, quality=quality)


def encode_image(image: Any, fmt: str, compression: int | None) -> bytes:
    """A PIL image as png, jpeg or webp bytes (`compression` 100 or None: the best quality)."""
    buf = io.BytesIO()
    rgb = image.convert("RGB")
    if fmt == "png":
        rgb.save(buf, "PNG")
    elif fmt == "jpeg":
        rgb.save(buf, "JPEG", quality=95 if compression is None else compression)
    else:
        if compression in (None, 100):
            rgb.save(buf, "WEBP", lossless=True)
        else:
            rgb.save(buf, "WEBP", quality=compression)
    return buf.getvalue()


def not_an_image_model(model_name: str) -> APIError:
    """What a text model's server answers on the images routes."""
    return APIError(400, f"This server serves the text model `{model_name}`, which cannot draw "
                    "images; use /v1/chat/completions, or serve an image pipeline directory.",
                    param="model", code="model_not_image")


def _sse(event: str, data: dict[str, Any]) -> str:
    return f"event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n"


class ImageBackend:
    """A pipeline directory behind the Images API; the text routes answer a 400."""

    def __init__(self, config: ServeConfig) -> None:
        if config.model is None:
            raise UserError("give an image pipeline directory to serve")
        if config.watermark_key_file is not None:
            raise UserError(f"{config.model} is an image pipeline: --watermark-key-file "
                            "(serve.watermark_key_file) watermarks text replies only; drop it")
        import torch

        from seed.endpoints.diffusion import ImagePipeline

        device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(config.dtype)
        if config.threads:
            torch.set_num_threads(config.threads)
        self.pipeline = ImagePipeline.load(config.model, device=device, dtype=dtype)
        self.model_name = config.model_name or config.model.name
        self.created = int(config.model.stat().st_mtime)
        self.metrics = ImageMetrics()
        self.engine = ImageEngine(self.pipeline, max_running=config.max_images_running,
                                  max_queue=config.max_images_queue, metrics=self.metrics)
        self.store = ImageStore(config.image_url_ttl)

    # -- the Backend protocol (app.py) ------------------------------------------------------------

    def start(self) -> None:
        self.store.open()
        self.engine.start()

    def stop(self) -> None:
        self.engine.stop()
        self.store.close()

    async def models(self) -> Any:
        """The served model, its card marked `task: text-to-image` (the chat page's image tab)."""
        models = model_list(self.model_name, self.created)
        cards: list[Any] = list(models["data"])
        for card in cards:
            card["task"] = "text-to-image"
        return models

    def _text_route(self) -> APIError:
        return APIError(400, f"`{self.model_name}` is an image model: it answers "
                        "POST /v1/images/generations, not the text routes.", param="model",
                        code="model_not_text")

    async def chat(self, req: Any, http: Request, rec: RequestRecord) -> Response:
        raise self._text_route()

    async def completions(self, req: Any, http: Request, rec: RequestRecord) -> Response:
        raise self._text_route()

    async def responses(self, req: Any, http: Request, rec: RequestRecord) -> Response:
        raise self._text_route()

    async def tokenize(self, req: Any, http: Request, rec: RequestRecord) -> Response:
        raise self._text_route()

    async def detokenize(self, req: Any, http: Request, rec: RequestRecord) -> Response:
        raise self._text_route()

    def queue_depth(self) -> int:
        return self.engine.waiting

    def running(self) -> int:
        return self.engine.running

    def problem(self) -> str | None:
        return self.engine.dead

    def render_metrics(self) -> str:
        return self.metrics.render()

    # -- the images routes ------------------------------------------------------------------------

    async def images(self, req: ImagesRequest, http: Request, rec: RequestRecord) -> Response:
        refuse_extras(req)
        if req.model is not None and req.model != self.model_name:
            raise model_not_found(req.model)
        return await self.answer(req, plan(req, self.pipeline), None, http, rec)

    async def answer(self, req: ImagesRequest, p: Plan, guides: list[Any] | None, http: Request,
                     rec: RequestRecord, events: str = "image_generation") -> Response:
        """Draw `req.n` images as `p` says (with `guides`: edits of a given image, one each) and
        answer them as JSON or, streamed, as `events`.partial_image / .completed events."""
        from seed.endpoints.diffusion import DrawRequest

        fmt = req.output_format or "png"
        rec.request = {"n": req.n, "size": f"{p.width}x{p.height}", "steps": p.steps,
                       "guidance": p.guidance, "seed": req.seed is not None,
                       "stream": bool(req.stream), "response_format": req.response_format
                       or "b64_json", "output_format": fmt, "user": req.user}
        first = secrets.randbelow(MAX_IMAGE_SEED) if req.seed is None else req.seed
        draws = [DrawRequest(req.prompt, req.negative_prompt or "",
                             (first + i) % (MAX_IMAGE_SEED + 1) if req.seed is not None
                             else secrets.randbelow(MAX_IMAGE_SEED), p.steps, p.guidance,
                             p.width, p.height) for i in range(req.n)]
        job = self.engine.submit(draws, (req.partial_images or 0) if req.stream else 0, guides)
        head = {"output_format": fmt, "size": f"{p.width}x{p.height}", "quality": p.quality,
                "background": "opaque"}
        if req.stream:
            return StreamingResponse(self._stream(job, req, head, events),
                                     media_type="text/event-stream")
        try:
            images = await self._collect(job, http)
        finally:
            self.engine.cancel(job)
        data = []
        for image in images:
            raw = await asyncio.to_thread(encode_image, image, fmt, req.output_compression)
            if req.response_format == "url":
                image_id = await asyncio.to_thread(self.store.put, raw, fmt)
                data.append({"url": str(http.base_url).rstrip("/") + FILES_ROUTE + image_id})
            else:
                data.append({"b64_json": base64.b64encode(raw).decode("ascii")})
        return JSONResponse({"created": int(time.time()), "data": data, **head})

    async def _collect(self, job: ImageJob, http: Request) -> list[Any]:
        """Every image of `job` in order; a client that leaves ends it as a 499."""
        images: list[Any] = [None] * len(job.requests)
        left = len(images)
        while left:
            try:
                ev = await asyncio.wait_for(job.events.get(), POLL_S)
            except TimeoutError:
                if await http.is_disconnected():
                    raise APIError(499, "The client closed the request.") from None
                continue
            if ev.kind == "error":
                raise APIError(500, ev.message, type_="server_error", code="image_failed")
            if ev.kind == "image":
                images[ev.index] = ev.image
                left -= 1
        return images

    async def _stream(self, job: ImageJob, req: ImagesRequest, head: dict[str, Any],
                      events: str) -> Any:
        """The request's SSE events: partial images, then each image's completed event."""
        fmt = head["output_format"]
        left = len(job.requests)
        try:
            while left:
                ev: ImageEvent = await job.events.get()
                if ev.kind == "error":
                    yield f"data: {_json(error_body(ev.message, 'server_error'))}\n\n"
                    return
                raw = await asyncio.to_thread(encode_image, ev.image, fmt, req.output_compression)
                body = {"b64_json": base64.b64encode(raw).decode("ascii"),
                        "created_at": int(time.time()), **head, "image_index": ev.index}
                if ev.kind == "partial":
                    yield _sse(f"{events}.partial_image", {"type": f"{events}.partial_image",
                                "partial_image_index": ev.partial, **body})
                else:
                    left -= 1
                    yield _sse(f"{events}.completed", {"type": f"{events}.completed", **body})
        finally:
            self.engine.cancel(job)

    async def image_file(self, image_id: str) -> Response:
        """`GET /v1/images/files/<id>`: a URL-mode image while it lives, else a 404."""
        found = await asyncio.to_thread(self.store.get, image_id[:128])
        if found is None:
            return JSONResponse(error_body("No such image: it never existed or its hour is up "
                                           "(URLs live serve.image_url_ttl seconds); draw it "
                                           "again.", code="image_not_found"), status_code=404)
        data, content_type = found
        return Response(data, media_type=content_type,
                        headers={"Cache-Control": "private, max-age=60"})


def images_call(backend: Any) -> Any:
    """The handler of /v1/images/generations on `backend`: an image backend's own, else one that
    answers a text model's (or an upstream's) 400."""
    call = getattr(backend, "images", None)
    if call is not None:
        return call

    async def refuse(req: ImagesRequest, http: Request, rec: RequestRecord) -> Response:
        raise not_an_image_model(backend.model_name)
    return refuse


async def image_file_route(backend: Any, image_id: str) -> Response:
    """GET /v1/images/files/<id> on `backend` (a 404 where it keeps no images)."""
    serve = getattr(backend, "image_file", None)
    if serve is not None:
        response: Response = await serve(image_id)
        return response
    return JSONResponse(error_body("This server keeps no images: it serves a text model.",
                                   code="image_not_found"), status_code=404)


def error_param(loc: tuple[int | str, ...]) -> str:
    """A validation error's location as the images field the client wrote (`size`)."""
    parts = [str(p) for p in loc if p != "body"]
    return ".".join(parts[:1]) or "body"


def _json(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


__all__ = ["CONTENT_TYPES", "ImageBackend", "ImagesRequest", "not_an_image_model"]
