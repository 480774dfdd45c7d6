"""Helpers for the serving tests: a tiny chat model built locally, and a real server on a free port.

The model is a random-weight Llama with a byte-level BPE tokenizer trained here and a ChatML chat
template, so every string (JSON included) can be encoded and nothing is downloaded. The server is
`python -m seed serve` in a subprocess, stopped when the test is done.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from cli_helpers import cli_env, start_cli
from servers.helpers import free_port, wait_until_up

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "Seed builds a chat model you own from a stronger model you can call.",
    '{"verdict": "A", "score": 7, "reason": "clear and correct"}',
    '{"name": "Ada", "age": 36, "tags": ["math", "code"], "ok": true, "none": null}',
    "What is 12 + 30? The answer is 42. 0 1 2 3 4 5 6 7 8 9 10 100 1000",
    "Hello! How can I help you today? Please explain the idea in simple words.",
    "user assistant system: a helpful, honest and harmless assistant answers questions.",
]


def build_tiny_chat_model(path: Path, *, hidden: int = 64, layers: int = 2, context: int = 256,
                          vocab: int = 400, chat_template: bool = True, seed: int = 0) -> Path:
    """Save a random-weight Llama chat model with its tokenizer in `path`; returns `path`."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (
        GenerationConfig,
        LlamaConfig,
        LlamaForCausalLM,
        PreTrainedTokenizerFast,
    )

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator(_CORPUS * 20, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|endoftext|>",
                                  eos_token="<|im_end|>", pad_token="<|endoftext|>")
    if chat_template:
        tok.chat_template = CHATML
    tok.save_pretrained(str(path))

    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 2,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=context, bos_token_id=tok.bos_token_id,
                      eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                      tie_word_embeddings=True, initializer_range=0.3)
    model = LlamaForCausalLM(cfg)
    model.save_pretrained(str(path))
    GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                     temperature=1.0, top_p=1.0).save_pretrained(str(path))
    return path


def seed_env() -> dict[str, str]:
    # One intra-op thread: on a shared 2-core machine, OpenMP threads spinning against other
    # processes make a tiny model ~30x slower per step.
    return cli_env(TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")


@contextmanager
def serving(*args: str | Path, timeout: float = 90.0, extra_env: dict[str, str] | None = None
            ) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start `seed serve ARGS --port P`; yield its base URL and process once /health answers.

    Stopped afterwards (terminate, then kill after 30 s) unless the test already ended it.
    """
    port = free_port()
    proc = start_cli("serve", *args, "--port", str(port), env={**seed_env(), **(extra_env or {})},
                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(proc, url + "/health", timeout, "seed serve")
        yield url, proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@contextmanager
def running_server(*args: str | Path, timeout: float = 90.0,
                   extra_env: dict[str, str] | None = None) -> Iterator[str]:
    """Start `seed serve ARGS --port P` and yield its base URL; stop it afterwards."""
    with serving(*args, timeout=timeout, extra_env=extra_env) as (url, _):
        yield url


def sse_events(lines: Iterator[str]) -> Iterator[dict | str]:
    """Parse server-sent events: each `data:` payload as JSON, or the string "[DONE]"."""
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: "):]
            yield data if data == "[DONE]" else json.loads(data)


async def load_test(url: str, *, clients: int, seconds: float, key: str | None = None,
                    max_tokens: int = 16) -> dict[str, int]:
    """`clients` concurrent users, each sending chats back to back for `seconds`.

    Half stream, half do not; a 429 makes that user wait its Retry-After. Returns counts by
    outcome: "200", "429", any other status, or an exception's type name.
    """
    import asyncio
    import collections

    outcomes: collections.Counter[str] = collections.Counter()
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    limits = httpx.Limits(max_connections=clients + 10, max_keepalive_connections=clients + 10)
    deadline = time.monotonic() + seconds

    async def user(i: int, client: httpx.AsyncClient) -> None:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            body = {"model": "tiny", "max_tokens": max_tokens, "temperature": 0.7,
                    "messages": [{"role": "user", "content": f"user {i} message {n} " * (i % 5)
                                  + "hello"}]}
            try:
                if i % 2:
                    body["stream"] = True
                    async with client.stream("POST", url + "/v1/chat/completions", json=body,
                                             headers=headers) as r:
                        lines = [line async for line in r.aiter_lines() if line]
                        ok = r.status_code != 200 or lines[-1] == "data: [DONE]"
                        outcomes[str(r.status_code) if ok else "truncated-stream"] += 1
                        retry = r.headers.get("retry-after")
                else:
                    r = await client.post(url + "/v1/chat/completions", json=body, headers=headers)
                    ok = r.status_code != 200 or r.json()["choices"][0]["finish_reason"]
                    outcomes[str(r.status_code) if ok else "bad-body"] += 1
                    retry = r.headers.get("retry-after")
                if r.status_code == 429:
                    await asyncio.sleep(float(retry or 1))
            except Exception as e:  # counted, not raised: the test asserts there are none
                outcomes[type(e).__name__] += 1

    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        await asyncio.gather(*[user(i, client) for i in range(clients)])
    return dict(outcomes)
