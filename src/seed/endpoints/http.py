"""What the HTTP endpoint kinds share (openai, anthropic, images and their batch APIs).

- `transport_errors`: httpx's failures to send or receive as the one `TransientError` callers retry;
- `server_message`: the message of an error body (OpenAI's and Anthropic's both nest it under
  `error`), on one line;
- `retry_after`: the server's requested wait (`retry-after-ms`, else `retry-after` in seconds);
- `check_reachable`: one cheap GET that fails fast, in one line, when nothing answers;
- `check_base_url`: a recipe's base URL is an http(s) URL with a host (and a numeric port).

This module builds no request and reads no answer; each kind's module does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from urllib.parse import urlparse

import httpx

from seed.endpoints.base import TransientError
from seed.errors import UserError


@contextmanager
def transport_errors(base_url: str, what: str = "") -> Iterator[None]:
    """Inside the block, a timeout, a refused connection or one dropped mid-answer is a
    `TransientError` (its reason prefixed with `what: ` when given)."""
    prefix = f"{what}: " if what else ""
    try:
        yield
    except httpx.TimeoutException:
        raise TransientError(f"{prefix}timeout") from None
    except httpx.ConnectError as e:
        raise TransientError(f"{prefix}cannot connect to {base_url} ({e})") from None
    except httpx.RequestError as e:  # dropped, reset, garbled or badly encoded mid-answer
        raise TransientError(f"{prefix}connection dropped ({type(e).__name__})") from None


def server_message(resp: httpx.Response) -> str:
    """The server's own words about a failed request, on one line, at most 300 characters."""
    try:
        body = resp.json()
        err = body.get("error", body) if isinstance(body, dict) else body
        text = str(err.get("message", err) if isinstance(err, dict) else err)
    except (json.JSONDecodeError, ValueError):
        text = resp.text or resp.reason_phrase
    return " ".join(text.split())[:300]


def retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asks to wait before the next try, or None when it names none."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        if value := headers.get(name):
            try:
                return float(value) / scale
            except ValueError:
                continue
    return None


async def check_reachable(client: httpx.AsyncClient, url: str, role: str, base_url: str,
                          what: str) -> None:
    """GET `url`; a `UserError` naming `{what}.base_url` when nothing answers there. Any answer,
    even an error status, counts as reachable: the real request will tell more."""
    try:
        await client.get(url, timeout=10.0)
    except (httpx.ConnectError, httpx.ConnectTimeout) as e:
        raise UserError(f"cannot reach the {role} at {base_url} ({e}); check "
                        f"{what}.base_url and that the server is up") from None
    except httpx.HTTPError:
        return


def check_base_url(base_url: str, what: str, example: str) -> None:
    """A `UserError` naming `{what}.base_url` unless it is an http(s) URL with a host; a port
    that is not a number, or an unclosed [IPv6 address, fails here rather than mid-run."""
    try:
        parsed = urlparse(base_url)
        parsed.port  # noqa: B018  # raises ValueError for a bad port
    except ValueError:
        parsed = urlparse("")
    if parsed.scheme not in ("http", "https") or not parsed.hostname:
        raise UserError(f"{what}.base_url = {base_url!r} is not an http(s) URL; "
                        f"give one like {example}")
