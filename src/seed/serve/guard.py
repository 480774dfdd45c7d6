"""The server's edge: what every HTTP request must pass before the app reads a byte of its body.

A pure ASGI middleware around the app's routes (its first middleware), deciding in this order:

1. **Host**: a server bound to a loopback address answers only `Host: localhost`, `127.0.0.1` or
   `[::1]` (any port) and the names in `serve.allowed_hosts`; any other name is a 400. A web page
   on `evil.example` whose DNS name is rebound to 127.0.0.1 sends `Host: evil.example`, so it
   cannot read a keyless local server.
2. **Key**: when keys are set, every path but the open ones (`/health`, the chat page `/`, the
   OpenAPI docs, and URL-mode images under `/v1/images/files/`, whose unguessable ids are their
   capability) needs `Authorization: Bearer KEY` (the scheme in any case): `/v1/*` and
   `/metrics` included, unknown paths too. A miss, or a key past its policy's `expires`, is a 401
   sent from the headers alone; the key's label and policy are left in the scope for the app
   (`policy.py` holds the keys, their policies and the checks made once the body is read).
3. **Body size**: a body over `serve.max_body_bytes` is a 413, at once when Content-Length says
   so, else as soon as the bytes read pass the limit (chunked bodies); the app never holds more.

Every refusal is in OpenAI's error shape, closes the connection (after reading and dropping a
few MB of what is left of the body, so a client still sending it can read the answer) and is
reported through `on_refused` (the app counts it in /metrics and the usage log,
with the key's label or None). Why 8 MiB by default: a million-token prompt of English text is
about 4 MB, and 128k tokens of CJK text JSON-escaped as \\uXXXX about 0.8 MB, so every prompt a
model can take fits; four bodies read at once stay under ~70 MB. This module knows nothing about
routes beyond the open paths, and nothing about generation.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from seed.serve.errors import APIError, invalid_host, request_too_large, unauthorized
from seed.serve.policy import POLICY_SCOPE, KeyPolicies, KeyPolicy

OPEN_PATHS = frozenset({"/", "/health", "/openapi.json", "/docs", "/docs/oauth2-redirect",
                        "/redoc"})
# URL-mode images (seed.serve.image_urls): fetched without a key, like OpenAI's signed URLs; the
# unguessable id, which lives an hour, is the capability.
OPEN_PREFIXES = ("/v1/images/files/",)
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")
KEY_SCOPE = "seed.key"  # where the matched key's label ("key-2") is left for the app
DRAIN_BYTES = 4 * 1024 * 1024  # of a refused body, read and dropped so the client sees why
DRAIN_S = 0.25

Refused = Callable[[str, int, str | None], None]  # path, status, key label


def key_label(scope: Scope) -> str | None:
    """The label of the key a request was let in with, or None on a keyless server."""
    return scope.get(KEY_SCOPE)


def key_policy(scope: Scope) -> KeyPolicy | None:
    """The policy of the key a request was let in with, or None (no keys.toml entry)."""
    return scope.get(POLICY_SCOPE)


def is_loopback(host: str) -> bool:
    """Whether a bind address only takes connections from this machine."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def host_name(header: str) -> str:
    """The name in a Host header, without its port: `[::1]:8000` -> `[::1]`."""
    header = header.strip().lower()
    if header.startswith("["):
        return header.split("]", 1)[0] + "]"
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


@dataclass
class Guard:
    """Refuses, before the app reads a body byte, what the module docstring lists.

    `hosts` is None to skip the Host check (a public bind without `allowed_hosts`).
    """

    app: ASGIApp
    keys: KeyPolicies
    max_body_bytes: int
    hosts: frozenset[str] | None = None
    on_refused: Refused = field(default=lambda path, status, key: None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        path = scope["path"]
        if self.hosts is not None and host_name(headers.get("host", "")) not in self.hosts:
            await self._refuse(scope, receive, send, invalid_host(), None)
            return
        label = None
        if self.keys and path not in OPEN_PATHS and not path.startswith(OPEN_PREFIXES):
            label = self.keys.match(headers.get("authorization"))
            if label is None:
                await self._refuse(scope, receive, send, unauthorized(), None)
                return
            if expired := self.keys.expired(label):
                await self._refuse(scope, receive, send, expired, label)
                return
            scope[KEY_SCOPE] = label
            scope[POLICY_SCOPE] = self.keys.policy(label)
        length = headers.get("content-length", "")
        if length.isdigit() and int(length) > self.max_body_bytes:
            await self._refuse(scope, receive, send, request_too_large(self.max_body_bytes),
                               label)
            return
        await self._bounded(scope, receive, send, label)

    async def _bounded(self, scope: Scope, receive: Receive, send: Send,
                       label: str | None) -> None:
        """Run the app, counting the body bytes it reads; past the limit it reads no more and
        what it answers is replaced by the 413."""
        received = 0
        over = False
        started = False

        async def counted() -> Message:
            nonlocal received, over
            if over:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body_bytes:
                    over = True
                    raise BodyTooLarge
            return message

        async def sending(message: Message) -> None:
            nonlocal started
            if over and not started:
                return  # the app's answer to a body it could not finish reading
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, sending)
        except BodyTooLarge:
            pass
        except Exception:
            if not over:
                raise
        if over and not started:
            await self._refuse(scope, receive, send, request_too_large(self.max_body_bytes),
                               label)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, error: APIError,
                      label: str | None) -> None:
        self.on_refused(scope["path"], error.status, label)
        await _drain(scope, receive)
        response = error.response()
        response.headers["Connection"] = "close"
        await response(scope, _no_body, send)


class BodyTooLarge(Exception):
    """Raised into the app when the body it reads passes the limit."""


async def _drain(scope: Scope, receive: Receive) -> None:
    """Read and drop what is left of a refused request's body, at most DRAIN_BYTES for at most
    DRAIN_S seconds.

    A connection closed with unread bytes is reset, and a client still sending its body then
    loses the answer: draining a modest body lets that client read why it was refused; a larger
    one is cut off (reset) once the budget is spent. A client that waits for `100 Continue` has
    sent nothing and is not asked to.
    """
    names = {k.lower() for k, _ in scope["headers"]}
    if b"expect" in names or not names & {b"content-length", b"transfer-encoding"}:
        return
    dropped = 0
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(DRAIN_S):
            while dropped < DRAIN_BYTES:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body"):
                    return
                dropped += len(message.get("body", b""))


async def _no_body() -> Message:
    return {"type": "http.disconnect"}


def allowed_hosts(bind: str, extra: Iterable[str]) -> frozenset[str] | None:
    """The Host names a server bound to `bind` answers to; None where any name is fine."""
    extra = [h.lower() for h in extra]
    if not is_loopback(bind) and not extra:
        return None
    return frozenset([*LOOPBACK_NAMES, *extra])
