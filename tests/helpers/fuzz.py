"""Seeded request bodies for fuzzing `seed serve`'s generation routes, and a check of each answer.

`fuzz_cases(seed, count, model)` gives `count` cases, the same ones for the same seed: a route, the
raw body bytes, a content type, and a short description. About half start from a valid request (a
few short messages or a prompt, max_tokens <= 8, so the ones that do generate stay cheap) and get
0-3 mutations: a field set to a value of the wrong type, null, a huge or negative number, a
nested object, a long string; a field dropped; an unknown field. The rest are broken on the wire:
invalid UTF-8 inside a string, a byte-order mark, NUL bytes, lone surrogates as JSON escapes,
deep nesting, truncated or non-JSON bodies, empty bodies, the wrong content type. Bodies run from
empty to ~100 KB (under the server's body limit).

`check_answer` says what is wrong with one answer (None when it is as it should be): a 2xx or a
4xx, a 4xx in OpenAI's error shape, a stream that ends with `[DONE]` or an error event.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any

ROUTES = ("/v1/chat/completions", "/v1/completions")
MAX_BODY_BYTES = 100_000
PIECES = ["hello", "the quick brown fox", " ", "\n", "\t", "é", "中文", "😀", "\u200f", "\u2028",
          "\ufeff", "\x00", "\x1f", "<|im_start|>", "<|im_end|>",
          "<|endoftext|>", "system", '"', "\\", "{", "}", "[", "0", "12345", "null"]
ODD_NUMBERS = [0, -1, 1, 2, 7, 8, 255, 2**31, 2**63, 2**63 - 1, 2**64, 2**70, -2**70, 10**30,
               1e308, -1e308, 0.5, -0.0, 3.7, 1e-9]
SCHEMAS: list[Any] = [
    {"type": "object", "properties": {"a": {"type": "integer"}}}, {"type": "string"},
    {"type": "string", "pattern": "("}, {"$ref": "#/nope"}, {"type": ["object", "null"]},
    {"enum": []}, {"type": "string", "minLength": -1}, {"anyOf": []}, {"properties": 5},
    {"type": 5}, {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
    {"type": "integer", "minimum": 10, "maximum": 1}, {"not": {}}, {"const": "\u0000"}, {}]
FIELDS = ["model", "messages", "prompt", "max_tokens", "max_completion_tokens", "temperature",
          "top_p", "n", "stream", "stream_options", "stop", "seed", "logprobs", "top_logprobs",
          "presence_penalty", "frequency_penalty", "user", "response_format", "echo",
          "logit_bias", "tools", "functions", "suffix", "best_of"]


@dataclass
class FuzzCase:
    index: int
    route: str
    body: bytes
    content_type: str | None
    what: str  # how the body was made, for a failure message

    def shown(self, limit: int = 600) -> str:
        text = repr(self.body[:limit]) + (f" ... ({len(self.body)} bytes)"
                                           if len(self.body) > limit else "")
        return f"case {self.index} [{self.what}] POST {self.route} ({self.content_type}): {text}"


def fuzz_cases(seed: int, count: int, model: str) -> list[FuzzCase]:
    """`count` cases drawn from `seed`."""
    rng = random.Random(seed)
    return [_case(rng, i, model) for i in range(count)]


def _case(rng: random.Random, index: int, model: str) -> FuzzCase:
    route = rng.choice(ROUTES)
    body = _valid_body(rng, route, model)
    what = ["valid"]
    for _ in range(rng.choice([0, 0, 1, 1, 2, 3])):
        what.append(_mutate(rng, body, model))
    content_type: str | None = "application/json"
    raw = json.dumps(body).encode()  # ensure_ascii: a lone surrogate is sent as its \\u escape
    if rng.random() < 0.35:
        raw, how = _break_bytes(rng, raw)
        what.append(how)
    if rng.random() < 0.06:
        content_type = rng.choice([None, "text/plain", "application/x-www-form-urlencoded",
                                   "multipart/form-data; boundary=x", "application/json; "
                                   "charset=latin-1", "application/xml"])
        what.append(f"content-type {content_type}")
    return FuzzCase(index, route, raw[:MAX_BODY_BYTES], content_type, ", ".join(what))


def _valid_body(rng: random.Random, route: str, model: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "max_tokens": rng.randint(1, 8)}
    if route == "/v1/chat/completions":
        roles = ["system", "user", "assistant", "user"]
        body["messages"] = [{"role": roles[i % 4] if i else rng.choice(["system", "user"]),
                             "content": _text(rng, rng.randint(0, 40))}
                            for i in range(rng.randint(1, 3))]
        if rng.random() < 0.2:
            body["messages"][-1]["content"] = [{"type": "text", "text": _text(rng, 5)}
                                               for _ in range(rng.randint(0, 3))]
        if rng.random() < 0.1:
            body["messages"][0]["name"] = rng.choice(["ada", "", "x" * 300])
        if rng.random() < 0.12:
            body["response_format"] = rng.choice([{"type": "json_object"}, {"type": "text"}, {
                "type": "json_schema", "json_schema": {"name": "r", "schema": rng.choice(
                    SCHEMAS)}}])
        if rng.random() < 0.2:
            body["logprobs"] = True
            body["top_logprobs"] = rng.randint(0, 3)
    else:
        ids = [rng.randint(0, 300) for _ in range(rng.randint(1, 10))]
        body["prompt"] = rng.choice([_text(rng, rng.randint(1, 40)),
                                     [_text(rng, 5), _text(rng, 8)], ids, [ids, ids[:1]]])
        if rng.random() < 0.2:
            body["echo"] = True
        if rng.random() < 0.15:
            body["logprobs"] = rng.randint(0, 5)
    for name, value in [("temperature", rng.choice([0, 0.7, 1.0, 2, 1e-300, 5e-324])),
                        ("top_p", rng.choice([0.5, 1, 0, 1e-100])), ("n", rng.randint(1, 3)),
                        ("stream", rng.random() < 0.4), ("seed", rng.randint(-5, 2**40)),
                        ("stop", rng.choice(["\n", ["a", "b"], "o"])),
                        ("presence_penalty", rng.uniform(-2, 2))]:
        if rng.random() < 0.3:
            body[name] = value
    if body.get("stream") and rng.random() < 0.5:
        body["stream_options"] = {"include_usage": True}
    return body


def _mutate(rng: random.Random, body: dict[str, Any], model: str) -> str:
    """Change `body` in place one way; says how."""
    kind = rng.choice(["set", "set", "set", "drop", "unknown", "message", "model", "big",
                       "surrogate"])
    if kind == "drop" and body:
        name = rng.choice(sorted(body))
        del body[name]
        return f"drop {name}"
    if kind == "unknown":
        name = rng.choice(["logit_bias", "tools", "x" * rng.randint(1, 300), "\ud800", ""])
        body[name] = _junk(rng)
        return "unknown field"
    if kind == "message" and isinstance(body.get("messages"), list) and body["messages"]:
        message = rng.choice(body["messages"])
        if isinstance(message, dict):
            key = rng.choice(["role", "content", "name", "tool_calls"])
            message[key] = _junk(rng)
            return f"message.{key}"
    if kind == "model":
        body["model"] = rng.choice(["", model + "x", "x" * 257, "\ud800", model.upper(),
                                    "x" * rng.randint(1, 5000)])
        return "model"
    if kind == "big":
        size = rng.choice([2000, 20_000, 90_000])
        text = _text(rng, size // 8)[:size]
        if isinstance(body.get("messages"), list):
            body["messages"].append({"role": "user", "content": text})
        else:
            body["prompt"] = text
        return f"big text {len(text)}"
    if kind == "surrogate":  # sent as a JSON escape: json.dumps writes it as \\udXXX
        where = body.get("messages") or [body]
        target = where[-1] if isinstance(where, list) and isinstance(where[-1], dict) else body
        key = "content" if "content" in target else "prompt"
        target[key] = _text(rng, 3) + rng.choice(["\ud800", "\udfff", "\udc00\ud800"])
        return "lone surrogate"
    name = rng.choice(FIELDS)
    body[name] = _small_max_tokens(rng) if name == "max_tokens" else _junk(rng)
    return f"set {name}"


def _small_max_tokens(rng: random.Random) -> Any:
    # Never None or a value that would fit the context: a valid max_tokens stays <= 8.
    return rng.choice([0, -1, -2**70, 2**31, 2**70, 10**6, 1.5, "8", True, [8], {"n": 8}])


def _junk(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(10 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return rng.choice([True, False])
    if kind in (2, 3):
        return rng.choice(ODD_NUMBERS)
    if kind == 4:
        return _text(rng, rng.choice([0, 1, 5, 50]))
    if kind == 5:
        return rng.choice(["", "user", "text", "json_object", "auto", "0", "true"])
    if kind in (6, 7):
        return [_junk(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    if kind == 8:
        return {rng.choice(["type", "text", "role", "content", "schema", "a", ""]):
                _junk(rng, depth + 1) for _ in range(rng.randint(0, 3))}
    return _nested(rng.randint(10, 200))


def _nested(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = [value] if i % 2 else {"a": value}
    return value


def _text(rng: random.Random, pieces: int) -> str:
    return "".join(rng.choice(PIECES) if rng.random() < 0.3 else rng.choice(PIECES[:4])
                   for _ in range(pieces))


def _break_bytes(rng: random.Random, raw: bytes) -> tuple[bytes, str]:
    """Damage the serialized body on the wire; says how."""
    kind = rng.choice(["utf8", "utf8", "bom", "nul", "surrogate", "deep", "truncate", "notjson",
                       "empty", "array", "latin1"])
    quote = raw.find(b'"', rng.randrange(max(len(raw), 1)))
    at = quote + 1 if quote >= 0 else len(raw) // 2
    if kind == "utf8":
        junk = rng.choice([b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xf0\x28\x8c", b"\x80\x80"])
        return raw[:at] + junk + raw[at:], f"invalid utf-8 {junk!r}"
    if kind == "bom":
        return rng.choice([b"\xef\xbb\xbf", b"\xff\xfe", b"\xfe\xff"]) + raw, "bom"
    if kind == "nul":
        return raw[:at] + b"\x00" + raw[at:], "nul byte"
    if kind == "surrogate":
        escape = rng.choice([b"\\ud800", b"\\udfff", b"\\ud83d", b"\\uDC00x"])
        return raw[:at] + escape + raw[at:], "surrogate escape"
    if kind == "deep":
        depth = rng.choice([100, 1000, 20_000])
        opener, closer = rng.choice([(b"[", b"]"), (b'{"a":', b"}")])
        deep = opener * depth + b"1" + closer * depth
        return b'{"model":"x","messages":' + deep + b"}", f"nested {depth}"
    if kind == "truncate":
        return raw[:rng.randrange(max(len(raw), 1))], "truncated"
    if kind == "notjson":
        return rng.choice([b"hello", b"model=tiny", b"\x00\x01\x02", b"{'model': 'x'}", b"NaN",
                           b'{"model": NaN, "max_tokens": Infinity}']), "not json"
    if kind == "empty":
        return b"", "empty"
    if kind == "array":
        return b"[" + raw + b"]", "array body"
    return raw.decode("utf-8", "replace").encode("latin-1", "replace"), "latin-1"


def check_answer(status: int, text: str, stream_lines: list[str] | None) -> str | None:
    """What is wrong with an answer, or None. `stream_lines` are an event stream's lines."""
    if not (200 <= status < 300 or 400 <= status < 500):
        return f"status {status}"
    if status >= 400:
        try:
            error = json.loads(text)["error"]
        except (ValueError, KeyError, TypeError):
            return f"a {status} not in OpenAI's error shape"
        if not (isinstance(error, dict) and isinstance(error.get("message"), str)
                and error["message"] and isinstance(error.get("type"), str)):
            return f"a {status} whose error has no message or type"
        return None
    if stream_lines is None:
        try:
            answer = json.loads(text)
        except ValueError:
            return "a 2xx that is not JSON"
        return None if isinstance(answer, dict) and "choices" in answer else "a 2xx without choices"
    data = [line[len("data: "):] for line in stream_lines if line.startswith("data: ")]
    if not data:
        return "an empty stream"
    if data[-1] == "[DONE]":
        return None
    try:
        last = json.loads(data[-1])
    except ValueError:
        return "a stream that ends mid-event"
    return None if isinstance(last, dict) and "error" in last else "a stream without [DONE]"
