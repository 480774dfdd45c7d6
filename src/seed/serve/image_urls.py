"""URL mode of the Images API: finished images kept for a while and served by an unguessable id.

`response_format: "url"` answers with `GET /v1/images/files/<id>` URLs, as OpenAI's are fetched
without a key: the id (32 random bytes, URL-safe base64, from `secrets`) is the capability, and it
lives `serve.image_url_ttl` seconds (an hour by default), then its file is deleted. Files are kept
in a private temporary directory (mode 0700) made at start and removed, with whatever is left in
it, when the server stops. Expired files are swept whenever an image is stored or fetched (no
thread of its own). This module knows nothing about HTTP or about drawing.
"""

from __future__ import annotations

import contextlib
import secrets
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
FILES_ROUTE = "/v1/images/files/"


class ImageStore:
    """Images by id for `ttl` seconds; `clock` is time.monotonic unless a caller needs another."""

    def __init__(self, ttl: float, clock: Callable[[], float] | None = None) -> None:
        self.ttl = ttl
        self._clock = clock or time.monotonic
        self._dir: Path | None = None
        self._expiry: dict[str, float] = {}
        self._order: deque[tuple[float, str]] = deque()  # (expiry, id), oldest first
        self._lock = threading.Lock()

    def open(self) -> None:
        if self._dir is None:
            self._dir = Path(tempfile.mkdtemp(prefix="seed-images-"))

    def close(self) -> None:
        """Delete every kept image (the server stops)."""
        with self._lock:
            if self._dir is not None:
                shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
            self._expiry.clear()
            self._order.clear()

    def put(self, data: bytes, fmt: str) -> str:
        """Keep `data` (an encoded image of format `fmt`) and return its new id."""
        self.open()
        assert self._dir is not None
        image_id = f"img_{secrets.token_urlsafe(32)}.{fmt}"
        path = self._dir / image_id
        tmp = path.with_suffix(".part")
        tmp.write_bytes(data)
        tmp.replace(path)
        with self._lock:
            self._sweep()
            expiry = self._clock() + self.ttl
            self._expiry[image_id] = expiry
            self._order.append((expiry, image_id))
        return image_id

    def get(self, image_id: str) -> tuple[bytes, str] | None:
        """The image's bytes and content type, or None when the id is unknown or has expired."""
        with self._lock:
            self._sweep()
            if image_id not in self._expiry or self._dir is None:
                return None
            path = self._dir / image_id
        try:
            data = path.read_bytes()
        except OSError:
            return None
        return data, CONTENT_TYPES[image_id.rsplit(".", 1)[1]]

    def __len__(self) -> int:
        with self._lock:
            self._sweep()
            return len(self._expiry)

    def _sweep(self) -> None:
        """Forget and delete every image past its time (the lock is held)."""
        now = self._clock()
        while self._order and self._order[0][0] <= now:
            _, image_id = self._order.popleft()
            self._expiry.pop(image_id, None)
            if self._dir is not None:
                with contextlib.suppress(OSError):
                    (self._dir / image_id).unlink()
