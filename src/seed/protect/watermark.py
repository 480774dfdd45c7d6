"""The keyed green list of Kirchenbauer et al. (2023): which tokens a watermarked server favours.

After the last `context` tokens (the window), a keyed hash marks a `gamma` fraction of the
vocabulary green; the server adds `delta` to the green tokens' logits (`engine.py`), and a
detector (`detect.py`) counts how many tokens of a text are green after their own window: far more
than `gamma` means the text came from the watermarked server.

The hash is integer arithmetic mod 2^64 (splitmix64's finalizer), the same on every device and in
pure Python: a window's state is the key's window seed mixed with each window token in turn; a
token's hash is the key's token seed mixed with its id; the pair is green when the top 24 bits of
(state XOR token hash) times the key's odd multiplier fall under gamma * 2^24. So one
(window, token) pair is tested without building the vocabulary's list (`pair_is_green`, the
detector's case), and a batch of windows gets its green masks in a few vectorised integer ops over
a token-hash table computed once per vocabulary and device (`GreenList.mask`); the server's
rows are also kept per window (`GreenList.masks`), since its windows recur.

The key is raw bytes read from a file (`read_key`); it is never logged nor written anywhere: only
its id (`key_id`, 12 hex digits of its SHA-256) is shown. The seeds are derived from the key under
a separate label, so the public id tells nothing about them. This module knows nothing about
sampling, HTTP or texts.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from seed.errors import UserError

if TYPE_CHECKING:
    from seed.recipe import ServeConfig

MASK64 = (1 << 64) - 1
SCORE_BITS = 24  # a pair's score: the top 24 bits of its hash
MASK_CACHE_BYTES = 64 << 20  # green rows a GreenList keeps per vocabulary (one byte a token)
_MIX1, _MIX2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB  # splitmix64's finalizer constants
_SEED_LABEL = b"seed watermark v1\0"


def read_key(path: Path, flag: str = "--watermark-key-file") -> bytes:
    """The key's raw bytes; a one-line UserError (naming `flag`, never the content) when the file
    is missing, unreadable or empty."""
    try:
        key = Path(path).read_bytes()
    except FileNotFoundError:
        raise UserError(f"{flag} {path}: no such file; give the file that holds the watermark "
                        "key") from None
    except OSError as e:
        raise UserError(f"{flag} {path}: cannot be read ({e.strerror or e}); give a readable "
                        "file that holds the watermark key") from None
    if not key:
        raise UserError(f"{flag} {path}: the file is empty; write the key's bytes into it (for "
                        "example 32 random bytes: head -c 32 /dev/urandom > KEY)")
    return key


def key_id(key: bytes) -> str:
    """The key's public name: the first 12 hex digits of its SHA-256."""
    return hashlib.sha256(key).hexdigest()[:12]


def mix64(x: int) -> int:
    """splitmix64's finalizer on a Python int (mod 2^64): the reference the tensors follow."""
    x &= MASK64
    x = ((x ^ (x >> 30)) * _MIX1) & MASK64
    x = ((x ^ (x >> 27)) * _MIX2) & MASK64
    return x ^ (x >> 31)


@dataclass(frozen=True)
class WatermarkKey:
    """The three 64-bit numbers the green list is computed from (derived from the key's bytes)."""

    key_id: str
    window_seed: int = field(repr=False)
    token_seed: int = field(repr=False)
    multiplier: int = field(repr=False)  # odd

    @classmethod
    def from_bytes(cls, key: bytes) -> WatermarkKey:
        digest = hashlib.sha256(_SEED_LABEL + key).digest()
        words = [int.from_bytes(digest[i:i + 8], "little") for i in (0, 8, 16)]
        return cls(key_id(key), words[0], words[1], words[2] | 1)


def window_state(key: WatermarkKey, window: list[int] | tuple[int, ...]) -> int:
    """A window's state: the window seed mixed with each of its tokens, oldest first."""
    state = key.window_seed
    for token in window:
        state = mix64(state ^ token)
    return state


def pair_score(key: WatermarkKey, window: list[int] | tuple[int, ...], token: int) -> int:
    """The pair's score in [0, 2^24): uniform over pairs, and fixed by the key."""
    x = ((window_state(key, window) ^ mix64(key.token_seed ^ token)) * key.multiplier) & MASK64
    return x >> (64 - SCORE_BITS)


def green_threshold(gamma: float) -> int:
    """Scores under this are green: gamma of the 2^24 scores."""
    if not 0.0 < gamma < 1.0:
        raise ValueError(f"gamma must be between 0 and 1 (got {gamma})")
    return max(1, min((1 << SCORE_BITS) - 1, round(gamma * (1 << SCORE_BITS))))


def pair_is_green(key: WatermarkKey, window: list[int] | tuple[int, ...], token: int,
                  gamma: float) -> bool:
    """Whether `token` is green after `window` (pure Python: one pair, no vocabulary list)."""
    return pair_score(key, window, token) < green_threshold(gamma)


# -- the same hash on tensors (int64 wraps mod 2^64 as the Python ints are masked) -------------


def _signed(u: int) -> int:
    """A 64-bit unsigned constant as the int64 with the same bits."""
    return u - (1 << 64) if u >= 1 << 63 else u


def _shr(x: torch.Tensor, k: int) -> torch.Tensor:
    """Logical right shift of int64 bits (torch's `>>` keeps the sign)."""
    return (x >> k) & ((1 << (64 - k)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    x = (x ^ _shr(x, 30)) * _signed(_MIX1)
    x = (x ^ _shr(x, 27)) * _signed(_MIX2)
    return x ^ _shr(x, 31)


class GreenList:
    """The green list of one key at one gamma and window width, on tensors."""

    def __init__(self, key: WatermarkKey, gamma: float, context: int):
        if context < 1:
            raise ValueError(f"the watermark's context must be at least 1 token (got {context})")
        self.key = key
        self.gamma = gamma
        self.context = context
        self.threshold = green_threshold(gamma)
        self._tables: dict[tuple[int, str], torch.Tensor] = {}
        self._rows: dict[tuple[int, str], OrderedDict[tuple[int, ...], torch.Tensor]] = {}

    def states(self, windows: torch.Tensor) -> torch.Tensor:
        """Each row's window state (int64, shape [N]) from windows of shape [N, context]."""
        state = torch.full(windows.shape[:1], _signed(self.key.window_seed), dtype=torch.int64,
                           device=windows.device)
        for j in range(windows.shape[1]):
            state = _mix(state ^ windows[:, j].long())
        return state

    def token_hashes(self, tokens: torch.Tensor) -> torch.Tensor:
        return _mix(tokens.long() ^ _signed(self.key.token_seed))

    def _green(self, states: torch.Tensor, hashes: torch.Tensor) -> torch.Tensor:
        # score < threshold is the product's bits, unsigned, under threshold << 40; with the sign
        # bit flipped (xor 2^63) an unsigned comparison is int64's own: 4 ops over [N, vocab]
        x = torch.bitwise_xor(states, hashes)
        x.mul_(_signed(self.key.multiplier))
        x.bitwise_xor_(-(1 << 63))
        return x < (self.threshold << (64 - SCORE_BITS)) - (1 << 63)

    def pairs(self, windows: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Whether each token is green after its window (bool, shape [N]): the detector's test."""
        return self._green(self.states(windows), self.token_hashes(tokens))

    def mask(self, windows: torch.Tensor, vocab_size: int) -> torch.Tensor:
        """The green tokens after each window (bool, shape [N, vocab_size]): the server's bias."""
        where = (vocab_size, str(windows.device))
        table = self._tables.get(where)
        if table is None:
            table = self._tables[where] = self.token_hashes(
                torch.arange(vocab_size, device=windows.device))
        return self._green(self.states(windows)[:, None], table[None, :])

    def masks(self, windows: list[tuple[int, ...]], vocab_size: int,
              device: torch.device | str = "cpu") -> torch.Tensor:
        """`mask` of these windows, each window's row computed once and kept (least recently
        used first out, within `MASK_CACHE_BYTES`): a server's windows recur (a window of one
        token is one of the vocabulary), and a decode step's few tiny integer ops cost more than
        the model's step on a small model."""
        cache = self._rows.setdefault((vocab_size, str(device)), OrderedDict())
        missing = []
        for w in dict.fromkeys(windows):
            if w in cache:
                cache.move_to_end(w)
            else:
                missing.append(w)
        if missing:  # rows copied out of their batch, so an old row holds no batch's storage
            fresh = self.mask(torch.tensor(missing, dtype=torch.int64, device=device), vocab_size)
            cache.update((w, row.clone()) for w, row in zip(missing, fresh, strict=True))
            for _ in range(len(cache) - max(len(missing), MASK_CACHE_BYTES // vocab_size)):
                cache.popitem(last=False)  # this call's windows are the newest: never these
        return torch.stack([cache[w] for w in windows])


@dataclass(frozen=True)
class Watermark:
    """What a watermarking server adds: `delta` on the green list of `key` at `gamma`, after
    windows of `context` tokens."""

    green: GreenList
    delta: float

    @classmethod
    def from_key(cls, key: bytes, *, gamma: float, delta: float, context: int) -> Watermark:
        return cls(GreenList(WatermarkKey.from_bytes(key), gamma, context), delta)


def check_watermark_key(config: ServeConfig) -> str | None:
    """The id of the key `seed serve` watermarks with (None: it does not), checked before anything
    loads: a key file that cannot be used, or a watermark asked of an upstream, is one line."""
    if config.watermark_key_file is None:
        return None
    if config.upstream is not None:
        raise UserError("--watermark-key-file: an upstream server cannot be watermarked by Seed "
                        "(it samples the tokens); start the upstream with its own watermark (vLLM: "
                        "--watermark-config) and drop --watermark-key-file")
    return key_id(read_key(config.watermark_key_file))
