"""The `images` teacher: any server speaking OpenAI's Images API (`POST /images/generations`).

OpenAI's API reference (platform.openai.com/docs/api-reference/images/create, read 2026-12-01
through the generated clients that mirror it: openai-client-base's `CreateImageRequest`,
async-openai's `images/image.rs`, the openai Node client's `ImagesResponse`) says the models
differ in what they take:

- `dall-e-2`: `size` 256x256, 512x512 or 1024x1024, `response_format` (`url`, the default, or
  `b64_json`), `n` 1-10, `user`; `quality` only "standard".
- `dall-e-3`: `size` 1024x1024, 1792x1024 or 1024x1792, `quality` standard or hd, `style` vivid or
  natural, `response_format`, `n` = 1 only; each image has a `revised_prompt`.
- GPT image models (`gpt-image-1`, `gpt-image-1-mini`, `gpt-image-1.5`): always base64, and they
  reject `response_format`; they take `size` (1024x1024, 1536x1024, 1024x1536, auto), `quality`
  (low, medium, high, auto), `background` (transparent, opaque, auto), `output_format` (png, jpeg,
  webp), `output_compression`, `moderation` (low, auto), `n` 1-10; the response has `usage`
  (`input_tokens`, `output_tokens`, `input_tokens_details`).

So this endpoint sends only what the model takes (`check_params` refuses, before anything is sent,
a recipe parameter the model does not take) and asks DALL-E models and unknown servers (seed serve,
vLLM-Omni, LocalAI) for `b64_json`; a `url` answer (when the recipe asks for it) is downloaded at
once, since OpenAI's URLs expire after an hour. The response names no model: provenance records the
model requested (`teacher.model_requested`), which is what the terms gate matches.

A moderation refusal (HTTP 400 with code `moderation_blocked`, type `image_generation_user_error`,
or DALL-E's `content_policy_violation`) is `PromptRefused`: that prompt fails, the run goes on. 429,
5xx, timeouts and bodies that are not images are `TransientError`s the engine retries; other 4xx
are `UserError`s that stop the run. The completion's text is a JSON object holding the image bytes
(base64) and the revised prompt, so the engine's cache and retries serve images unchanged. The API
key is read once, kept in the client's headers, never logged or written.
"""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any
from urllib.parse import urlparse

import httpx

from seed.endpoints.base import (
    Completion,
    EndpointDefaults,
    HeaderListener,
    PromptRefused,
    TransientError,
)
from seed.endpoints.http import check_base_url, check_reachable, retry_after
from seed.endpoints.openai import infer_route, read_api_key
from seed.errors import UserError
from seed.generate.budget import IMAGE_TOKENS_BOUND, price_for
from seed.records import Teacher

# The request fields each model family takes besides `prompt`, `model` and `n`.
FIELDS: dict[str, set[str]] = {
    "dall-e-2": {"size", "response_format", "user", "quality"},
    "dall-e-3": {"size", "quality", "style", "response_format", "user"},
    "gpt-image": {"size", "quality", "background", "output_format", "output_compression",
                  "moderation", "user"},
}
MAX_N = {"dall-e-2": 10, "dall-e-3": 1, "gpt-image": 10}
REFUSAL_CODES = {"moderation_blocked", "content_policy_violation"}
FATAL_STATUS = {400, 401, 403, 404, 422}


def family(model: str) -> str | None:
    """"dall-e-2", "dall-e-3", "gpt-image", or None for a model OpenAI does not document (another
    server's), which gets whatever the recipe sends."""
    name = model.lower()
    if name.startswith("gpt-image"):
        return "gpt-image"
    for known in ("dall-e-2", "dall-e-3"):
        if name.startswith(known):
            return known
    return None


def check_params(model: str, params: dict[str, Any], samples: int) -> None:
    """A UserError for a recipe parameter `model` does not take, or too many images a request."""
    fam = family(model)
    if fam is None:
        return
    extra = sorted(set(params) - FIELDS[fam])
    if extra:
        raise UserError(f"generate.params.{extra[0]}: {model} does not take it (it takes "
                        f"{', '.join(sorted(FIELDS[fam]))}); remove it")
    if fam == "dall-e-2" and params.get("quality") not in (None, "standard"):
        raise UserError(f"generate.params.quality = {params['quality']!r}: dall-e-2 has only "
                        "\"standard\"")
    if samples > MAX_N[fam]:
        raise UserError(f"generate.samples = {samples}: {model} draws at most {MAX_N[fam]} "
                        "image(s) a request; lower it")


def _error_body(resp: httpx.Response) -> dict[str, Any]:
    try:
        body = resp.json()
    except ValueError:
        return {"message": resp.text[:300] or resp.reason_phrase}
    err = body.get("error", body) if isinstance(body, dict) else {"message": str(body)}
    return err if isinstance(err, dict) else {"message": str(err)}


class ImagesEndpoint(EndpointDefaults):
    """One image model behind an Images API base URL; `complete()` is one generation request."""

    def __init__(self, base_url: str, model: str, *, api_key_env: str | None = None,
                 api_key_file: str | None = None, headers: dict[str, str] | None = None,
                 route: str | None = None, timeout: float = 120.0, max_connections: int = 64,
                 what: str = "generate.teacher") -> None:
        check_base_url(base_url, what, "https://api.openai.com/v1")
        self.base_url, self.model, self.what = base_url.rstrip("/"), model, what
        self.route = route or infer_route(base_url)
        self.family = family(model)
        key = read_api_key(api_key_env, api_key_file, what)
        sent = {"Content-Type": "application/json", **(headers or {})}
        if key is not None:
            sent["Authorization"] = f"Bearer {key}"
        self.on_headers: HeaderListener | None = None
        self._client = httpx.AsyncClient(
            headers=sent, timeout=httpx.Timeout(timeout, connect=min(timeout, 30.0)),
            limits=httpx.Limits(max_connections=max_connections))

    def teacher(self) -> Teacher:
        return Teacher(route=self.route, host=urlparse(self.base_url).hostname,
                       model_requested=self.model)

    def identity(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "model": self.model, "route": self.route,
                "api": "images"}

    def body(self, prompt: str, params: dict[str, Any]) -> dict[str, Any]:
        """The JSON body: the prompt, the model and the parameters this model takes."""
        body = {"model": self.model, "prompt": prompt, **params}
        if self.family != "gpt-image":
            body.setdefault("response_format", "b64_json")
        else:
            body.pop("response_format", None)
        return body

    async def complete(self, messages: list[dict[str, str]], **params: Any) -> list[Completion]:
        prompt = messages[-1]["content"]
        try:
            resp = await self._client.post(f"{self.base_url}/images/generations",
                                           json=self.body(prompt, params))
        except httpx.TimeoutException:
            raise TransientError("timeout") from None
        except httpx.RequestError as e:
            raise TransientError(f"cannot reach {self.base_url} ({type(e).__name__})") from None
        if self.on_headers is not None:
            self.on_headers(resp.headers)
        if resp.status_code != 200:
            self._raise(resp)
        try:
            data = resp.json()
            items = data["data"]
            if not isinstance(items, list) or not items:
                raise ValueError("no images")
            images = [await self._image(item) for item in items]
        except (ValueError, KeyError, TypeError, AttributeError, binascii.Error) as e:
            raise TransientError(f"the response holds no image ({e})") from None
        usage = self._usage(data.get("usage"), len(images))
        return [Completion(text=json.dumps({"b64": base64.b64encode(raw).decode(),
                                            "revised_prompt": revised}),
                           model=None, usage=usage) for raw, revised in images]

    def _raise(self, resp: httpx.Response) -> None:
        err = _error_body(resp)
        message = str(err.get("message", ""))[:300]
        code = err.get("code")
        if resp.status_code == 400 and (code in REFUSAL_CODES
                                        or err.get("type") == "image_generation_user_error"):
            raise PromptRefused(f"{code or 'moderation'}: {message}")
        if resp.status_code in FATAL_STATUS:
            raise UserError(f"the teacher at {self.base_url} refused the request (HTTP "
                            f"{resp.status_code}: {message}); fix the model name, key or "
                            "parameters")
        raise TransientError(f"HTTP {resp.status_code}: {message}", retry_after(resp.headers))

    async def _image(self, item: dict[str, Any]) -> tuple[bytes, str | None]:
        revised = item.get("revised_prompt")
        revised = revised if isinstance(revised, str) else None
        if isinstance(item.get("b64_json"), str):
            return base64.b64decode(item["b64_json"], validate=True), revised
        url = item.get("url")
        if not isinstance(url, str):
            raise ValueError("an image with neither b64_json nor url")
        try:
            got = await self._client.get(url)
        except httpx.RequestError as e:
            raise TransientError(f"cannot download the image ({type(e).__name__})") from None
        if got.status_code != 200:
            raise TransientError(f"the image URL answered HTTP {got.status_code}")
        return got.content, revised

    def _usage(self, reported: Any, images: int) -> dict[str, Any]:
        """The reply's usage as the budget reads it (seed.generate.budget.billed_usage)."""
        usage: dict[str, Any] = dict(reported) if isinstance(reported, dict) else {}
        usage["images"] = images
        token_priced = self.family == "gpt-image" or price_for(self.model) is not None
        if token_priced and not isinstance(usage.get("output_tokens"), int):
            usage["output_tokens"] = IMAGE_TOKENS_BOUND * images  # never too little
            usage["estimated"] = True
        return usage

    async def check_reachable(self) -> None:
        await check_reachable(self._client, f"{self.base_url}/models", "teacher", self.base_url,
                              self.what)

    async def aclose(self) -> None:
        await self._client.aclose()


def decode_completion(text: str) -> tuple[bytes, str | None]:
    """The image bytes and revised prompt an `ImagesEndpoint` completion holds."""
    data = json.loads(text)
    return base64.b64decode(data["b64"]), data.get("revised_prompt")
