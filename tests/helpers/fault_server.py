"""A local OpenAI-compatible server that injects faults on command (tests and benchmarks only).

Run: `python tests/helpers/fault_server.py --port P [--latency S] [--log FILE] [--model NAME]`.

It answers `POST /v1/chat/completions` with `echo: <last user message>` (choice i of `n` says
`echo[i]: ...`; Self-Instruct, Evol-Instruct and user-simulation prompts get scripted replies),
usage counted in words, `system_fingerprint` "fp_fault", fake per-word logprobs
when asked, and a JSON object `{"answer": ...}` when a `json_schema` response format is asked.
`GET /v1/models` lists its one model; another model name gets a 404 like OpenAI's. With the
environment variable FAULT_SERVER_KEY set, a request without that bearer key gets a 401.

Faults, set with `POST /_control/faults {"match": "<substring>", "faults": [...]}` (requests whose
last user message contains the substring take the next fault in order; an empty match applies to
any request): `429` or `429:<retry-after>`, `500`, `timeout:<s>` (sleep before answering),
`drop` (headers sent, then the connection is cut mid-body), `truncated` (a 200 whose JSON body is
cut short), `slow:<s>` (the body trickles out over s seconds), `length` (finish_reason "length"),
`badjson` (an answer that fails the schema), `garbled` (a 200 whose JSON is not a chat completion:
choices a string, usage a word), `surrogate` (an answer holding a lone `\\ud800` escape),
`ratelimit:<limit>:<remaining>:<reset>` (a 200 with `x-ratelimit-*-requests` headers). Each
request is appended to the `--log` file as a JSON line (its last user message, fault, `n` and the
names of the body's fields).

How every answer reports `usage`, set with `POST /_control/usage {"mode": M}`: `words` (the
default: counts in words), `omit` (no usage key), `null`, `list` (an array instead of an object),
`strings` ("12"), `floats` (12.0), `negative`, `zero`, `junk` (a word, a list, an object) or
`total_only` (only total_tokens), as teachers that drop or garble it do.

How an answer carries a thinking trace (`thinking about: <last user message>`), set with
`POST /_control/reasoning {"field": F}`: `none` (the default: no trace), `reasoning_content`
(DeepSeek's API), `reasoning` (vLLM's and OpenRouter's name) or `think` (inline,
`<think>...</think>` before the answer, as a server without a reasoning parser sends it). With a
trace, `words` usage counts its words in `completion_tokens` and in
`completion_tokens_details.reasoning_tokens`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import time
from collections import deque
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

app = FastAPI()
STATE: dict[str, Any] = {"latency": 0.0, "log": None, "model": "fault-model", "rules": [],
                         "usage": "words", "reasoning": "none"}
REASONING_FIELDS = ("none", "reasoning_content", "reasoning", "think")


WORDS = ["river", "violin", "glacier", "compiler", "saffron", "lighthouse", "origami", "volcano",
         "bicycle", "sonnet", "tariff", "enzyme", "harbor", "quasar", "ledger", "meadow", "cipher"]
TEMPLATES = ["Write a short poem about a {a} and a {b}.", "Explain to a child how a {a} works.",
             "List three surprising facts about {a} and {b}.",
             "Draft an email asking for {a} advice.",
             "Compare {a} with {b} in a small table.", "Classify {a} as natural or man-made."]


def _scripted(user: str) -> str | None:
    """Deterministic replies to generated-prompt steps (Self-Instruct, Evol, simulated users)."""
    h = sum(map(ord, user))
    word = WORDS[h % len(WORDS)]
    if user.startswith("Come up with a series of tasks"):
        k = int(re.findall(r"(\d+)\.\s*$", user)[0])
        items = [TEMPLATES[(h + j) % len(TEMPLATES)].format(a=WORDS[(h + 3 * j) % len(WORDS)],
                                                            b=WORDS[(h + 7 * j + 1) % len(WORDS)])
                 for j in range(3)]
        return " " + items[0] + "".join(f"\n{k + j}. {t}" for j, t in enumerate(items[1:], 1))
    if "#Given Prompt#" in user:
        given = user.split("#Given Prompt#:\n", 1)[1]
        if "Prompt Creator" in user:
            return f"Invent a festival built around the {word} and describe its three rituals."
        if "sorry" in given:
            return "I'm sorry, I cannot rewrite that."
        return f"{given} Answer in exactly three numbered steps and mention a {word}."
    if user.startswith("You are the user in the conversation"):
        return f"Thanks! Could you give one more example involving a {word}?"
    return None


def _answer(body: dict[str, Any], fault: str | None) -> dict[str, Any]:
    user = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
    n = int(body.get("n", 1))
    schema = (body.get("response_format") or {}).get("type") == "json_schema"
    choices = []
    for i in range(n):
        text = f"echo: {user}" if n == 1 else f"echo[{i}]: {user}"
        text = _scripted(user) or text
        if fault == "surrogate":
            text += " \ud800"
        if schema:
            text = json.dumps({"answer": text}) if fault != "badjson" else json.dumps({"x": 1})
        message: dict[str, Any] = {"role": "assistant", "content": text}
        field = STATE["reasoning"]
        if field == "think":
            message["content"] = f"<think>\nthinking about: {user}\n</think>\n\n{text}"
        elif field != "none":
            message[field] = f"thinking about: {user}"
        choice: dict[str, Any] = {"index": i, "message": message,
                                  "finish_reason": "length" if fault == "length" else "stop"}
        if body.get("logprobs"):
            k = int(body.get("top_logprobs") or 0)
            choice["logprobs"] = {"content": [
                {"token": w, "logprob": -0.5, "bytes": list(w.encode()),
                 "top_logprobs": [{"token": w if j == 0 else f"alt{j}", "logprob": -0.5 - j,
                                   "bytes": []} for j in range(k)]}
                for w in text.split()]}
        choices.append(choice)
    words = sum(len(m["content"].split()) for m in body["messages"])
    thought = n * len(f"thinking about: {user}".split()) if STATE["reasoning"] != "none" else 0
    out_words = sum(len(c["message"]["content"].split()) for c in choices)
    if STATE["reasoning"] in ("reasoning_content", "reasoning"):
        out_words += thought
    out = {"id": "chatcmpl-fault", "object": "chat.completion", "created": int(time.time()),
           "model": f"{STATE['model']}-2024", "system_fingerprint": "fp_fault", "choices": choices}
    usage = _usage(STATE["usage"], words, out_words)
    if thought and STATE["usage"] == "words":
        usage["completion_tokens_details"] = {"reasoning_tokens": thought}
    if STATE["usage"] != "omit":
        out["usage"] = usage
    return out


def _usage(mode: str, prompt: int, completion: int) -> Any:
    """`usage` as the mode sends it (see the module docstring)."""
    total = prompt + completion
    return {
        "words": {"prompt_tokens": prompt, "completion_tokens": completion,
                  "total_tokens": total},
        "omit": None, "null": None, "list": [prompt, completion],
        "strings": {"prompt_tokens": str(prompt), "completion_tokens": str(completion),
                    "total_tokens": str(total)},
        "floats": {"prompt_tokens": float(prompt), "completion_tokens": float(completion),
                   "total_tokens": float(total)},
        "negative": {"prompt_tokens": -prompt, "completion_tokens": -completion,
                     "total_tokens": -total},
        "zero": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        "junk": {"prompt_tokens": "lots", "completion_tokens": [completion],
                 "total_tokens": {"n": total}},
        "total_only": {"total_tokens": total},
    }[mode]


def _next_fault(user: str) -> str | None:
    for rule in STATE["rules"]:
        if rule["faults"] and rule["match"] in user:
            return rule["faults"].popleft()
    return None


@app.post("/_control/faults")
async def set_faults(request: Request) -> dict[str, int]:
    spec = await request.json()
    STATE["rules"].append({"match": spec.get("match", ""), "faults": deque(spec["faults"])})
    return {"rules": len(STATE["rules"])}


@app.post("/_control/usage")
async def set_usage(request: Request) -> dict[str, str]:
    mode = (await request.json())["mode"]
    _usage(mode, 0, 0)  # an unknown mode is a KeyError here, not on the next answer
    STATE["usage"] = mode
    return {"usage": mode}


@app.post("/_control/reasoning")
async def set_reasoning(request: Request) -> Response:
    field = (await request.json())["field"]
    if field not in REASONING_FIELDS:
        return JSONResponse({"error": f"field: one of {REASONING_FIELDS}"}, 400)
    STATE["reasoning"] = field
    return JSONResponse({"reasoning": field})


@app.get("/v1/models")
async def models() -> dict[str, Any]:
    return {"object": "list", "data": [{"id": STATE["model"], "object": "model"}]}


@app.post("/openai/deployments/{deployment}/chat/completions")
async def azure_chat(deployment: str, request: Request) -> Response:
    """Azure OpenAI's shape: the deployment in the path, `api-version`, an `api-key` header."""
    key = os.environ.get("FAULT_SERVER_KEY")
    if key and request.headers.get("api-key") != key:
        return JSONResponse({"error": {"message": "Access denied due to invalid key."}}, 401)
    if not request.query_params.get("api-version"):
        return JSONResponse({"error": {"message": "Missing api-version"}}, 404)
    body = await request.json()
    if "model" in body:
        return JSONResponse({"error": {"message": "model goes in the path on Azure"}}, 400)
    return await _chat(request, {**body, "model": deployment})


@app.post("/v1/chat/completions")
async def chat(request: Request) -> Response:
    key = os.environ.get("FAULT_SERVER_KEY")
    if key and request.headers.get("authorization") != f"Bearer {key}":
        return JSONResponse({"error": {"message": "Incorrect API key provided."}}, 401)
    return await _chat(request, await request.json())


async def _chat(request: Request, body: dict[str, Any]) -> Response:
    if body.get("model") != STATE["model"]:
        return JSONResponse({"error": {"message": f"The model `{body.get('model')}` does not "
                                                  "exist or you do not have access to it."}}, 404)
    user = next((m["content"] for m in reversed(body["messages"]) if m["role"] == "user"), "")
    fault = _next_fault(user)
    if STATE["log"]:
        with open(STATE["log"], "a") as f:
            f.write(json.dumps({"t": time.time(), "user": user, "fault": fault,
                                "n": body.get("n", 1), "fields": sorted(body)}) + "\n")
    if STATE["latency"]:
        await asyncio.sleep(STATE["latency"])
    kind, _, arg = (fault or "").partition(":")
    if kind == "429":
        return JSONResponse({"error": {"message": "Rate limit reached"}}, 429,
                            headers={"retry-after": arg or "1"})
    if kind == "500":
        return JSONResponse({"error": {"message": "The server had an error"}}, 500)
    if kind == "timeout":
        await asyncio.sleep(float(arg or 30))
    blob = json.dumps(_answer(body, kind or None)).encode()
    if kind == "garbled":
        blob = json.dumps({"choices": "echo", "usage": "lots", "model": 7}).encode()
    if kind == "truncated":
        return Response(blob[: len(blob) // 2], media_type="application/json")
    if kind == "drop":
        async def cut() -> Any:
            yield blob[:20]
            raise ConnectionResetError("fault: drop")
        return StreamingResponse(cut(), media_type="application/json")
    if kind == "slow":
        async def trickle() -> Any:
            step = max(1, len(blob) // 20)
            for i in range(0, len(blob), step):
                await asyncio.sleep(float(arg or 5) / 20)
                yield blob[i:i + step]
        return StreamingResponse(trickle(), media_type="application/json")
    headers = {}
    if kind == "ratelimit":
        limit, remaining, reset = arg.split(":")
        headers = {"x-ratelimit-limit-requests": limit,
                   "x-ratelimit-remaining-requests": remaining,
                   "x-ratelimit-reset-requests": reset}
    return Response(blob, media_type="application/json", headers=headers)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--log", default=None)
    ap.add_argument("--model", default="fault-model")
    args = ap.parse_args()
    STATE.update(latency=args.latency, log=args.log, model=args.model)
    uvicorn.run(app, host="127.0.0.1", port=args.port, log_level="critical", access_log=False,
                backlog=4096)


if __name__ == "__main__":
    main()
