"""The served-windows log: which watermarked (window, token) tuples a server served to each key.

`seed serve --watermark-served-dir DIR` (with `--watermark-key-file`) appends, for every
watermarked request, the distinct (window, token) tuples of its replies, windows inside the reply
(`detect.distinct_pairs`' tuples of the sampled token ids: the tuples `seed watermark
radioactivity --endpoint` reads in a suspect's answers; the prompt's tail is the chat template,
the same for every request), to `DIR/<label>.bin`, the label of the request's API key
(keys.toml's table name, "key-N" for a plain key, "anonymous" on a server without keys). The
radioactivity test can then keep only a suspect's tuples that were served to one key
(`--served-to LABEL`): evidence about what that key's owner trained on.

Each tuple is stored as 8 bytes of BLAKE2b keyed with a key derived from the watermark key under
its own label: without the watermark key the file says nothing about the text (a guessed tuple
cannot be checked), and it never holds the key, a hash of it, or a token id. A file is a 24-byte
header (magic, the window width, a keyed check that says which key wrote it without naming it)
and then whole 8-byte digests, appended with one `write` per request. A write torn by a crash
leaves a partial digest at the end: a reader ignores it, and the writer cuts it off when it
opens the file again, so later digests stay aligned. One server writes a directory at a time.

The engine process writes (`ServedLog`, where the key and the sampled ids already are; the API
process sends the label with each submit); `served_digests` and `keep_served` read. A request's
tuples are written before its last event is sent, so a client that has its reply finds it here.
This module knows nothing about sampling, HTTP or the statistics.
"""

from __future__ import annotations

import hashlib
import logging
import os
import struct
import threading
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from seed.errors import UserError
from seed.protect.detect import distinct_pairs
from seed.protect.watermark import read_key

if TYPE_CHECKING:
    from seed.recipe import ServeConfig

log = logging.getLogger(__name__)

ANONYMOUS = "anonymous"  # the label of requests to a server without keys
MAGIC = b"SEEDSRV1"
HEADER_BYTES = 24  # magic, the window width (u64), the key check
DIGEST_BYTES = 8
_KEY_LABEL = b"seed served windows v1\0"
_CHECK_LABEL = b"seed served header\0"


def digest_key(key: bytes) -> bytes:
    """The BLAKE2b key the digests are made with: derived from the watermark key, one-way."""
    return hashlib.sha256(_KEY_LABEL + key).digest()


def tuple_digests(dkey: bytes, tuples: Iterable[tuple[int, ...]]) -> bytes:
    """Each tuple's 8-byte keyed digest, concatenated in order."""
    base = hashlib.blake2b(digest_size=DIGEST_BYTES, key=dkey)
    out = []
    for t in tuples:
        h = base.copy()
        h.update(struct.pack(f"<{len(t)}I", *t))
        out.append(h.digest())
    return b"".join(out)


def header(dkey: bytes, context: int) -> bytes:
    check = hashlib.blake2b(_CHECK_LABEL, digest_size=DIGEST_BYTES, key=dkey).digest()
    return MAGIC + struct.pack("<Q", context) + check


def label_file(directory: Path, label: str) -> Path:
    """Where `label`'s tuples are (labels are file-name safe: letters, digits and `_.@-`)."""
    return Path(directory) / f"{label}.bin"


def header_problem(found: bytes, dkey: bytes, context: int) -> str | None:
    """Why a file's header does not fit this key and window width (None: it fits)."""
    if len(found) < HEADER_BYTES or found[:len(MAGIC)] != MAGIC:
        return "is not a served-windows file"
    (width,) = struct.unpack("<Q", found[len(MAGIC):16])
    if width != context:
        return f"was written at window width {width}, not {context}"
    if found[16:HEADER_BYTES] != header(dkey, context)[16:]:
        return "was written under another watermark key"
    return None


class ServedLog:
    """The writer: one append-only file per key label in `directory`."""

    def __init__(self, directory: Path, key: bytes, context: int):
        self.directory = Path(directory)
        self.context = context
        self._dkey = digest_key(key)
        self._files: dict[str, int] = {}
        self._lock = threading.Lock()  # the engine thread writes; a cancel, the main thread
        self._warned = False

    def record(self, label: str, replies: list[list[int]]) -> None:
        """Append the distinct tuples of one request's replies (sampled token ids) to `label`'s
        file; a failed write is logged (once) and the server goes on."""
        data = tuple_digests(self._dkey, distinct_pairs(replies, self.context))
        if not data:
            return
        with self._lock:
            try:
                fd = self._files.get(label)
                if fd is None:
                    fd = self._files[label] = self._open(label_file(self.directory, label))
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
            except (OSError, UserError) as e:
                fd = self._files.pop(label, None)  # reopened, a torn tail cut, next time
                if fd is not None:
                    os.close(fd)
                if not self._warned:
                    self._warned = True
                    log.warning("serve.watermark_served_dir: cannot append to %s's file (%s); "
                                "its served windows are not recorded", label, e)

    def _open(self, path: Path) -> int:
        """The file opened for appending: a new one gets its header; a torn tail is cut off."""
        fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_BYTES:  # new, or torn before its header was whole
                os.ftruncate(fd, 0)
                os.write(fd, header(self._dkey, self.context))
                return fd
            problem = header_problem(os.pread(fd, HEADER_BYTES, 0), self._dkey, self.context)
            if problem is not None:
                raise UserError(f"{path} {problem}")
            whole = HEADER_BYTES + (size - HEADER_BYTES) // DIGEST_BYTES * DIGEST_BYTES
            if whole != size:
                os.ftruncate(fd, whole)
            return fd
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        with self._lock:
            for fd in self._files.values():
                os.close(fd)
            self._files.clear()


def check_served_dir(config: ServeConfig) -> None:
    """Refuse, before anything loads, a served-windows directory `seed serve` cannot use: without
    a watermark, not a writable directory, or holding files another key or width wrote."""
    directory = config.watermark_served_dir
    if directory is None:
        return
    flag = "serve.watermark_served_dir (--watermark-served-dir)"
    if config.watermark_key_file is None:
        raise UserError(f"{flag}: records the windows of watermarked replies; give "
                        "--watermark-key-file too, or drop it")
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{flag} {directory}: cannot be made a directory ({e.strerror or e}); "
                        "give a writable directory") from None
    if not os.access(directory, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {directory}: is not writable; give a writable directory")
    dkey = digest_key(read_key(config.watermark_key_file))
    for path in sorted(directory.glob("*.bin")):
        with path.open("rb") as f:
            found = f.read(HEADER_BYTES)
        if len(found) < HEADER_BYTES:  # torn before its header was whole: the writer redoes it
            continue
        problem = header_problem(found, dkey, config.watermark_context)
        if problem is not None:
            raise UserError(f"{flag}: {path} {problem}; give a directory of this key's files "
                            "(a new key or width needs a new directory)")


def served_digests(directory: Path, label: str, key: bytes, context: int) -> np.ndarray:
    """The distinct digests served to `label` (sorted uint64); a torn last digest is ignored.
    A label without a file, or a file another key or width wrote, is a UserError."""
    path = label_file(directory, label)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"--served-to {label}: no served-windows file for this label in "
                        f"--served-dir {directory} (no {path.name}); give a key label the "
                        "server watermarked replies for, and the server's "
                        "serve.watermark_served_dir") from None
    except OSError as e:
        raise UserError(f"--served-dir {directory}: {path.name} cannot be read "
                        f"({e.strerror or e})") from None
    problem = header_problem(data[:HEADER_BYTES], digest_key(key), context)
    if problem is not None:
        raise UserError(f"--served-dir {directory}: {path.name} {problem}; give the server's "
                        "watermark key (--key-file) and window width (--context)")
    whole = (len(data) - HEADER_BYTES) // DIGEST_BYTES * DIGEST_BYTES
    body = np.frombuffer(data, dtype="<u8", count=whole // DIGEST_BYTES, offset=HEADER_BYTES)
    return np.unique(body)


def keep_served(tuples: list[tuple[int, ...]], served: np.ndarray,
                key: bytes) -> list[tuple[int, ...]]:
    """The tuples whose digest is among `served` (`served_digests`), in their order."""
    if not tuples:
        return []
    mine = np.frombuffer(tuple_digests(digest_key(key), tuples), dtype="<u8")
    hit = np.isin(mine, served)
    return [t for t, h in zip(tuples, hit.tolist(), strict=True) if h]
