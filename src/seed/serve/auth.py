"""API keys: read from a flag, the environment or a file, checked in constant time.

A keys file holds one key per line (blank lines and `#` comments ignored). A key is printable
ASCII without spaces (what an `Authorization` header can carry); anything else, an empty key or
file, or a file that is not UTF-8 is refused at start, naming the file and line but never the key.
A keys file other users can read is warned about. Keys are never logged: the usage log names a key
by its position ("key-2"), not its value.

A request's key is matched by its SHA-256 (`key_digest`): the keys above are hashed once at start,
and a `keys.toml` (seed.serve.policy, per-key limits) stores only the hashes, so both kinds of
file are matched the same way and the server holds no key after it starts.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import TextIO

from seed.errors import UserError

log = logging.getLogger(__name__)

_KEY = re.compile(r"[\x21-\x7e]+")  # printable ASCII, no space


def load_keys(api_key: str | None, keys_file: Path | None,
              environ: dict[str, str] | None = None) -> list[str]:
    """All accepted keys; an empty list means the server is open.

    An `SEED_API_KEY` that is set but empty is refused too (the command line drops it as unset):
    a server started to need a key never runs open by a blank variable.
    """
    env = os.environ if environ is None else environ
    if api_key is None and "SEED_API_KEY" in env:
        api_key = env["SEED_API_KEY"]
    keys = []
    if api_key is not None:
        if not api_key.strip():
            raise UserError("--api-key (SEED_API_KEY) is empty; give a key, or leave both unset "
                            "to serve without keys")
        if not _KEY.fullmatch(api_key):
            raise UserError("--api-key (SEED_API_KEY) holds a space or a non-ASCII character; "
                            "a key is printable ASCII without spaces")
        keys.append(api_key)
    if keys_file is not None:
        keys += read_keys_file(keys_file)
    return keys


def read_keys_file(path: Path) -> list[str]:
    """The keys in `path`, one per line; a line that cannot be a key is refused by its number."""
    if not path.is_file():
        raise UserError(f"{path}: no such keys file; give one key per line")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read the keys file ({e.strerror}); check its "
                        "permissions") from None
    if raw.startswith(b"\xef\xbb\xbf"):
        raise UserError(f"{path}: line 1 starts with a byte-order mark; save the keys file as "
                        "UTF-8 without one")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = raw[:e.start].count(b"\n") + 1
        raise UserError(f"{path}: line {bad} is not UTF-8; a key is printable ASCII") from None
    keys = []
    for number, line in enumerate(text.splitlines(), 1):
        key = line.strip()
        if not key or key.startswith("#"):
            continue
        if not _KEY.fullmatch(key):
            raise UserError(f"{path}: line {number} holds a space or a non-ASCII character; "
                            "give one key per line, printable ASCII without spaces")
        keys.append(key)
    if not keys:
        raise UserError(f"{path}: the keys file holds no key; give one key per line")
    mode = path.stat().st_mode
    if mode & 0o004:
        log.warning("%s: the keys file is readable by every user (mode %o); chmod 600 it",
                    path, mode & 0o777)
    return keys


def key_digest(key: str) -> str:
    """The SHA-256 of a key as lowercase hex: what a keys.toml stores (`printf %s KEY | sha256sum`
    prints the same)."""
    return hashlib.sha256(key.encode("latin-1", "replace")).hexdigest()


def plain_digests(keys: list[str]) -> dict[str, str]:
    """Label ("key-1", "key-2", ... in the order given) -> digest, for keys given as themselves."""
    return {f"key-{i + 1}": key_digest(key) for i, key in enumerate(keys)}


def match_digest(digests: Mapping[str, str], authorization: str | None) -> str | None:
    """The label whose digest is the SHA-256 of the key in an `Authorization: Bearer ...` header
    (the scheme in any case), or None if it matches none.

    Every digest is compared (in constant time each), so timing says nothing about which one is
    close.
    """
    scheme, _, given = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return None
    token = key_digest(given.strip()).encode()
    found = None
    for label, digest in digests.items():
        if hmac.compare_digest(token, digest.encode()):
            found = label
    return found


def hash_from_input(stream: TextIO) -> str:
    """`seed keys hash`: the digest of the key on `stream` (its first line), or typed at a prompt
    that does not echo it when `stream` is a terminal; a key that cannot be one is refused without
    repeating it."""
    if stream.isatty():
        import getpass

        key = getpass.getpass("key (not echoed): ")
    else:
        key = stream.readline().rstrip("\r\n")
    if not _KEY.fullmatch(key):
        raise UserError("the key read from stdin is empty or holds a space or a non-ASCII "
                        "character; a key is printable ASCII without spaces")
    return key_digest(key)
