"""`POST /v1/images/edits`: image-to-image and inpainting with a served image student.

OpenAI's multipart form: `image` (one file, PNG, JPEG or WebP; `image[]` with one), `prompt`,
`mask` (a PNG the size of the image whose transparent pixels, alpha < 128, are the part to redraw),
and the generation fields of `images.py` (`n`, `size`, `quality`, `response_format`,
`output_format`, `stream`, `partial_images`, ... and Seed's `seed`, `num_inference_steps`,
`guidance_scale`, `negative_prompt`), plus Seed's `strength` (0-1: the noise level the image
starts from, as a share of the steps; default 0.6, or 1 with a mask). The image is resized to the
output size (`size`, else its own when the model draws it).

How it draws (`EditGuide`, run by the scheduler on each row): the row's seeded noise is mixed with
the image at the noise level `strength` reaches, `(1 - sigma) image + sigma noise` (rectified
flow), and the steps from there run as for a new image; with a mask, after every step the kept
pixels are set back to the image noised to the row's new level, so they end exactly as given and
the redrawn part is denoised around them. Only a pixel-space rectified-flow student (what Seed
trains from scratch) edits; a latent or epsilon checkpoint is a 400 saying so.

The form is parsed with the standard library's MIME parser (the body is already bounded by
`serve.max_body_bytes`), so no multipart package is needed. This module knows nothing about routes
or batching.
"""

from __future__ import annotations

from dataclasses import dataclass
from email.message import Message
from email.parser import BytesParser
from email.policy import HTTP
from io import BytesIO
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError
from pydantic import Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from seed.serve.errors import APIError, bad_request, model_not_found
from seed.serve.images import ImagesRequest, Plan, error_param, plan, refuse_extras
from seed.serve.usage import RequestRecord

FILE_FIELDS = ("image", "image[]", "mask")
MAX_SIDE = 4096  # an image larger than this is refused before it is decoded whole


class EditRequest(ImagesRequest):
    """An edit's form fields; the image and mask bytes are kept beside them, not validated here."""

    strength: float | None = Field(None, gt=0.0, le=1.0)


@dataclass
class EditForm:
    request: EditRequest
    image: bytes
    mask: bytes | None


async def read_edit_form(http: Request) -> EditForm:
    """The multipart body as an EditForm, or a 400 naming what is wrong."""
    ctype = http.headers.get("content-type", "")
    if not ctype.lower().startswith("multipart/form-data"):
        raise bad_request("/v1/images/edits takes multipart/form-data (the image as a file "
                          "field); send it as a form.", "image")
    body = await http.body()
    message = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + ctype.encode("latin-1") + b"\r\n\r\n" + body)
    if not message.is_multipart():
        raise bad_request("The form could not be read as multipart/form-data.", "image")
    fields: dict[str, Any] = {}
    files: dict[str, list[bytes]] = {}
    for part in message.iter_parts():
        name = _field_name(part)
        if not name:
            continue
        raw = part.get_payload(decode=True)
        data = raw if isinstance(raw, bytes) else b""
        if name in FILE_FIELDS:
            files.setdefault("image" if name == "image[]" else name, []).append(data)
        else:
            fields[name] = data.decode("utf-8", errors="replace")
    images, masks = files.get("image", []), files.get("mask", [])
    if len(images) != 1:
        raise bad_request("Send one `image` file to edit (this server edits one image at a "
                          "time).", "image")
    if len(masks) > 1:
        raise bad_request("Send at most one `mask`.", "mask")
    try:
        request = EditRequest.model_validate(fields)
    except ValidationError as e:
        first = e.errors()[0]
        where = error_param(tuple(first.get("loc", ())))
        raise bad_request(f"Invalid request: {where}: {first.get('msg', 'invalid value')}.",
                          where) from None
    return EditForm(request, images[0], masks[0] if masks else None)


def _field_name(part: Message) -> str | None:
    name = part.get_param("name", header="content-disposition")
    return name if isinstance(name, str) else None


def open_image(data: bytes, param: str) -> Image.Image:
    """A form's image file decoded, or a 400 naming the field."""
    try:
        image = Image.open(BytesIO(data))
        if max(image.size) > MAX_SIDE:
            raise bad_request(f"`{param}` is {image.size[0]}x{image.size[1]}; send one at most "
                              f"{MAX_SIDE} pixels a side.", param)
        image.load()
    except (UnidentifiedImageError, OSError, ValueError):
        raise bad_request(f"`{param}` is not a PNG, JPEG or WebP image this server can read.",
                          param) from None
    return image


def edit_size(form: EditForm, image: Image.Image, sizes: list[tuple[int, int]]) -> str | None:
    """The `size` the edit asks for: as given, or the image's own when the model draws it."""
    if form.request.size not in (None, "auto"):
        return form.request.size
    own = (int(image.size[0]), int(image.size[1]))
    return f"{own[0]}x{own[1]}" if own in sizes else None


@dataclass
class EditGuide:
    """What the scheduler does to one row of an edit (see the module docstring)."""

    init: Any  # (1, 3, H, W) in [-1, 1], on the pipeline's device
    keep: Any  # (1, 1, H, W): 1 where the given image is kept, 0 where it is redrawn; or None
    strength: float
    noise: Any = None

    def begin(self, row: Any) -> None:
        steps = int(row.steps)
        start = min(steps - 1, steps - max(1, round(steps * self.strength)))
        self.noise = row.sample.clone()
        row.index = start
        row.sample = self.noised(float(row.schedule[start]))

    def after_step(self, row: Any) -> None:
        if self.keep is not None:
            sigma = float(row.schedule[row.index])
            row.sample = self.keep * self.noised(sigma) + (1 - self.keep) * row.sample

    def noised(self, sigma: float) -> Any:
        return (1 - sigma) * self.init + sigma * self.noise


def edit_guides(form: EditForm, image: Image.Image, p: Plan, pipeline: Any) -> list[EditGuide]:
    """One guide per image of the request: the image (and mask) as tensors at the output size."""
    import torch

    if getattr(pipeline, "vae", None) is not None or pipeline.objective != "rectified_flow":
        raise bad_request("This model cannot edit images: edits need a pixel-space "
                          "rectified-flow student (what seed train builds from scratch); this "
                          f"one is {pipeline.objective}"
                          f"{' with a VAE' if pipeline.vae is not None else ''}.", "model")
    size = (p.width, p.height)
    pixels = np.asarray(image.convert("RGB").resize(size, Image.Resampling.BICUBIC), np.float32)
    init = torch.from_numpy(pixels / 127.5 - 1.0).permute(2, 0, 1)[None].to(pipeline.device)
    keep = None
    if form.mask is not None:
        mask = open_image(form.mask, "mask")
        if mask.size != image.size:
            raise bad_request(f"The mask is {mask.size[0]}x{mask.size[1]} and the image "
                              f"{image.size[0]}x{image.size[1]}; send a mask the image's size.",
                              "mask")
        if "A" not in mask.getbands():
            raise bad_request("The mask needs an alpha channel: its transparent pixels are the "
                              "part to redraw; send a PNG with alpha.", "mask")
        alpha = np.asarray(mask.getchannel("A").resize(size, Image.Resampling.NEAREST))
        keep = torch.from_numpy((alpha >= 128).astype(np.float32))[None, None].to(
            pipeline.device)
    strength = form.request.strength or (1.0 if keep is not None else 0.6)
    return [EditGuide(init, keep, strength) for _ in range(form.request.n)]


def edits_call(backend: Any, form: EditForm) -> Any:
    """The handler of one /v1/images/edits form on `backend` (seed.serve.images.ImageBackend);
    a text model's server answers a 400."""

    async def edit(req: EditRequest, http: Request, rec: RequestRecord) -> Response:
        if not hasattr(backend, "pipeline"):
            raise APIError(400, f"This server serves the text model `{backend.model_name}`, "
                           "which cannot edit images; serve an image pipeline directory.",
                           param="model", code="model_not_image")
        refuse_extras(req)
        if req.model is not None and req.model != backend.model_name:
            raise model_not_found(req.model)
        image = open_image(form.image, "image")
        sized = req.model_copy(update={"size": edit_size(form, image, backend.pipeline.sizes)})
        p = plan(sized, backend.pipeline)
        guides = edit_guides(form, image, p, backend.pipeline)
        response: Response = await backend.answer(req, p, guides, http, rec, "image_edit")
        return response
    return edit
