"""API keys: read from a flag, the environment or a file, checked in constant time.

A keys file holds one key per line (blank lines and `#` comments ignored). Keys are never logged:
the usage log names a key by its position ("key-2"), not its value.
"""

from __future__ import annotations

import hmac
from pathlib import Path

from seed.errors import UserError


def load_keys(api_key: str | None, keys_file: Path | None) -> list[str]:
    """All accepted keys; an empty list means the server is open."""
    keys = [api_key] if api_key else []
    if keys_file is not None:
        if not keys_file.is_file():
            raise UserError(f"{keys_file}: no such keys file; give one key per line")
        lines = keys_file.read_text(encoding="utf-8").splitlines()
        keys += [k.strip() for k in lines if k.strip() and not k.strip().startswith("#")]
        if not keys:
            raise UserError(f"{keys_file}: the keys file holds no key; give one key per line")
    return keys


def match_key(keys: list[str], authorization: str | None) -> str | None:
    """The label of the key in an `Authorization: Bearer ...` header, or None if it matches none.

    Every key is compared (in constant time each), so timing says nothing about which one is close.
    """
    if not authorization or not authorization.startswith("Bearer "):
        return None
    given = authorization[len("Bearer "):].strip().encode()
    found = None
    for i, key in enumerate(keys):
        if hmac.compare_digest(given, key.encode()):
            found = f"key-{i + 1}"
    return found
