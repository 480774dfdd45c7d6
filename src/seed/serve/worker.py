"""The batching engine in its own process, and the API process's handle on it.

Why a second process: the engine's thread and the HTTP event loop shared one GIL, so every step
the loop spent turning ~32 events into SSE chunks was time the engine waited to run its own Python
(docs/LOG.md, "Serving throughput, profiling pass"). vLLM v1 splits its engine core off the same
way. The child (`_Core`) loads the model, the tokenizer, the grammar tokenizer and the watermark
key (`serve.watermark_key_file`: read here, never sent over the pipe), runs `Engine`,
and sends ONE message per engine step; its main thread blocks on the pipe for commands. The API
side (`EngineProcess`) reads that pipe inside the asyncio event loop (`loop.add_reader`, no reader
thread) and puts each event into its request's `asyncio.Queue`.

Messages are plain picklable tuples over one multiprocessing Pipe (a Unix socket pair):

    API -> engine   ("submit", tag, prompt_ids, [SamplingParams fields], grammar or None,
                     key label or None)
                    ("cancel", tag)   ("stop",)
    engine -> API   ("ready",)   ("failed", reason)
                    ("events", [(tag, index, text, token_ids, logprobs, finish_reason,
                                 prompt_logprobs)], running, waiting), logprobs as
                     (token_id, logprob, [(token_id, logprob)]) tuples, prompt_logprobs a list
                     of them or None
                    ("counts", running, waiting)

Back-pressure lives on the API side: at most max_running + max_queue sequences are outstanding
(QueueFull, a 429). A cancel frees the API side's count and, in the engine, the sequence's place
in the queue (or its slot) at once, so the two counts never disagree. If the engine process
dies, every open request gets an error event and later submits raise EngineDead (a 503); if the
API process dies, the engine's pipe closes and it exits. This module knows nothing about HTTP or
the OpenAI wire format (backend.py) nor how sequences are scheduled (engine.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import logging
import multiprocessing
import signal
import threading
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from seed.errors import UserError, first_line
from seed.quiet import quiet_progress_bars
from seed.recipe import ServeConfig
from seed.serve.engine_types import Event, QueueFull, SamplingParams, TokenLogprob
from seed.serve.model_files import end_of_sequence_ids, read_generation_config

if TYPE_CHECKING:  # the engine (torch, transformers) is imported by the engine process only
    from seed.protect.served import ServedLog
    from seed.serve.engine import Sequence

log = logging.getLogger(__name__)

_POLL_S = 0.1  # how often a busy engine process re-reports its counts when no step does
# The finish reason of a submit the engine's own queue refused (the API side answers 429). The
# API side's bound is below the engine's and a cancel empties the engine's queue at once, so this
# only guards against the two ever disagreeing.
QUEUE_FULL = "error: queue full"


class EngineDead(Exception):
    """The engine process has stopped; str(e) is the message for clients."""


@dataclass
class _Route:
    queue: asyncio.Queue
    open: set[int]  # indices of sequences with no finish event yet


class EngineProcess:
    """The API side: spawns the engine process, submits and cancels, routes events to queues.

    The engine process gets the serve config whole (`config.model`, the engine's limits, device,
    dtype, threads) and reads the rest from the model's files itself, so it can be spawned first
    and load while the API process imports its own modules and reads the tokenizer.
    """

    def __init__(self, config: ServeConfig):
        ctx = multiprocessing.get_context("spawn")  # never fork a process that has torch threads
        self.config = config
        self._conn, child_conn = ctx.Pipe()
        self._proc = ctx.Process(target=_engine_main, args=(child_conn, config),
                                 name="seed-engine", daemon=True)
        self._proc.start()
        child_conn.close()  # else the child's death would not close the pipe on our side
        self._limit = config.max_running + config.max_queue
        self._routes: dict[int, _Route] = {}
        self._tags = itertools.count()
        self._outstanding = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = self._stopped = False
        self.running = 0
        self.waiting = 0
        self.dead: str | None = None

    def wait_ready(self) -> None:
        """Block until the model is loaded; UserError if it fails to load or the process dies."""
        try:  # a dead child closes its end of the pipe: EOF, never a hang
            msg = self._conn.recv()
        except (EOFError, OSError):
            self._proc.join(timeout=5)
            msg = ("failed", f"the engine process exited, {self._how_it_ended()}; check free "
                   "memory")
        if msg[0] != "ready":
            self.stop()
            raise UserError(f"{self.config.model}: the model failed to load ({msg[1]}); check "
                            "that the directory holds the model's weights and config")
        self._ready = True

    def start(self) -> None:
        """Read the engine's messages on the running event loop from now on."""
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._conn.fileno(), self._on_readable)

    def stop(self) -> None:
        """Stop the engine process (politely, then by force); safe to call twice."""
        if self._stopped:
            return
        self._stopped = True
        self._unwatch()
        if self._ready and self.dead is None:
            with contextlib.suppress(OSError):
                self._conn.send(("stop",))
            self._proc.join(timeout=30)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout=5)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()
        self._conn.close()

    def submit(self, prompt_ids: list[int], params: list[SamplingParams], grammar: str | None,
               queue: asyncio.Queue, key_label: str | None = None) -> int:
        """Queue one sequence per params; their Events go to `queue`. Returns the tag to cancel.

        Raises QueueFull at max_running + max_queue outstanding sequences, EngineDead once the
        engine process has stopped. `params` carry no constraint: the engine process builds one
        per sequence from `grammar`. `key_label` (None: a server without keys) names the file
        the watermarked replies' windows go to when `serve.watermark_served_dir` is set.
        """
        if self.dead is not None:
            raise EngineDead(self.dead)
        if self._outstanding + len(params) > self._limit:
            raise QueueFull
        tag = next(self._tags)
        fields = [{f.name: getattr(p, f.name) for f in dataclasses.fields(p)
                   if f.name != "constraint"} for p in params]
        served_to = None
        if self.config.watermark_served_dir is not None and any(p.watermark for p in params):
            from seed.protect.served import ANONYMOUS

            served_to = key_label or ANONYMOUS
        try:
            self._conn.send(("submit", tag, prompt_ids, fields, grammar, served_to))
        except OSError:
            self._died()
            raise EngineDead(self.dead) from None
        self._routes[tag] = _Route(queue, set(range(len(params))))
        self._outstanding += len(params)
        return tag

    def cancel(self, tag: int) -> None:
        """Stop the tag's unfinished sequences (the client went away); a no-op once all ended."""
        route = self._routes.pop(tag, None)
        if route is None or not route.open:
            return
        self._outstanding -= len(route.open)
        with contextlib.suppress(OSError):  # a dead engine is noticed by the reader
            self._conn.send(("cancel", tag))

    # -- the event loop's reader ------------------------------------------------------------------

    def _on_readable(self) -> None:
        try:
            while self._conn.poll():
                msg = self._conn.recv()
                if msg[0] == "events":
                    self._route(msg[1])
                self.running, self.waiting = msg[-2], msg[-1]
        except (EOFError, OSError):
            self._died()

    def _route(self, events: list[tuple]) -> None:
        for tag, index, text, token_ids, logprobs, finish, prompt in events:
            route = self._routes.get(tag)
            if route is None:  # cancelled while this step ran
                continue
            lps = [TokenLogprob(t, lp, top) for t, lp, top in logprobs]
            scored = None if prompt is None else [TokenLogprob(t, lp, top) for t, lp, top in prompt]
            route.queue.put_nowait(Event(index, text, token_ids, lps, finish, scored))
            if finish and index in route.open:
                route.open.discard(index)
                self._outstanding -= 1
                if not route.open:
                    del self._routes[tag]

    def _died(self) -> None:
        self._unwatch()
        self._proc.join(timeout=1)
        self.dead = (f"The model's engine process stopped ({self._how_it_ended()}); restart "
                     "`seed serve`.")
        log.error(self.dead)
        for route in self._routes.values():
            for index in sorted(route.open):
                route.queue.put_nowait(Event(index, "", [], [], "error: engine process stopped"))
        self._routes.clear()
        self._outstanding = self.running = self.waiting = 0

    def _unwatch(self) -> None:
        if self._loop is not None and not self._loop.is_closed():
            self._loop.remove_reader(self._conn.fileno())
        self._loop = None

    def _how_it_ended(self) -> str:
        code = self._proc.exitcode
        if code is None:
            return "its pipe closed"
        if code < 0:
            return f"killed by signal {-code}"
        return f"exit code {code}"


# -- the engine process ---------------------------------------------------------------------------


@dataclass
class _Tagged:
    n: int
    done: int = 0
    seqs: list[Sequence] = field(default_factory=list)
    served_to: str | None = None  # the key label its watermarked replies are recorded for
    replies: list[list[int]] = field(default_factory=list)  # finished ones' ids, to record


def _engine_main(conn: Connection, config: ServeConfig) -> None:
    """The engine process: load, say ready (or why not), then serve commands until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the API process's to handle
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        core = _Core(conn, config)
    except Exception as e:  # reported as one line by `seed serve`, not a traceback
        reason = first_line(e)
        with contextlib.suppress(OSError):
            conn.send(("failed", reason))
        return
    core.serve()


class _Core:
    """The model, its engine and the pipe, in the engine process."""

    def __init__(self, conn: Connection, config: ServeConfig):
        import torch
        from transformers import AutoModelForCausalLM

        from seed.endpoints.local import load_tokenizer
        from seed.serve.engine import Engine
        from seed.serve.grammar import GrammarTokenizer

        if config.model is None:
            raise ValueError("the serve config names no model directory")
        if config.threads:
            torch.set_num_threads(config.threads)
        device = config.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(
            config.dtype, torch.bfloat16 if device.startswith("cuda") else torch.float32)
        tokenizer = load_tokenizer(config.model)
        eos_ids = end_of_sequence_ids(tokenizer, read_generation_config(config.model))
        with quiet_progress_bars():
            model = AutoModelForCausalLM.from_pretrained(str(config.model), dtype=dtype)
        # transformers wraps `.to` in a decorator whose stub types the device as a model
        model = model.to(device).eval()  # type: ignore[arg-type]
        vocab_size = model.config.get_text_config().vocab_size
        self.grammar = GrammarTokenizer(tokenizer, vocab_size, eos_ids)
        watermark = None
        self.served: ServedLog | None = None  # the served-windows log (seed.protect.served)
        if config.watermark_key_file is not None:  # the key stays in this process and the file
            from seed.protect.served import ServedLog
            from seed.protect.watermark import Watermark, read_key

            key = read_key(config.watermark_key_file)
            watermark = Watermark.from_key(key, gamma=config.watermark_gamma,
                                           delta=config.watermark_delta,
                                           context=config.watermark_context)
            if config.watermark_served_dir is not None:
                self.served = ServedLog(config.watermark_served_dir, key,
                                        config.watermark_context)
        # The API side bounds what is outstanding and a cancel leaves this queue at once: twice
        # that bound here is only a guard (QUEUE_FULL if it is ever reached).
        self.engine = Engine(model, tokenizer, eos_ids=eos_ids, max_running=config.max_running,
                             max_waiting=2 * (config.max_running + config.max_queue),
                             max_prefill_tokens=config.max_prefill_tokens,
                             on_events=self._on_events, watermark=watermark)
        self.conn = conn
        self.tags: dict[int, _Tagged] = {}
        self._send_lock = threading.Lock()
        self._reported = (0, 0)
        self._closed = False

    def serve(self) -> None:
        self.engine.start()
        self._send(("ready",))
        try:
            while True:
                counts = (self.engine.running, self.engine.queue_depth)
                if counts != self._reported:
                    self._send(("counts", *counts), counts)
                idle = counts == (0, 0) and self._reported == (0, 0)
                if not self.conn.poll(None if idle else _POLL_S):
                    continue
                msg = self.conn.recv()
                if msg[0] == "stop":
                    break
                if msg[0] == "submit":
                    self._submit(*msg[1:])
                elif msg[0] == "cancel":
                    entry = self.tags.pop(msg[1], None)
                    if entry is not None:
                        self.engine.cancel(entry.seqs)
                        self._record_served(entry, entry.seqs)
        except (EOFError, OSError):
            pass  # the API process is gone: stop rather than keep a core busy for nobody
        finally:
            self.engine.stop()
            for entry in list(self.tags.values()):  # what was served of the unfinished ones
                self._record_served(entry, entry.seqs)
            if self.served is not None:
                self.served.close()

    def _submit(self, tag: int, prompt_ids: list[int], fields: list[dict[str, Any]],
                grammar: str | None, served_to: str | None) -> None:
        entry = self.tags[tag] = _Tagged(len(fields), served_to=served_to)
        try:
            params = [SamplingParams(**f, constraint=self.grammar.constraint(grammar)
                                     if grammar else None) for f in fields]
            entry.seqs = self.engine.submit(prompt_ids, params, tag=tag)
        except Exception as e:  # QueueFull, or a grammar the API side already checked
            log.warning("submit failed: %s", e)
            self.tags.pop(tag, None)
            reason = QUEUE_FULL if isinstance(e, QueueFull) else f"error: {e}"
            self._send(("events", [(tag, i, "", [], [], reason, None) for i in range(len(fields))],
                        self.engine.running, self.engine.queue_depth))

    def _on_events(self, posts: list[tuple[Sequence, Event]]) -> None:
        """The engine's sink, on its thread: this step's events as one message."""
        out = []
        for s, e in posts:
            out.append((s.tag, e.index, e.text, e.token_ids,
                        [(lp.token_id, lp.logprob, lp.top) for lp in e.logprobs],
                        e.finish_reason, None if e.prompt_logprobs is None else
                        [(lp.token_id, lp.logprob, lp.top) for lp in e.prompt_logprobs]))
            if e.finish_reason:
                entry = self.tags.get(s.tag)
                if entry is not None:
                    entry.done += 1
                    if entry.served_to is not None and s.params.watermark:
                        entry.replies.append(list(s.out_ids))
                    if entry.done >= entry.n:
                        self.tags.pop(s.tag, None)
                        self._record_served(entry)  # before the last event is sent
        counts = (self.engine.running, self.engine.queue_depth)  # the main loop corrects them
        self._send(("events", out, *counts), counts)

    def _record_served(self, entry: _Tagged, seqs: list[Sequence] | None = None) -> None:
        """Append a request's watermarked replies to its key label's served-windows file: the
        finished ones', or (`seqs`: a request cancelled, or open when the server stops) what its
        sequences have sampled so far. Once per request, whichever path ends it."""
        label, entry.served_to = entry.served_to, None
        if label is None or self.served is None:
            return
        replies = entry.replies if seqs is None else [
            list(s.out_ids) for s in seqs if s.params.watermark]
        if replies:
            self.served.record(label, replies)

    def _send(self, msg: tuple, counts: tuple[int, int] | None = None) -> None:
        with self._send_lock:
            if self._closed:
                return
            try:
                self.conn.send(msg)
            except OSError:  # the API process is gone; the main thread sees EOF and stops
                self._closed = True
                return
            if counts is not None:
                self._reported = counts
