"""Per-key policy: what each API key of a `keys.toml` may ask for, and how much.

A keys file whose name ends in `.toml` holds one table per key, named by its label (the name the
usage log and /metrics use), with the key's SHA-256 and never the key itself:

    [keys.alice]
    sha256 = "<printf %s KEY | sha256sum>"   # or `seed keys hash`
    rpm = 60                 # requests per minute
    tpm = 20000              # tokens (prompt + completion) per minute
    tokens_per_day = 500000  # the same over the last 24 hours
    max_n = 1                # choices per request
    logprobs = false         # may it ask for logprobs at all
    max_top_logprobs = 0     # alternatives per token when it may
    max_tokens = 512         # completion tokens per choice; a request must then set max_tokens
    models = ["tiny"]        # the model names it may use (default: all)
    watermark = "required"   # or "optional": the key may send `watermarking: false`
    expires = 2027-01-01T00:00:00Z   # a TOML date or date-time; a time without offset is UTC

Every field but `sha256` is optional; an absent one sets no limit. A key given by --api-key or a
one-key-per-line file has no policy (as before). `KeyPolicies` is the live set the server uses:
the guard matches a request's key and refuses an expired one (401) before reading the body;
`admit` refuses, before the engine sees the request, a model the key may not use (403), a field the
policy forbids (400 naming it) and a request over a rate (429 with Retry-After).

Rates are sliding windows (a minute in 1 s bins, a day in 1 min bins) per key label. Tokens are
charged when a request is admitted as its completion budget (max_tokens x choices; 0 when it sets
no max_tokens) and corrected once it ends by what it used, prompt and completion tokens, from its
usage: a burst of requests that set no max_tokens can pass a tpm limit by what they then use (set
`max_tokens` in the policy to bound that). The file is read again on SIGHUP and when its mtime
changes (looked at at most once a second, on a request); a file that no longer loads keeps the
previous policy and logs one line. Rate windows live on across reloads. Nothing here logs, returns
or raises a key or its hash. This module knows nothing about generation or routes.
"""

from __future__ import annotations

import collections
import datetime as dt
import hmac
import logging
import math
import os
import re
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from starlette.types import Scope

from seed.errors import UserError
from seed.serve.auth import load_keys, match_digest, plain_digests
from seed.serve.errors import APIError, bad_request
from seed.serve.responses import ResponsesRequest
from seed.serve.schemas import ChatCompletionRequest, CompletionRequest

log = logging.getLogger(__name__)

POLICY_SCOPE = "seed.policy"  # where the guard leaves the request's KeyPolicy (None: no policy)
CHECK_EVERY_S = 1.0  # how often a request may look at the keys file's mtime
_LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")
_SHA256 = re.compile(r"[0-9a-f]{64}")
_STORE_HASH = ("store its SHA-256 instead: sha256 = \"...\" from `seed keys hash` (or "
               "`printf %s KEY | sha256sum`)")


class KeyPolicy(BaseModel):
    """One key's entry in a keys.toml (its label is the table's name)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)

    sha256: str
    rpm: int | None = Field(None, gt=0)
    tpm: int | None = Field(None, gt=0)
    tokens_per_day: int | None = Field(None, gt=0)
    max_n: int | None = Field(None, ge=1)
    logprobs: bool = True
    max_top_logprobs: int | None = Field(None, ge=0)
    max_tokens: int | None = Field(None, ge=1)
    models: list[str] | None = None
    watermark: Literal["required", "optional"] = "required"
    expires: dt.datetime | None = None

    @field_validator("sha256")
    @classmethod
    def _hex_digest(cls, value: str) -> str:
        if not _SHA256.fullmatch(value.strip().lower()):
            raise ValueError("is not a SHA-256 in hex (64 characters 0-9, a-f); " + _STORE_HASH)
        return value.strip().lower()

    @field_validator("expires", mode="before")
    @classmethod
    def _utc(cls, value: Any) -> Any:
        if isinstance(value, dt.date) and not isinstance(value, dt.datetime):
            value = dt.datetime(value.year, value.month, value.day)
        if isinstance(value, dt.datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=dt.UTC)
        return value


def read_policy_file(path: Path) -> dict[str, KeyPolicy]:
    """Label -> policy from a keys.toml; anything wrong is one line naming the file and the entry,
    never a key or a hash."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: no such keys file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read the keys file ({e.strerror}); check its "
                        "permissions") from None
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e}); fix the syntax") from None
    unknown = sorted(set(data) - {"keys"})
    if unknown:
        raise UserError(f"{path}: {', '.join(unknown)}: unknown key; a keys.toml holds "
                        "[keys.LABEL] tables only")
    tables = data.get("keys")
    if not isinstance(tables, dict) or not tables:
        raise UserError(f"{path}: the keys file holds no key; add a [keys.LABEL] table with "
                        "sha256 = \"...\"")
    policies: dict[str, KeyPolicy] = {}
    problems = []
    for label, table in tables.items():
        wrong = _entry_problems(label, table)
        if not wrong:
            try:
                policies[label] = KeyPolicy.model_validate(table)
            except ValidationError as e:
                wrong = [_describe(label, err) for err in e.errors()]
        problems += wrong
    if problems:
        raise UserError(f"{path}: {'; '.join(problems)}")
    _refuse_shared_hashes(path, policies)
    return policies


def _entry_problems(label: str, table: Any) -> list[str]:
    if not _LABEL.fullmatch(label):
        return [f"keys.{label[:64]!r}: a label is 1-64 letters, digits, '_', '.', '@' or '-'"]
    if not isinstance(table, dict):
        return [f"keys.{label}: is not a table; write [keys.{label}] with sha256 = \"...\""]
    if "key" in table:
        return [f"keys.{label}.key: a keys.toml never holds a key itself; {_STORE_HASH}"]
    return []


def _describe(label: str, err: Mapping[str, Any]) -> str:
    where = ".".join(["keys", label, *(str(p) for p in err["loc"])])
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown key"
    if err["type"] == "missing":
        return f"{where}: missing key"
    msg = str(err["msg"]).removeprefix("Value error, ")  # pydantic's words, never the input
    return f"{where}: {msg[:1].lower()}{msg[1:]}"


def _refuse_shared_hashes(path: Path, policies: dict[str, KeyPolicy]) -> None:
    by_hash: dict[str, str] = {}
    for label, policy in policies.items():
        if policy.sha256 in by_hash:
            raise UserError(f"{path}: keys.{by_hash[policy.sha256]} and keys.{label} hold the "
                            "same sha256; give each key one entry")
        by_hash[policy.sha256] = label


def opt_out_allowed(scope: Scope) -> bool:
    """Whether the request's key may turn the watermark off (`watermarking: false`): only a key
    whose policy says `watermark = "optional"`; a keyless server, a key without a policy, never."""
    policy = scope.get(POLICY_SCOPE)
    return isinstance(policy, KeyPolicy) and policy.watermark == "optional"


@dataclass(frozen=True)
class Ask:
    """What a request asks for, in the terms a policy limits; `param` names each field as the
    request's own API spells it (for the 400)."""

    model: str
    choices: int
    logprobs: bool
    top_logprobs: int
    max_tokens: int | None
    params: Mapping[str, str]  # "n", "logprobs", "top_logprobs", "max_tokens" -> field name


def ask_of(req: Any) -> Ask | None:
    """A generation request's Ask; None for what no policy limits (tokenize, detokenize)."""
    if callable(getattr(req, "policy_ask", None)):  # an images request (seed.serve.images)
        ask: Ask = req.policy_ask()
        return ask
    if isinstance(req, ChatCompletionRequest):
        return Ask(req.model, req.n, req.logprobs or bool(req.top_logprobs),
                   req.top_logprobs or 0, req.max_completion_tokens or req.max_tokens, {
                       "n": "n", "logprobs": "logprobs", "top_logprobs": "top_logprobs",
                       "max_tokens": ("max_completion_tokens" if req.max_completion_tokens
                                      else "max_tokens")})
    if isinstance(req, CompletionRequest):
        prompts = len(req.prompt) if isinstance(req.prompt, list) and req.prompt and not \
            isinstance(req.prompt[0], int) else 1
        return Ask(req.model, req.n * prompts, req.logprobs is not None, req.logprobs or 0,
                   req.max_tokens, {"n": "n", "logprobs": "logprobs", "top_logprobs": "logprobs",
                                    "max_tokens": "max_tokens"})
    if isinstance(req, ResponsesRequest):
        extra = req.model_extra or {}
        top = extra.get("top_logprobs")
        top = top if isinstance(top, int) and not isinstance(top, bool) else 0
        include = extra.get("include")
        asked = top > 0 or (isinstance(include, list)
                            and "message.output_text.logprobs" in include)
        return Ask(req.model, 1, asked, top, req.max_output_tokens, {
            "n": "n", "logprobs": "top_logprobs" if top else "include",
            "top_logprobs": "top_logprobs", "max_tokens": "max_output_tokens"})
    return None


class Window:
    """Amounts charged over the last `span` seconds, kept in bins of `slot` seconds (bin i holds
    what was charged in [i*slot, (i+1)*slot) and leaves the window at (i+1)*slot + span)."""

    def __init__(self, span: float, slot: float):
        self.span, self.slot = span, slot
        self.bins: collections.deque[list[float]] = collections.deque()  # [index, amount]

    def _expire(self, now: float) -> None:
        while self.bins and (self.bins[0][0] + 1) * self.slot + self.span <= now:
            self.bins.popleft()

    def total(self, now: float) -> float:
        self._expire(now)
        return sum(amount for _, amount in self.bins)

    def wait(self, now: float, amount: float, limit: float) -> float:
        """Seconds until `amount` more fits under `limit` (0: it fits now)."""
        excess = self.total(now) + amount - limit
        if excess <= 0:
            return 0.0
        for index, charged in self.bins:
            excess -= charged
            if excess <= 0:
                return (index + 1) * self.slot + self.span - now
        return self.span

    def charge(self, now: float, amount: float) -> int:
        """Add `amount` now; returns the bin it went to (for `adjust`)."""
        self._expire(now)
        index = int(now // self.slot)
        if self.bins and self.bins[-1][0] == index:
            self.bins[-1][1] += amount
        else:
            self.bins.append([index, amount])
        return index

    def adjust(self, index: int, delta: float, now: float) -> None:
        """Correct what bin `index` was charged; if it has left the window, only a shortfall
        (delta > 0) still counts, charged now."""
        self._expire(now)
        for b in self.bins:
            if b[0] == index:
                b[1] += delta
                return
        if delta > 0:
            self.charge(now, delta)


@dataclass
class Rates:
    """One key's windows (kept by label across reloads)."""

    requests: Window = field(default_factory=lambda: Window(60.0, 1.0))
    tokens: Window = field(default_factory=lambda: Window(60.0, 1.0))
    day: Window = field(default_factory=lambda: Window(86400.0, 60.0))


@dataclass
class Grant:
    """An admitted request's token charge, corrected by `settle` with what it used."""

    rates: Rates | None = None
    reserved: int = 0
    bins: tuple[int, int] = (0, 0)
    settled: bool = False

    def settle(self, used_tokens: int) -> None:
        if self.rates is None or self.settled:
            return
        self.settled = True
        now = time.monotonic()
        delta = used_tokens - self.reserved
        self.rates.tokens.adjust(self.bins[0], delta, now)
        self.rates.day.adjust(self.bins[1], delta, now)


class KeyPolicies:
    """The keys a server accepts (label -> SHA-256), their policies, and their rate windows.

    Built by `load`; `match` is what the guard calls for each request's Authorization header.
    """

    def __init__(self, digests: dict[str, str], policies: dict[str, KeyPolicy],
                 path: Path | None = None, plain: dict[str, str] | None = None):
        self.digests, self.policies, self.path = digests, policies, path
        self._plain = plain or {}  # keys given as themselves (--api-key): kept on a reload
        self._rates: dict[str, Rates] = {}
        self._stamp = _stamp(path) if path is not None else None
        self._checked = time.monotonic()

    @classmethod
    def load(cls, api_key: str | None, keys_file: Path | None,
             environ: dict[str, str] | None = None) -> KeyPolicies:
        """From --api-key (SEED_API_KEY) and --keys-file: one key per line, or a keys.toml."""
        toml = keys_file is not None and keys_file.suffix.lower() == ".toml"
        plain = plain_digests(load_keys(api_key, None if toml else keys_file, environ))
        if not toml:
            return cls(plain, {})
        assert keys_file is not None
        policies = read_policy_file(keys_file)
        return cls(_combined(keys_file, plain, policies), policies, keys_file, plain)

    def __bool__(self) -> bool:
        return bool(self.digests)

    def match(self, authorization: str | None) -> str | None:
        """The label of the request's key (None: no key matches); reloads a changed file first."""
        self._maybe_reload()
        return match_digest(self.digests, authorization)

    def policy(self, label: str) -> KeyPolicy | None:
        return self.policies.get(label)

    def expired(self, label: str, now: dt.datetime | None = None) -> APIError | None:
        """A 401 for a key past its `expires`, else None."""
        policy = self.policies.get(label)
        if policy is None or policy.expires is None:
            return None
        if (now or dt.datetime.now(dt.UTC)) < policy.expires:
            return None
        when = policy.expires.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return APIError(401, f"This API key expired at {when}; ask the server's owner for a new "
                        "one.", code="expired_api_key")

    def admit(self, label: str | None, policy: KeyPolicy | None, req: Any) -> Grant:
        """Refuse what `policy` forbids in `req` (403, 400, 429), else charge the request to the
        key's windows; the Grant corrects the token charge when the request ends."""
        ask = ask_of(req) if policy is not None else None
        if ask is None or label is None or policy is None:
            return Grant()
        check_fields(policy, ask)
        reserved = (ask.max_tokens or 0) * ask.choices
        rates = self._rates.setdefault(label, Rates())
        now = time.monotonic()
        _check_rates(policy, rates, reserved, now)
        rates.requests.charge(now, 1)
        bins = (rates.tokens.charge(now, reserved), rates.day.charge(now, reserved))
        return Grant(rates, reserved, bins)

    def reload(self) -> bool:
        """Read the keys.toml again; a file that does not load keeps the current policy and logs
        one line. True if the new file is in use."""
        if self.path is None:
            return False
        self._stamp = _stamp(self.path)
        try:
            policies = read_policy_file(self.path)
            digests = _combined(self.path, self._plain, policies)
        except UserError as e:
            log.warning("keys file not reloaded, the previous keys stay in use: %s", e)
            return False
        self.digests, self.policies = digests, policies
        self._rates = {k: v for k, v in self._rates.items() if k in policies}
        print(f"seed serve: {self.path} reloaded, {len(digests)} key(s)", flush=True)
        return True

    def _maybe_reload(self) -> None:
        if self.path is None:
            return
        now = time.monotonic()
        if now - self._checked < CHECK_EVERY_S:
            return
        self._checked = now
        if _stamp(self.path) != self._stamp:
            self.reload()


def _stamp(path: Path) -> tuple[int, int] | None:
    """What says a file changed: its mtime and size (None while it is missing)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _combined(path: Path, plain: dict[str, str],
              policies: dict[str, KeyPolicy]) -> dict[str, str]:
    """The plain keys' digests and the keys.toml's; a label or a key in both is refused."""
    for label, policy in policies.items():
        if label in plain:
            raise UserError(f"{path}: keys.{label}: the label is taken by --api-key; name the "
                            "entry otherwise")
        if any(hmac.compare_digest(policy.sha256, d) for d in plain.values()):
            raise UserError(f"{path}: keys.{label}: the same key is given by --api-key; give "
                            "it once")
    return {**plain, **{label: p.sha256 for label, p in policies.items()}}


def check_fields(policy: KeyPolicy, ask: Ask) -> None:
    """403 for a model the key may not use, 400 naming the first field the policy forbids."""
    if policy.models is not None and ask.model not in policy.models:
        allowed = ", ".join(policy.models) or "none"
        raise APIError(403, f"This API key may not use the model `{ask.model[:256]}`; it may use: "
                       f"{allowed}.", type_="permission_error", param="model",
                       code="model_not_allowed")
    if policy.max_n is not None and ask.choices > policy.max_n:
        raise bad_request(f"This API key may ask for at most {policy.max_n} choice(s) per "
                          f"request; lower {ask.params['n']}.", ask.params["n"])
    if ask.logprobs and not policy.logprobs:
        raise bad_request(f"This API key may not ask for logprobs; drop "
                          f"{ask.params['logprobs']}.", ask.params["logprobs"])
    if policy.max_top_logprobs is not None and ask.top_logprobs > policy.max_top_logprobs:
        raise bad_request(f"This API key may ask for at most {policy.max_top_logprobs} "
                          f"top_logprobs per token; lower {ask.params['top_logprobs']}.",
                          ask.params["top_logprobs"])
    if policy.max_tokens is not None and (ask.max_tokens is None
                                          or ask.max_tokens > policy.max_tokens):
        raise bad_request(f"This API key may generate at most {policy.max_tokens} tokens per "
                          f"choice; set {ask.params['max_tokens']} to {policy.max_tokens} or "
                          "less.", ask.params["max_tokens"])
    budget = (ask.max_tokens or 0) * ask.choices
    for limit, name in ((policy.tpm, "tpm"), (policy.tokens_per_day, "tokens_per_day")):
        if limit is not None and budget > limit:
            raise bad_request(f"This request may generate {budget} tokens "
                              f"({ask.params['max_tokens']} x choices), more than this API "
                              f"key's {name} of {limit}; lower {ask.params['max_tokens']}.",
                              ask.params["max_tokens"])


def _check_rates(policy: KeyPolicy, rates: Rates, reserved: int, now: float) -> None:
    """A 429 with Retry-After when the request does not fit one of the key's windows."""
    tokens = max(reserved, 1)  # a key at its limit is refused even a request of unknown size
    for limit, window, amount, what in (
            (policy.rpm, rates.requests, 1, "requests per minute (rpm)"),
            (policy.tpm, rates.tokens, tokens, "tokens per minute (tpm)"),
            (policy.tokens_per_day, rates.day, tokens, "tokens per day (tokens_per_day)")):
        if limit is None:
            continue
        wait = window.wait(now, amount, limit)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            raise APIError(429, f"This API key's limit of {limit} {what} is reached; retry after "
                           f"{retry} s.", type_="rate_limit_error", code="rate_limit_exceeded",
                           headers={"Retry-After": str(retry)})
