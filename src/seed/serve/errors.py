"""Errors the API answers with, in OpenAI's shape:
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

from starlette.responses import JSONResponse

from seed.serve.openai_format import error_body


class APIError(Exception):
    """An error response: HTTP status, one-sentence message, and OpenAI's type/param/code."""

    def __init__(self, status: int, message: str, *, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = (
            status, message, type_, param, code)
        self.headers = headers

    def response(self) -> JSONResponse:
        return JSONResponse(error_body(self.message, self.type, self.param, self.code),
                            status_code=self.status, headers=self.headers)


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param=param)


def model_not_found(model: str) -> APIError:
    return APIError(404, f"The model `{model}` does not exist; GET /v1/models lists the served "
                    "one.",
                    param="model", code="model_not_found")


def unauthorized() -> APIError:
    return APIError(401, "Missing or incorrect API key; send it as `Authorization: Bearer KEY`.",
                    code="invalid_api_key")


def overloaded(retry_after: int = 1) -> APIError:
    return APIError(429, "The server is at capacity (its queue is full); retry after a moment.",
                    type_="rate_limit_error", code="rate_limit_exceeded",
                    headers={"Retry-After": str(retry_after)})


def invalid_host() -> APIError:
    return APIError(400, "The Host header names a host this server does not answer to; use "
                    "localhost, or add the name to serve.allowed_hosts.", code="invalid_host")


def request_too_large(limit: int) -> APIError:
    return APIError(413, f"The request body is larger than this server's limit of {limit} bytes "
                    "(serve.max_body_bytes); send a smaller one.", code="request_too_large")


def upstream_failed(status: int, base: str, why: str, code: str) -> APIError:
    """The upstream could not give an answer (502, 504): `why` says what happened, in a clause."""
    return APIError(status, f"The upstream server at {base} {why}.", type_="server_error",
                    code=code)
