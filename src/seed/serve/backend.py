"""The local backend: OpenAI requests in, the batching engine's output back as OpenAI responses.

It renders chats with the model's chat template, applies `generation_config.json` defaults, refuses
(400, both lengths stated) a prompt that does not fit the context instead of truncating it, compiles
`response_format` schemas for constrained decoding (and, with `tools`, the grammar that holds
calls to their schemas: `tool_grammar.py`), splits a reply into reasoning, content and tool calls
(`reasoning.py`, `tools.py`) when the request or the template asks, and turns the engine's events
into the `chat.completion` / `text_completion` objects or server-sent-event chunks that
`openai_format.py` declares and builds (this module holds no response shape of its own).
Templates and tokenization run on one worker thread, never on the event loop, after a prompt too
long to fit by its characters alone has been refused; a special token typed in a message stays
text (what it reads from the template: `templates.py`). A field it does not honour is a 400 naming
it (`fields.py`). A client that leaves (streaming or not) cancels its sequences at once and is
counted as a 499 (`engine_run.py`).

This process never loads the weights: it keeps the tokenizer (templates, token texts, grammar
checks) and reads context length, vocabulary size and end-of-sequence ids from the config files.
The model and the batching engine run in a second process (`worker.py`, which spawns it), so the
per-token work here never competes with the engine's Python for one GIL; if that process dies,
open requests end with an error and new ones get a 503. Routes, keys and metrics are in `app.py`.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from transformers import AutoConfig

from seed.endpoints.local import check_model_dir, load_tokenizer
from seed.errors import UserError
from seed.files import hash_path
from seed.protect.watermark import check_watermark_key
from seed.recipe import ServeConfig
from seed.serve import openai_format as fmt
from seed.serve import responses as rsp
from seed.serve.engine_run import EngineRun, EngineStream, collect_replies, finish_reason
from seed.serve.engine_types import SamplingParams, TokenLogprob
from seed.serve.errors import APIError, bad_request, model_not_found
from seed.serve.fields import unsupported
from seed.serve.grammar import GrammarTokenizer
from seed.serve.model_files import end_of_sequence_ids, read_generation_config
from seed.serve.policy import opt_out_allowed
from seed.serve.reasoning import CLOSE, ReplySplitter, opens_thinking, template_thinks
from seed.serve.responses_format import from_chat_completion, response_head
from seed.serve.responses_stream import response_events
from seed.serve.schemas import (
    ChatCompletionRequest,
    CompletionRequest,
    DetokenizeRequest,
    TokenizeChatRequest,
    TokenizeCompletionRequest,
)
from seed.serve.templates import (
    TEMPLATE_OWN,
    UNICODE_TO_BYTE,
    longest_token_chars,
    marker_ids,
    special_markers,
    template_message,
    template_source,
)
from seed.serve.tool_grammar import ToolPlan, compile_lark, json_after_thinking, tool_plan
from seed.serve.tools import (
    FORMATS,
    Piece,
    ToolFormat,
    assemble,
    detect_format,
    restore_markers,
)
from seed.serve.usage import RequestRecord
from seed.serve.worker import EngineProcess

T = TypeVar("T")


class LocalBackend:
    """`config.model` served by an engine process; returns once the model is loaded there."""

    def __init__(self, config: ServeConfig, engine: EngineProcess):
        """`engine` was spawned for `config` before this process imported the tokenizer's
        libraries (the two load side by side); it is stopped here if the model cannot be served."""
        self.engine = engine
        try:
            self._load(config)
        except BaseException:
            engine.stop()
            raise

    def _load(self, config: ServeConfig) -> None:
        if config.model is None:
            raise UserError("give a model directory to serve (or --upstream URL)")
        path = check_model_dir(config.model)
        self.tokenizer = load_tokenizer(path)  # refuses a model without a chat template
        try:
            text_cfg = AutoConfig.from_pretrained(str(path)).get_text_config()
        except (OSError, ValueError) as e:
            raise UserError(f"{path}/config.json cannot be read as a model config ({e}); "
                            "point at a saved model") from e
        self.model_name = config.model_name or path.name
        self.chat_template = template_source(self.tokenizer)
        self.tool_format = (detect_format(self.chat_template) if config.tool_parser == "auto"
                            else FORMATS[config.tool_parser])
        self.thinks = config.reasoning_parser == "think" or (
            config.reasoning_parser == "auto" and template_thinks(self.chat_template))
        self.marker_ids = marker_ids(self.tokenizer, self.tool_format)
        self.special_markers = special_markers(self.tokenizer, self.marker_ids)
        self.created = int(path.stat().st_mtime)
        key_id = check_watermark_key(config)  # the engine process reads the key itself
        self.watermark = None if key_id is None else fmt.ModelWatermark(
            key_id=key_id, gamma=config.watermark_gamma, delta=config.watermark_delta,
            context=config.watermark_context)
        weights = hash_path(path / "model.safetensors") or hash_path(path / "config.json") or ""
        self.fingerprint = f"fp_seed_{weights[:10]}"
        self.context = int(getattr(text_cfg, "max_position_embeddings", 0) or 2048)
        self.vocab_size = int(text_cfg.vocab_size)
        gen = read_generation_config(path)
        eos_ids = end_of_sequence_ids(self.tokenizer, gen)  # as the engine process reads them
        self.default_temperature = float(gen.get("temperature", 1.0)) if gen.get(
            "do_sample", True) else 0.0
        self.default_top_p = float(gen.get("top_p", 1.0))
        self.default_max_new = gen.get("max_new_tokens")
        # No prompt longer than this (in characters) can fit: each token spells at most this many.
        self.max_prompt_chars = self.context * longest_token_chars(self.tokenizer)
        # Templates and tokenization run here, one at a time, so the event loop never waits on a
        # long prompt (the tokenizer's settings are not safe to change from two threads at once).
        self._prompts = ThreadPoolExecutor(max_workers=1, thread_name_prefix="seed-prompt")
        try:  # the grammar tokenizer is built here while the engine process loads the model
            self.grammar = GrammarTokenizer(self.tokenizer, self.vocab_size, eos_ids)
            self.engine.wait_ready()
        except BaseException:
            self._prompts.shutdown(wait=False)
            raise
        self._token_text: dict[int, str] = {}
        backend_tok = getattr(self.tokenizer, "backend_tokenizer", None)
        self._byte_level = "ByteLevel" in repr(getattr(backend_tok, "decoder", None))

    def start(self) -> None:
        self.engine.start()

    def stop(self) -> None:
        self.engine.stop()
        self._prompts.shutdown(wait=False, cancel_futures=True)

    def queue_depth(self) -> int:
        return self.engine.waiting

    def running(self) -> int:
        return self.engine.running

    def problem(self) -> str | None:
        """Why the server cannot answer (the engine process stopped), or None when it can."""
        return self.engine.dead

    async def models(self) -> fmt.ModelList:
        return fmt.model_list(self.model_name, self.created, self.watermark)

    # -- requests ---------------------------------------------------------------------------------

    async def chat(self, req: ChatCompletionRequest, http: Request, rec: RequestRecord) -> Response:
        if refused := unsupported(req):  # a field Seed would otherwise drop
            raise bad_request(refused[1], refused[0])
        if req.model != self.model_name:
            raise model_not_found(req.model)
        tools = tool_plan(req, self.tool_format, "tools" in self.chat_template)
        prompt_ids = await self._chat_prompt(req, tools)
        # None: no reasoning parser; else whether the prompt leaves the reply inside <think>
        thinking = opens_thinking(self.decode(prompt_ids[-8:])) if self.thinks else None
        max_tokens = req.max_completion_tokens or req.max_tokens
        grammar = self._grammar(req, bool(thinking)) or self._tool_grammar(tools, bool(thinking))
        params = self._params(req, len(prompt_ids), max_tokens, bool(req.logprobs),
                              req.top_logprobs or 0, grammar, watermark=self._watermarks(req, http,
                                                                                        rec))
        run = EngineRun(self.engine, prompt_ids, params, grammar, rec)
        meta = fmt.response_meta("chatcmpl", self.model_name, self.fingerprint)
        split = thinking is not None or tools.format is not None
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            chunks = fmt.ChatChunks(meta, usage)
            body = (self._split_chunks(run, chunks, thinking, tools.format) if split
                    else self._chat_chunks(run, chunks))
            return EngineStream(body, [run], rec)
        [replies] = await collect_replies([run], http)
        if not split:
            return JSONResponse(fmt.chat_completion(meta, replies, req.logprobs, self,
                                                    run.usage()))
        said, used = self._split_replies(replies, thinking, tools.format, run.usage())
        return JSONResponse(fmt.chat_completion(meta, replies, req.logprobs, self, used, said))

    async def completions(self, req: CompletionRequest, http: Request,
                          rec: RequestRecord) -> Response:
        if refused := unsupported(req):  # a field Seed would otherwise drop
            raise bad_request(refused[1], refused[0])
        if req.model != self.model_name:
            raise model_not_found(req.model)
        if req.max_tokens == 0 and not req.echo:
            raise bad_request("max_tokens 0 asks for no completion, which only makes sense with "
                              "echo (to score the prompt); set echo or ask for at least 1 token.",
                              "max_tokens")
        # echo with logprobs scores the prompt too (how lm-evaluation-harness computes a
        # loglikelihood): every prompt token's logprob given the tokens before it
        scored = req.logprobs if req.echo and req.logprobs is not None else None
        prompts = _prompt_list(req.prompt)
        if len(prompts) * req.n > 16:
            raise bad_request("At most 16 completions per request (prompts x n).", "n")
        for p in prompts:
            if isinstance(p, str):
                self._check_chars(len(p), "prompt")
        runs = []
        for p, ids in zip(prompts, await self._off_loop(self._prompt_ids, prompts), strict=True):
            if any(not 0 <= t < self.vocab_size for t in ids):
                raise bad_request(f"Token ids must be in [0, {self.vocab_size}).", "prompt")
            params = self._params(req, len(ids), req.max_tokens, req.logprobs is not None,
                                  req.logprobs or 0, None, prompt_logprobs=scored,
                                  watermark=self._watermarks(req, http, rec))
            runs.append((p, ids, params))
        started: list[EngineRun] = []
        try:
            for _, ids, params in runs:
                started.append(EngineRun(self.engine, ids, params, None, rec))
        except APIError:
            for run in started:
                run.cancel()
            raise
        echoes = [(p if isinstance(p, str) else self.decode(p)) if req.echo else ""
                  for p, _, _ in runs]
        meta = fmt.response_meta("cmpl", self.model_name, self.fingerprint)
        if req.stream:
            usage = bool(req.stream_options and req.stream_options.include_usage)
            chunks = fmt.CompletionChunks(meta, usage)
            return EngineStream(self._completion_chunks(started, echoes, req.n, chunks), started,
                                 rec)
        choices = []
        for k, replies in enumerate(await collect_replies(started, http)):
            for i, r in enumerate(replies):
                lps = self._completion_logprobs(started[k], i, r["logprobs"], echoes[k],
                                                req.logprobs is not None)
                choices.append(fmt.completion_choice(k * req.n + i, echoes[k] + r["text"], lps,
                                                     r["finish_reason"]))
        return JSONResponse(fmt.completion(meta, choices,
                                           fmt.total_usage([r.usage() for r in started])))

    def _completion_logprobs(self, run: EngineRun, index: int, logprobs: list[TokenLogprob],
                             echo: str, asked: bool) -> fmt.CompletionLogprobs | None:
        """A completion choice's logprobs: the scored prompt's first when it was echoed."""
        if not asked:
            return None
        prompt = run.prompt_logprobs.get(index)
        if prompt is None:
            return fmt.completion_logprobs(logprobs, self)
        return fmt.echo_logprobs(run.prompt_ids[0], prompt, logprobs, self, len(echo))

    async def responses(self, req: rsp.ResponsesRequest, http: Request,
                        rec: RequestRecord) -> Response:
        """/v1/responses, answered by `chat` (translated there by `responses.py`, back by
        `responses_format.py` or, streamed, `responses_stream.py`)."""
        head = response_head(req, self.default_temperature, self.default_top_p)
        answer = await self.chat(rsp.chat_request(req), http, rec)
        if isinstance(answer, StreamingResponse):
            answer.body_iterator = response_events(head, answer.body_iterator)
            return answer
        return JSONResponse(from_chat_completion(head, json.loads(bytes(answer.body))))

    async def tokenize(self, req: TokenizeCompletionRequest | TokenizeChatRequest, http: Request,
                       rec: RequestRecord) -> Response:
        """vLLM's /tokenize: a text's ids, or a chat's as the chat route renders it."""
        self._check_tokenizer_request(req)
        ids = await self._off_loop(self._tokenize_ids, req)
        pieces = list(self.tokenizer.convert_ids_to_tokens(ids)) if req.return_token_strs else None
        return JSONResponse(fmt.tokenized(ids, self.context, pieces))

    async def detokenize(self, req: DetokenizeRequest, http: Request,
                         rec: RequestRecord) -> Response:
        """vLLM's /detokenize: the text of token ids (special tokens spelled out)."""
        self._check_tokenizer_request(req)
        if any(t >= self.vocab_size for t in req.tokens):
            raise bad_request(f"Token ids must be in [0, {self.vocab_size}).", "tokens")
        prompt = await self._off_loop(self.decode, req.tokens)
        return JSONResponse(fmt.DetokenizeResponse(prompt=prompt))

    def _check_tokenizer_request(self, req: BaseModel) -> None:
        model = getattr(req, "model", None)
        if model is not None and model != self.model_name:
            raise model_not_found(model)
        for name in req.model_extra or {}:
            raise bad_request(f"{name} is not supported by this server's /tokenize and "
                              "/detokenize; leave it out.", name)

    def _tokenize_ids(self, req: TokenizeCompletionRequest | TokenizeChatRequest) -> list[int]:
        """On the prompt thread. A chat without added special tokens is encoded exactly as the
        chat route encodes it (a special token typed in a message stays text); with them, its
        rendered text is encoded as a text is."""
        if isinstance(req, TokenizeCompletionRequest):
            return list(self.tokenizer(req.prompt, add_special_tokens=req.add_special_tokens)[
                "input_ids"])
        messages = [template_message(i, m) for i, m in enumerate(req.messages)]
        if req.add_generation_prompt and not req.add_special_tokens:
            return self._chat_ids((messages, None, {}))
        try:
            if req.add_special_tokens:
                text = self.tokenizer.apply_chat_template(
                    messages, add_generation_prompt=req.add_generation_prompt, tokenize=False)
                return list(self.tokenizer(text, add_special_tokens=True)["input_ids"])
            return list(self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=req.add_generation_prompt, tokenize=True,
                return_dict=False, sanitize_control_tokens=True))
        except Exception as e:  # the template itself refuses (e.g. roles must alternate)
            raise bad_request(f"The chat template refused these messages: {e}", "messages") from e

    # -- parameters -------------------------------------------------------------------------------

    def _grammar(self, req: ChatCompletionRequest, thinking: bool = False) -> str | None:
        """The `response_format` grammar; `thinking`: after the reasoning the prompt opened."""
        fmt = req.response_format
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_object":
            schema: dict[str, Any] = {"type": "object"}
        else:
            if fmt.json_schema is None:
                raise bad_request("response_format of type json_schema needs a `json_schema` "
                                  "object with a `schema`.", "response_format")
            schema = fmt.json_schema.schema_ or {}
        try:
            if thinking:
                return compile_lark(self.grammar, json_after_thinking(schema, self.marker_ids))
            return self.grammar.compile_json_schema(schema)
        except (ValueError, TypeError) as e:
            raise bad_request(f"response_format: the JSON schema cannot be enforced: {e}",
                              "response_format") from e

    async def _chat_prompt(self, req: ChatCompletionRequest, tools: ToolPlan) -> list[int]:
        """The chat's prompt ids: its messages, tools and template variables through the chat
        template, off the event loop once the characters could fit."""
        kwargs = self._template_kwargs(req)
        messages = [template_message(i, m) for i, m in enumerate(req.messages)]
        self._check_chars(sum(len(m.text()) + sum(len(c.function.arguments) for c in m.tool_calls
                                                  or []) for m in req.messages)
                          + (len(json.dumps(tools.template_tools)) if tools.template_tools else 0),
                          "messages")
        return await self._off_loop(self._chat_ids, (messages, tools.template_tools, kwargs))

    def _tool_grammar(self, tools: ToolPlan, thinking: bool) -> str | None:
        lark = tools.lark(thinking, self.marker_ids)
        if lark is None:
            return None
        try:
            return compile_lark(self.grammar, lark)
        except ValueError as e:
            raise bad_request(f"tools: a function's parameters cannot be enforced: {e}",
                              "tools") from e

    def _template_kwargs(self, req: ChatCompletionRequest) -> dict[str, Any]:
        """The client's chat template variables: none that the server sets itself, and none the
        template never reads (it would be ignored)."""
        kwargs = req.chat_template_kwargs or {}
        for key in kwargs:
            if key in TEMPLATE_OWN:
                raise bad_request(f"chat_template_kwargs.{key} is set by the server from the "
                                  "request itself; drop it.", f"chat_template_kwargs.{key}")
            if key not in self.chat_template:
                raise bad_request(f"This model's chat template does not use `{key}`; drop "
                                  f"chat_template_kwargs.{key}.", f"chat_template_kwargs.{key}")
        return kwargs

    def _params(self, req: ChatCompletionRequest | CompletionRequest, prompt_len: int,
                max_tokens: int | None, logprobs: bool, top: int,
                grammar: str | None, *, prompt_logprobs: int | None = None,
                watermark: bool = False) -> list[SamplingParams]:
        if prompt_len == 0:
            raise bad_request("The prompt is empty; give it some text.", "prompt")
        if prompt_len >= self.context:
            raise bad_request(f"This model's maximum context length is {self.context} tokens, but "
                              f"the prompt has {prompt_len} tokens; shorten it.", "messages")
        room = self.context - prompt_len
        if max_tokens is not None and max_tokens > room:
            raise bad_request(f"This model's maximum context length is {self.context} tokens, but "
                              f"{prompt_len + max_tokens} were requested ({prompt_len} in the "
                              f"prompt, {max_tokens} for the completion); lower max_tokens or "
                              "shorten the prompt.", "max_tokens")
        if max_tokens is None:
            max_tokens = min(room, self.default_max_new or room)
        stops = [req.stop] if isinstance(req.stop, str) else list(req.stop or [])
        temperature = self.default_temperature if req.temperature is None else req.temperature
        top_p = self.default_top_p if req.top_p is None else req.top_p
        if grammar:  # the engine process builds one matcher per sequence; refuse here, as a 400
            try:
                self.grammar.constraint(grammar)
            except ValueError as e:
                raise bad_request(f"response_format: {e}", "response_format") from e
        bias = self._logit_bias(req.logit_bias)
        return [SamplingParams(
            max_tokens=max_tokens, temperature=temperature, top_p=top_p or 1.0, stop=tuple(stops),
            seed=None if req.seed is None else (req.seed + i) % 2**64, logprobs=logprobs,
            top_logprobs=top,
            presence_penalty=req.presence_penalty or 0.0,
            frequency_penalty=req.frequency_penalty or 0.0,
            top_k=max(req.top_k or 0, 0), min_p=req.min_p or 0.0,
            repetition_penalty=1.0 if req.repetition_penalty is None else req.repetition_penalty,
            logit_bias=bias, prompt_logprobs=prompt_logprobs, watermark=watermark)
            for i in range(req.n)]

    def _watermarks(self, req: ChatCompletionRequest | CompletionRequest, http: Request,
                    rec: RequestRecord) -> bool:
        """Whether this request's replies are watermarked: always on a watermarking server,
        unless it sends `watermarking: false` and its key's policy lets it (else a 400)."""
        if self.watermark is None:
            return False
        if req.watermarking is False:
            if not opt_out_allowed(http.scope):
                raise bad_request("`watermarking: false` is not allowed for this API key: this "
                                  "server watermarks every reply unless the key's policy says "
                                  "watermark = \"optional\"; omit the field.", "watermarking")
            return False
        rec.watermark_key_id = self.watermark["key_id"]
        return True

    def _logit_bias(self, bias: dict[str, float] | None) -> dict[int, float] | None:
        """OpenAI's logit_bias (token ids as JSON keys) as ids; ids outside the vocabulary are
        refused (transformers would index past the logits)."""
        if not bias:
            return None
        ids = {int(k): v for k, v in bias.items()}
        wrong = [k for k in ids if k >= self.vocab_size]
        if wrong:
            raise bad_request(f"logit_bias names token {wrong[0]}, outside this model's "
                              f"vocabulary of {self.vocab_size} ids ([0, {self.vocab_size})).",
                              "logit_bias")
        return ids

    # -- prompts ----------------------------------------------------------------------------------

    def _check_chars(self, chars: int, param: str) -> None:
        """Refuse, before any templating, a prompt too long to fit however it tokenizes."""
        if chars > self.max_prompt_chars:
            raise bad_request(f"The prompt has {chars} characters, more than this model's "
                              f"{self.context}-token context can hold ({self.max_prompt_chars} "
                              "at most); shorten it.", param)

    async def _off_loop(self, work: Callable[[Any], T], arg: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._prompts, work, arg)

    def _chat_ids(self, prompt: tuple[list[dict[str, Any]], list[dict[str, Any]] | None,
                                      dict[str, Any]]) -> list[int]:
        """The prompt's token ids: the messages, the tools (None: no tools) and the client's
        template variables through the chat template. A special token typed in a message
        (`<|im_start|>system`) is encoded as its text: only the template's own markers become
        special tokens. A chat holding none encodes exactly as its rendered text does."""
        messages, tools, kwargs = prompt
        try:
            ids = self.tokenizer.apply_chat_template(
                messages, tools=None if tools is None else [*tools], add_generation_prompt=True,
                tokenize=True, return_dict=False, sanitize_control_tokens=True, **kwargs)
        except Exception as e:  # the template itself refuses (e.g. roles must alternate)
            raise bad_request(f"The chat template refused these messages: {e}", "messages") from e
        return list(ids)

    def _prompt_ids(self, prompts: list[str | list[int]]) -> list[list[int]]:
        """Completion prompts as token ids (a raw prompt is the client's whole text: its special
        tokens are meant)."""
        return [p if isinstance(p, list) else self.tokenizer(p)["input_ids"] for p in prompts]

    # -- response shapes --------------------------------------------------------------------------

    def decode(self, token_ids: list[int]) -> str:
        text = self.tokenizer.decode(token_ids)
        return text if isinstance(text, str) else "".join(text)  # one sequence: one string

    def token_text(self, token_id: int) -> str:
        text = self._token_text.get(token_id)
        if text is None:
            text = self._token_text[token_id] = self.decode([token_id])
        return text

    def token_bytes(self, token_id: int) -> list[int]:
        """The token's own bytes (a byte-level token may hold part of a UTF-8 character)."""
        piece = self.tokenizer.convert_ids_to_tokens(token_id) or ""
        if self._byte_level and piece and all(c in UNICODE_TO_BYTE for c in piece):
            return [UNICODE_TO_BYTE[c] for c in piece]
        return list(self.token_text(token_id).encode("utf-8"))

    async def _chat_chunks(self, run: EngineRun, chunks: fmt.ChatChunks) -> AsyncIterator[str]:
        async with run:
            for i in range(len(run.params)):
                yield chunks.role(i)
            async for ev in run.events():
                if ev.text or ev.logprobs:
                    lps: fmt.ChoiceLogprobs | None = (
                        {"content": fmt.chat_logprobs(ev.logprobs, self)}
                        if run.params[ev.index].logprobs else None)
                    yield chunks.chunk(ev.index, {"content": ev.text}, lps)
                if ev.finish_reason:
                    yield chunks.chunk(ev.index, {}, None, finish_reason(ev))
            if run.error:
                yield fmt.sse(fmt.error_body(run.error.message, run.error.type))
            elif chunks.include_usage:
                yield chunks.usage(run.usage())
            yield fmt.sse("[DONE]")

    async def _split_chunks(self, run: EngineRun, chunks: fmt.ChatChunks, thinking: bool | None,
                            tools: ToolFormat | None) -> AsyncIterator[str]:
        """`_chat_chunks` for a reply split into reasoning, content and tool calls: each piece its
        own chunk, in OpenAI's delta shapes; a reply that called tools finishes `tool_calls`."""
        n = len(run.params)
        splitters = [ReplySplitter(thinking, tools) for _ in range(n)]
        ids: list[list[int]] = [[] for _ in range(n)]
        called = [False] * n
        async with run:
            for i in range(n):
                yield chunks.role(i)
            async for ev in run.events():
                i = ev.index
                ids[i] += ev.token_ids
                text = self._marked(ev.text, ev.token_ids)
                pieces = splitters[i].feed(text) if text else []
                if ev.finish_reason:
                    pieces += splitters[i].finish()
                called[i] = called[i] or any(p.kind == "call" for p in pieces)
                lps: fmt.ChoiceLogprobs | None = (
                    {"content": fmt.chat_logprobs(ev.logprobs, self)}
                    if run.params[i].logprobs and ev.logprobs else None)
                deltas = [_delta(p) for p in pieces] or ([{"content": ""}] if lps else [])
                for k, delta in enumerate(deltas):
                    yield chunks.chunk(i, delta, lps if k == 0 else None)
                if ev.finish_reason:
                    reason = finish_reason(ev)
                    yield chunks.chunk(i, {}, None,
                                       "tool_calls" if called[i] and reason == "stop" else reason)
            if run.error:
                yield fmt.sse(fmt.error_body(run.error.message, run.error.type))
            elif chunks.include_usage:
                used = run.usage()
                if thinking is not None:
                    used = fmt.with_reasoning_tokens(used, sum(
                        self._reasoning_tokens(t, s) for t, s in zip(ids, splitters, strict=True)))
                yield chunks.usage(used)
            yield fmt.sse("[DONE]")

    def _split_replies(self, replies: list[fmt.Reply], thinking: bool | None,
                       tools: ToolFormat | None,
                       used: fmt.Usage) -> tuple[list[fmt.AssistantMessage], fmt.Usage]:
        """Each whole reply split as `_split_chunks` splits a stream (the same splitter, fed at
        once), and the usage with its reasoning tokens."""
        messages, reasoning_tokens = [], 0
        for r in replies:
            splitter = ReplySplitter(thinking, tools)
            text = self._marked(r["text"], r["token_ids"])
            parsed = assemble(splitter.feed(text) + splitter.finish())
            if parsed.tool_calls and r["finish_reason"] == "stop":
                r["finish_reason"] = "tool_calls"
            messages.append(fmt.assistant_message(parsed.content, parsed.tool_calls,
                                                  parsed.reasoning, thinking is not None))
            reasoning_tokens += self._reasoning_tokens(r["token_ids"], splitter)
        if thinking is not None:
            used = fmt.with_reasoning_tokens(used, reasoning_tokens)
        return messages, used

    def _marked(self, text: str, token_ids: list[int]) -> str:
        """The text with the markers the engine dropped as special tokens put back (a model whose
        markers are not special costs nothing here)."""
        if not self.special_markers:
            return text
        return restore_markers(text, token_ids, self.special_markers, self._decode_plain)

    def _decode_plain(self, token_ids: list[int]) -> str:
        text = self.tokenizer.decode(token_ids, skip_special_tokens=True)
        return text if isinstance(text, str) else "".join(text)

    def _reasoning_tokens(self, ids: list[int], splitter: ReplySplitter) -> int:
        """How many of a reply's tokens are its reasoning: all of them while it never closed
        `</think>`, else the fewest whose text holds it (found by halving)."""
        if splitter.reasoning is None or not splitter.reasoning.opened:
            return 0
        if splitter.reasoning.state == "inside":
            return len(ids)
        lo, hi = 1, len(ids)
        while lo < hi:
            mid = (lo + hi) // 2
            if CLOSE in self.tokenizer.decode(ids[:mid]):  # a special `</think>` too
                hi = mid
            else:
                lo = mid + 1
        return lo

    async def _completion_chunks(self, runs: list[EngineRun], echoes: list[str], n: int,
                                 chunks: fmt.CompletionChunks) -> AsyncIterator[str]:
        errors: list[APIError] = []
        try:
            async for piece in self._completion_events(runs, echoes, n, chunks.chunk, errors):
                yield piece
        finally:
            for run in runs:
                run.cancel()
        if errors:
            yield fmt.sse(fmt.error_body(errors[0].message, errors[0].type))
        elif chunks.include_usage:
            yield chunks.usage(fmt.total_usage([r.usage() for r in runs]))
        yield fmt.sse("[DONE]")

    async def _completion_events(self, runs: list[EngineRun], echoes: list[str], n: int,
                                 chunk: Callable[..., str],
                                 errors: list[APIError]) -> AsyncIterator[str]:
        offsets: dict[int, int] = {}
        for k, run in enumerate(runs):
            scored = run.params[0].prompt_logprobs is not None  # the echo waits for its logprobs
            if echoes[k] and not scored:
                for i in range(n):
                    yield chunk(k * n + i, echoes[k])
            async for ev in run.events():
                index = k * n + ev.index
                if ev.prompt_logprobs is not None:
                    yield chunk(index, echoes[k], fmt.echo_logprobs(
                        run.prompt_ids[0], ev.prompt_logprobs, [], self, len(echoes[k])))
                    offsets[index] = len(echoes[k])
                lps = None
                if run.params[ev.index].logprobs:
                    lps = fmt.completion_logprobs(ev.logprobs, self, offsets.get(index, 0))
                    offsets[index] = offsets.get(index, 0) + sum(len(t) for t in lps["tokens"])
                if ev.text or ev.logprobs:
                    yield chunk(index, ev.text, lps)
                if ev.finish_reason:
                    yield chunk(index, "", None, finish_reason(ev))
            if run.error:
                errors.append(run.error)
                return


def _delta(p: Piece) -> fmt.ChatDelta:
    if p.kind == "content":
        return {"content": p.text}
    if p.kind == "reasoning":
        return {"reasoning_content": p.text, "reasoning": p.text}
    if p.kind == "call":
        return {"tool_calls": [fmt.tool_call_start(p.index, p.id, p.name)]}
    return {"tool_calls": [fmt.tool_call_arguments(p.index, p.text)]}


def _prompt_list(prompt: str | list[str] | list[int] | list[list[int]]) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise bad_request("prompt must not be empty.", "prompt")
    ids = [p for p in prompt if isinstance(p, int)]  # the schema allows no mixed list
    if len(ids) == len(prompt):
        return [ids]
    return [p for p in prompt if not isinstance(p, int)]
