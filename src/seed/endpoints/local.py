"""A Hugging Face model directory as an endpoint, loaded in process.

Loads any `AutoModelForCausalLM` directory with its tokenizer and chat template, and answers
conversations: batched (left-padded) for evaluation, token by token for a terminal chat; a model
whose template thinks has its `<think>` trace split from its answer (`seed.thinking`). This module
knows nothing about HTTP; `seed serve` builds its batching engine on the same loading code, and
training loads a checkpoint's tokenizer with `load_tokenizer` (the one tokenizer loader).
"""

from __future__ import annotations

import json
import queue
import threading
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
)
from transformers.generation.streamers import BaseStreamer

from seed.endpoints.base import Completion, EndpointDefaults
from seed.errors import UserError
from seed.files import hash_path
from seed.quiet import quiet_progress_bars
from seed.records import Teacher
from seed.thinking import opens_thinking, split_thought, template_thinks


def check_model_dir(path: str | Path) -> Path:
    """The path as a model directory, or a UserError saying what is missing."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such model directory; train one with `seed train` "
                        "or check the path")
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: not a model directory (no config.json); point at a saved model")
    return path


def load_tokenizer(path: str | Path, template: str | None = None, *,
                   template_setting: str | None = None) -> PreTrainedTokenizerBase:
    """A local directory's tokenizer, offline, with a chat template and a pad token.

    `template` (inline Jinja, or a file holding one) replaces the directory's own template. A
    tokenizer left without one is refused, since Seed only renders chats: the error names
    `template_setting`, the recipe key that could supply one, or asks for chat_template.jinja.
    A missing pad token becomes the eos token, for left-padded batches.
    """
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path}: no such tokenizer directory; check the path")
    try:
        tok = _fast_tokenizer(path) or AutoTokenizer.from_pretrained(str(path),
                                                                      local_files_only=True)
    except (OSError, ValueError):  # transformers' many lines on what it tried; one is enough
        raise UserError(f"{path}: no tokenizer can be loaded from this directory; give a model "
                        "directory with its tokenizer files (tokenizer.json, "
                        "tokenizer_config.json)") from None
    if template:
        file = Path(template)
        tok.chat_template = file.read_text() if "{" not in template and file.is_file() else template
    if not tok.chat_template:
        fix = (f"set {template_setting} to a Jinja template or a file holding one"
               if template_setting else "add chat_template.jinja or give the recipe a template")
        raise UserError(f"{path}: the tokenizer has no chat template; {fix}")
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok


# The tokenizer classes that are a `tokenizer.json` and nothing else (Seed's own students write
# `TokenizersBackend`). AutoTokenizer reads the model's config to pick a class, and importing the
# config's module costs ~2.5 s on a 2-core CPU (transformers' attention kernels and torch._dynamo
# come with it), which a process that only tokenizes (`seed serve`'s API side) never needs.
_PLAIN_TOKENIZERS = {"TokenizersBackend", "PreTrainedTokenizerFast"}


def _fast_tokenizer(path: Path) -> PreTrainedTokenizerBase | None:
    """The directory's tokenizer, loaded by its class directly when it is a plain `tokenizer.json`
    one; None when AutoTokenizer must decide."""
    config = path / "tokenizer_config.json"
    if not (path / "tokenizer.json").is_file() or not config.is_file():
        return None
    try:
        named = json.loads(config.read_text()).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        return None
    if named not in _PLAIN_TOKENIZERS:
        return None
    return PreTrainedTokenizerFast.from_pretrained(str(path), local_files_only=True)


class _TokenStreamer(BaseStreamer):
    """Hands each new token's text to a queue as soon as it decodes to whole characters.

    transformers' TextIteratorStreamer waits for a space before it emits a word; a chat should show
    every token. The first `put` is the prompt and is skipped; None marks the end.
    """

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.pieces: queue.Queue[str | None] = queue.Queue()
        self._ids: list[int] = []
        self._sent = 0
        self._prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self._prompt_seen:
            self._prompt_seen = True
            return
        self._ids.extend(value.reshape(-1).tolist())
        text = self.tokenizer.decode(self._ids, skip_special_tokens=True)
        if not text.endswith("\ufffd"):  # a multi-byte character is still incomplete
            self.pieces.put(text[self._sent:])
            self._sent = len(text)

    def end(self) -> None:
        text = self.tokenizer.decode(self._ids, skip_special_tokens=True)
        if len(text) > self._sent:
            self.pieces.put(text[self._sent:])
        self.pieces.put(None)


class LocalModel(EndpointDefaults):
    """A model directory that answers chats in process (CPU, or the first GPU when there is one)."""

    def __init__(self, path: str | Path, device: str | None = None,
                 dtype: torch.dtype | None = None) -> None:
        self.path = check_model_dir(path)
        self.tokenizer = load_tokenizer(self.path)
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        with quiet_progress_bars():
            model = AutoModelForCausalLM.from_pretrained(str(self.path), dtype=dtype)
        # Any: transformers 5 annotates the model's .to() and .generate() so mypy rejects them.
        self.model = cast(Any, model)
        self.model.to(self.device).eval()
        self._revision: str | None = None

    def teacher(self) -> Teacher:
        if self._revision is None:
            self._revision = (hash_path(self.path / "model.safetensors") or "")[:16] or None
        return Teacher(route="local", host=None, model_requested=self.path.name,
                       model_returned=self.path.name, weights_revision=self._revision)

    def _prompt_ids(self, messages: list[dict[str, str]]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                 tokenize=True)
        if isinstance(ids, Mapping):  # a BatchEncoding, with transformers 5
            ids = ids["input_ids"]
        return list(ids)

    def _sampling(self, max_new_tokens: int, temperature: float, top_p: float) -> dict[str, Any]:
        kw: dict[str, Any] = {
            "max_new_tokens": max_new_tokens,
            "pad_token_id": self.tokenizer.pad_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
        }
        if temperature > 0:
            kw.update(do_sample=True, temperature=temperature, top_p=top_p)
        else:
            kw.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kw

    @torch.inference_mode()
    def generate(self, conversations: list[list[dict[str, str]]], max_new_tokens: int = 256,
                 temperature: float = 0.0, top_p: float = 1.0, batch_size: int = 32) -> list[str]:
        """Answer each conversation; greedy unless temperature > 0. Batches are left-padded."""
        out: list[str] = []
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(conversations), batch_size):
            prompts = [self._prompt_ids(c) for c in conversations[start:start + batch_size]]
            width = max(len(p) for p in prompts)
            ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=self.device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts],
                                device=self.device)
            gen = self.model.generate(input_ids=ids, attention_mask=mask,
                                      **self._sampling(max_new_tokens, temperature, top_p))
            texts = self.tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
            out += [t.strip() for t in texts]
        return out

    def stream(self, messages: list[dict[str, str]], max_new_tokens: int = 256,
               temperature: float = 0.0, top_p: float = 1.0) -> Iterator[str]:
        """Yield the reply's text token by token as it is generated."""
        ids = torch.tensor([self._prompt_ids(messages)], device=self.device)
        streamer = _TokenStreamer(self.tokenizer)
        kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), streamer=streamer,
                      **self._sampling(max_new_tokens, temperature, top_p))
        worker = threading.Thread(target=self._generate_quietly, kwargs=kwargs, daemon=True)
        worker.start()
        while (piece := streamer.pieces.get()) is not None:
            yield piece
        worker.join()

    @torch.inference_mode()
    def _generate_quietly(self, **kwargs: Any) -> None:
        try:
            self.model.generate(**kwargs)
        finally:  # an error must not leave the reader waiting for a piece that never comes
            kwargs["streamer"].pieces.put(None)

    def answer_batch(self, conversations: list[list[dict[str, str]]],
                     max_tokens: int) -> list[str] | None:
        """Greedy answers (after its trace, for a model that thinks), in left-padded batches: a
        local model needs no engine."""
        texts = self.generate(conversations, max_new_tokens=max_tokens)
        return [self.split_reply(c, t)[1] for c, t in zip(conversations, texts, strict=True)]

    def thinks(self, messages: list[dict[str, str]]) -> bool | None:
        """Whether a reply to `messages` starts inside `<think>` (True), may open it (False), or
        is plain content (None: the chat template writes no `<think>`)."""
        template = self.tokenizer.chat_template
        if not isinstance(template, str) or not template_thinks(template):
            return None
        prompt = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                                    tokenize=False)
        return opens_thinking(str(prompt))

    def split_reply(self, messages: list[dict[str, str]], text: str) -> tuple[str | None, str]:
        """A reply to `messages` as (trace, answer); no trace unless the template thinks."""
        inside = self.thinks(messages)
        return (None, text) if inside is None else split_thought(text, inside)

    async def complete(self, messages: list[dict[str, str]], **params: Any) -> list[Completion]:
        n = int(params.get("n", 1))
        texts = self.generate([messages] * n, max_new_tokens=int(params.get("max_tokens", 256)),
                              temperature=float(params.get("temperature", 0.0)),
                              top_p=float(params.get("top_p", 1.0)))
        out = []
        for t in texts:
            reasoning, content = self.split_reply(messages, t)
            out.append(Completion(text=content, model=self.path.name, reasoning=reasoning))
        return out
