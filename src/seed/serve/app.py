"""The FastAPI app: OpenAI routes, errors in OpenAI's shape, metrics, and the chat page.

Routes are the same whichever backend answers: a local model (`backend.py`, its engine in a
second process) or an upstream OpenAI-compatible server (`upstream.py`). Keys, the Host header and
the body size are decided before any route runs, in one place (`guard.py`); /metrics needs a key
when the server has keys. What a key's policy (a keys.toml: `policy.py`) forbids or rate-limits is
refused before the backend sees the request, and its token charge corrected when it ends. This
module holds no generation logic.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterable, AsyncIterator, Mapping
from importlib import resources
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)

from seed.protect.audit_features import request_features
from seed.recipe import ServeConfig
from seed.serve.errors import APIError, model_not_found
from seed.serve.guard import Guard, allowed_hosts, key_label, key_policy
from seed.serve.image_edits import edits_call, read_edit_form
from seed.serve.images import ImagesRequest, image_file_route, images_call
from seed.serve.images import error_param as images_error_param
from seed.serve.metrics import ServerMetrics
from seed.serve.openai_format import (
    ChatCompletion,
    Completion,
    DetokenizeResponse,
    ErrorResponse,
    Health,
    ModelCard,
    ModelList,
    TokenizeResponse,
    error_body,
)
from seed.serve.policy import Grant, KeyPolicies
from seed.serve.responses import ResponsesRequest
from seed.serve.responses import error_param as responses_error_param
from seed.serve.responses_format import ResponseObject
from seed.serve.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
    TokenizeRequest,
    error_param,
)
from seed.serve.usage import RequestRecord, UsageLog


class Backend(Protocol):
    model_name: str

    def start(self) -> None: ...
    def stop(self) -> None: ...
    async def models(self) -> Mapping[str, Any]: ...
    async def chat(self, req: ChatCompletionRequest, http: Request,
                   rec: RequestRecord) -> Response: ...
    async def completions(self, req: CompletionRequest, http: Request,
                          rec: RequestRecord) -> Response: ...
    async def responses(self, req: ResponsesRequest, http: Request,
                        rec: RequestRecord) -> Response: ...
    async def tokenize(self, req: TokenizeCompletionRequest | TokenizeChatRequest, http: Request,
                       rec: RequestRecord) -> Response: ...
    async def detokenize(self, req: DetokenizeRequest, http: Request,
                         rec: RequestRecord) -> Response: ...
    def queue_depth(self) -> int: ...
    def running(self) -> int: ...
    def problem(self) -> str | None: ...  # why /health is a 503, or None when all is well


_ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorResponse, "description": why} for code, why in [
        (400, "Bad request (the message names the field)"),
        (401, "Missing, wrong or expired API key"),
        (403, "The key's policy does not allow this model"),
        (404, "Unknown model"),
        (413, "Request body over the server's limit (serve.max_body_bytes)"),
        (429, "Queue full, or the key's rate limit reached; retry after Retry-After seconds"),
        (503, "The model's engine process stopped; the server must be restarted")]}
# Each server-sent event: `data` holds one JSON chunk, or `[DONE]` at the end.
_STREAM = {"text/event-stream": {"schema": {
    "type": "object", "required": ["data"],
    "properties": {"data": {"type": "string"}, "event": {"type": "string"}}}}}


# Routes by name in /metrics; any other path a client sends is counted as "other".
_ROUTES = frozenset({"/v1/chat/completions", "/v1/completions", "/v1/responses", "/v1/models",
                     "/metrics", "/tokenize", "/detokenize",
                     "/health", "/", "/v1/images/generations", "/v1/images/files",
                     "/v1/images/edits"})


def create_app(backend: Backend, config: ServeConfig, *, keys: KeyPolicies | None = None,
               usage_log: UsageLog | None = None) -> FastAPI:
    """The server for `backend`; with `keys`, every path but /health, / and the docs needs one,
    and a key's policy (a keys.toml) is enforced before the backend sees a request."""
    keys = keys or KeyPolicies({}, {})
    metrics = ServerMetrics(backend.queue_depth, backend.running, backend.model_name)

    def refused(path: str, status: int, key: str | None) -> None:
        """Count a request answered before its route runs: refused at the edge, or an invalid
        body (other HTTP errors, an unknown path on a keyless server, are not counted)."""
        route = path if path in _ROUTES else "other"
        RequestRecord(route=route, metrics=metrics, usage_log=usage_log, key=key).finish(status)

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        backend.start()
        if keys.path is not None:  # kill -HUP reads the keys.toml again
            asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, keys.reload)
        try:
            yield
        finally:
            backend.stop()

    app = FastAPI(title="Seed", version="1", lifespan=lifespan,
                  description="OpenAI-compatible API for a Seed model.")
    app.add_middleware(Guard, keys=keys, max_body_bytes=config.max_body_bytes,
                       hosts=allowed_hosts(config.host, config.allowed_hosts),
                       on_refused=refused)

    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> Response:
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> Response:
        refused(request.url.path, 400, key_label(request.scope))
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid body"}
        param = responses_error_param if request.url.path == "/v1/responses" else error_param
        if request.url.path == "/v1/images/generations":
            param = images_error_param
        where = param(tuple(first.get("loc", ())))
        msg = f"Invalid request: {where}: {first.get('msg', 'invalid value')}."
        return JSONResponse(error_body(msg, param=where), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, e: StarletteHTTPException) -> Response:
        return JSONResponse(error_body(str(e.detail), code=str(e.status_code)),
                            status_code=e.status_code, headers=getattr(e, "headers", None))

    async def answer(route: str, req: Any, http: Request, call: Any) -> Response:
        rec = RequestRecord(route=route, metrics=metrics, usage_log=usage_log,
                            key=key_label(http.scope), model=req.model,
                            request=None if usage_log is None else request_features(req))
        grant = Grant()
        try:
            grant = keys.admit(rec.key, key_policy(http.scope), req)  # 403, 400, 429
            response = await call(req, http, rec)
        except APIError as e:
            rec.finish(e.status)
            grant.settle(rec.prompt_tokens + rec.completion_tokens)
            raise
        except BaseException:
            rec.finish(500)
            grant.settle(rec.prompt_tokens + rec.completion_tokens)
            raise
        if isinstance(response, StreamingResponse):
            response.body_iterator = _finishing(response.body_iterator, rec, response.status_code,
                                                grant)
        else:
            rec.finish(response.status_code)
            grant.settle(rec.prompt_tokens + rec.completion_tokens)
        return response

    @app.post("/v1/chat/completions", response_model=ChatCompletion, responses={
        **_ERRORS, 200: {"content": _STREAM, "description": "A chat completion, or a stream of "
                         "chat.completion.chunk events when `stream` is true"}})
    async def chat_completions(req: ChatCompletionRequest, http: Request) -> Response:
        return await answer("/v1/chat/completions", req, http, backend.chat)

    @app.post("/v1/completions", response_model=Completion, responses={
        **_ERRORS, 200: {"content": _STREAM, "description": "A completion, or a stream of "
                         "text_completion events when `stream` is true"}})
    async def completions(req: CompletionRequest, http: Request) -> Response:
        return await answer("/v1/completions", req, http, backend.completions)

    @app.post("/v1/responses", response_model=ResponseObject, responses={
        **_ERRORS, 200: {"content": _STREAM, "description": "A response, or a stream of its "
                         "events (response.created ... response.completed) when `stream` is "
                         "true"}})
    async def responses(req: ResponsesRequest, http: Request) -> Response:
        return await answer("/v1/responses", req, http, backend.responses)

    @app.post("/tokenize", response_model=TokenizeResponse, responses=_ERRORS)
    async def tokenize(req: TokenizeRequest, http: Request) -> Response:
        """vLLM's tokenizer route: a `prompt`'s token ids, or a chat's (`messages`) as the chat
        route renders it."""
        return await answer("/tokenize", req, http, backend.tokenize)

    @app.post("/detokenize", response_model=DetokenizeResponse, responses=_ERRORS)
    async def detokenize(req: DetokenizeRequest, http: Request) -> Response:
        return await answer("/detokenize", req, http, backend.detokenize)

    @app.get("/v1/models", response_model=ModelList, responses={401: _ERRORS[401]})
    async def models() -> Response:
        return JSONResponse(await backend.models())

    @app.get("/v1/models/{model_id:path}", response_model=ModelCard,
             responses={401: _ERRORS[401], 404: _ERRORS[404]})
    async def model(model_id: str) -> Response:
        """One served model (`client.models.retrieve`); a name may hold `/` (`org/name`)."""
        found = [m for m in (await backend.models())["data"] if m["id"] == model_id]
        if not found:
            raise model_not_found(model_id[:256])
        return JSONResponse(found[0])

    @app.get("/health", response_model=Health, responses={503: _ERRORS[503]})
    async def health() -> Response:
        problem = backend.problem()  # a model backend's engine process, or the upstream
        if problem:
            return JSONResponse(error_body(problem, "server_error", code="engine_unavailable"),
                                status_code=503)
        return JSONResponse({"status": "ok"})

    @app.get("/metrics", response_class=PlainTextResponse, responses={401: _ERRORS[401]})
    async def prometheus() -> Response:
        render = getattr(backend, "render_metrics", None)  # an image backend's own families
        return PlainTextResponse(metrics.render() + (render() if render else ""),
                                 media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def chat_page() -> Response:
        page = resources.files("seed.serve").joinpath("static/index.html").read_text("utf-8")
        return HTMLResponse(page)

    @app.post("/v1/images/generations", response_model=None, responses={
        **_ERRORS, 200: {"content": _STREAM, "description": "An images response, or a stream of "
                         "image_generation.partial_image and image_generation.completed events "
                         "when `stream` is true"}})
    async def image_generations(req: ImagesRequest, http: Request) -> Response:
        """OpenAI's images.generate, for a served image pipeline (seed.serve.images)."""
        return await answer("/v1/images/generations", req, http, images_call(backend))

    # Not in the OpenAPI schema: its multipart form is read by hand (seed.serve.image_edits),
    # so the schema would declare no body for it.
    @app.post("/v1/images/edits", include_in_schema=False)
    async def image_edits(http: Request) -> Response:
        """OpenAI's images.edit (a multipart form: image, optional mask, prompt, ...):
        image-to-image and inpainting (seed.serve.image_edits)."""
        form = await read_edit_form(http)
        return await answer("/v1/images/edits", form.request, http, edits_call(backend, form))

    @app.get("/v1/images/files/{image_id}", include_in_schema=False)
    async def image_file(image_id: str, http: Request) -> Response:
        rec = RequestRecord(route="/v1/images/files", metrics=metrics, usage_log=usage_log,
                            key=key_label(http.scope))
        response = await image_file_route(backend, image_id)
        rec.finish(response.status_code)
        return response

    return app


async def _finishing(body: AsyncIterable[Any], rec: RequestRecord, status: int,
                     grant: Grant) -> AsyncIterator[Any]:
    """Pass a stream through and count the request when it ends (or the client leaves), in the
    usage log and in its key's token windows."""
    try:
        async for part in body:
            yield part
    except BaseException:
        rec.finish(499)
        raise
    finally:
        rec.finish(status)
        grant.settle(rec.prompt_tokens + rec.completion_tokens)
        aclose = getattr(body, "aclose", None)
        if aclose is not None:
            await aclose()
