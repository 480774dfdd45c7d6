"""The image batching scheduler: requests join the running denoising batch at step boundaries.

One thread beside the event loop owns the pipeline (`seed.endpoints.diffusion.ImagePipeline`,
its stepwise API). Each turn it admits waiting jobs (a request's `n` images, whole) while the
running rows stay within `serve.max_images_running` (a job larger than that runs alone), encodes
their prompts and draws their seeded noise (`pipeline.start`), then takes one batched forward
(`pipeline.step`) over every running row of one size (sizes take turns), whatever step each row is
at. A finished row's image, and a streamed request's partial images at evenly spaced steps, go
back to the request's asyncio queue (`call_soon_threadsafe`). A job whose client left is dropped at
the next step boundary. More than `serve.max_images_queue` images waiting is a 429, as for text.

Why a thread and not the text path's engine process (`worker.py`): a text engine runs Python per
token for every sequence, and two processes keep that off the GIL the HTTP side needs; a denoising
step is one large forward in torch's kernels (which release the GIL) for the whole batch, a few
per second, and a request costs the HTTP side a few microseconds per event. Rows hold tensors the
pipeline made (noise, text embeddings), which would otherwise be pickled between processes. Keys,
the usage log, key policies and /metrics stay the app's (`app.py`), shared with the text path;
this module adds only the image counters (`ImageMetrics`). It knows nothing about HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from seed.serve.errors import APIError, overloaded
from seed.serve.metrics import Counter, Histogram

log = logging.getLogger(__name__)

BATCH_BUCKETS = (1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)


class ImageMetrics:
    """The image families of /metrics: images, batched denoising forwards, and their batch sizes."""

    def __init__(self) -> None:
        self.images = Counter("seed_images_generated_total", "Images generated (finished rows).")
        self.steps = Counter("seed_denoising_steps_total",
                             "Batched denoising forwards (one per step over every row in it).")
        self.row_steps = Counter("seed_denoising_row_steps_total",
                                 "Denoising steps summed over rows (each image's steps).")
        self.batch = Histogram("seed_image_batch_size", "Rows in each batched denoising forward.",
                               BATCH_BUCKETS)

    def render(self) -> str:
        lines: list[str] = []
        for m in (self.images, self.steps, self.row_steps, self.batch):
            lines += m.render()
        return "\n".join(lines) + "\n"


@dataclass
class ImageEvent:
    """What a job hears: a `partial` image (its `partial` index), a finished `image`, or an
    `error`; `index` is the image's place in the request."""

    kind: str
    index: int
    image: Any = None
    partial: int = 0
    message: str = ""


@dataclass
class ImageJob:
    """One request's images: its draw requests, how many partial images each streams, and the
    queue its events arrive on (made on the event loop that waits for them)."""

    requests: list[Any]
    partial_images: int
    loop: asyncio.AbstractEventLoop
    guides: list[Any] | None = None  # per image: an edit's `begin(row)` and `after_step(row)`
    events: asyncio.Queue[ImageEvent] = field(default_factory=asyncio.Queue)
    cancelled: bool = False

    def tell(self, event: ImageEvent) -> None:
        """From the engine thread: hand `event` to the waiting request."""
        with contextlib.suppress(RuntimeError):  # the loop has closed: nobody is waiting
            self.loop.call_soon_threadsafe(self.events.put_nowait, event)


@dataclass
class _Live:
    """A running row: its job, its image's index there, the pipeline's row, and its steps."""

    job: ImageJob
    index: int
    row: Any
    total: int
    done_steps: int = 0
    previews: tuple[int, ...] = ()


def preview_steps(total: int, partial_images: int) -> tuple[int, ...]:
    """The steps (1 .. total-1) after which a streamed image's partial images are sent: evenly
    spaced, fewer when the image has too few steps for all of them."""
    at = {round(total * (k + 1) / (partial_images + 1)) for k in range(partial_images)}
    return tuple(sorted(s for s in at if 0 < s < total))


class ImageEngine:
    """Runs `pipeline` on its own thread; `submit` from the event loop."""

    def __init__(self, pipeline: Any, *, max_running: int, max_queue: int,
                 metrics: ImageMetrics) -> None:
        self.pipeline = pipeline
        self.max_running, self.max_queue = max_running, max_queue
        self.metrics = metrics
        self._waiting: deque[ImageJob] = deque()
        self._live: list[_Live] = []
        self._turn = 0  # which size steps next, when rows of several sizes run
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.dead: str | None = None

    @property
    def waiting(self) -> int:
        """Images waiting to join the batch."""
        with self._cond:
            return sum(len(j.requests) for j in self._waiting)

    @property
    def running(self) -> int:
        """Images in the running batch."""
        return len(self._live)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="seed-images", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def submit(self, requests: list[Any], partial_images: int = 0,
               guides: list[Any] | None = None) -> ImageJob:
        """Queue a request's images; a 429 when the queue holds `max_queue` images already.
        `guides` (seed.serve.image_edits) start each row from a given image and may hold part of
        it after every step."""
        if self.dead:
            raise APIError(503, self.dead, type_="server_error", code="engine_unavailable")
        job = ImageJob(list(requests), partial_images, asyncio.get_running_loop(), guides)
        with self._cond:
            queued = sum(len(j.requests) for j in self._waiting)
            if queued and queued + len(job.requests) > self.max_queue:
                raise overloaded()
            self._waiting.append(job)
            self._cond.notify_all()
        return job

    def cancel(self, job: ImageJob) -> None:
        """The client left: its rows leave the batch at the next step boundary."""
        job.cancelled = True
        with self._cond:
            if job in self._waiting:
                self._waiting.remove(job)

    # -- the engine thread ------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._serve()
        except BaseException as e:  # a bug here: every waiting request hears it, /health is 503
            log.exception("the image engine stopped")
            self.dead = f"The image engine stopped: {e}"
            with self._cond:
                jobs = [*{id(r.job): r.job for r in self._live}.values(), *self._waiting]
                self._waiting.clear()
            for job in jobs:
                for i in range(len(job.requests)):
                    job.tell(ImageEvent("error", i, message=self.dead))
            raise

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and not self._waiting and not self._live:
                    self._cond.wait()
                if self._stopping:
                    break
                admitted = self._admit()
            for job in admitted:
                self._start(job)
            self._live = [r for r in self._live if not r.job.cancelled]
            if self._live:
                self._step(self._next_batch())
        for r in self._live:
            r.job.tell(ImageEvent("error", r.index, message="The server is stopping."))

    def _admit(self) -> list[ImageJob]:
        """Waiting jobs that fit beside the running rows, oldest first (the lock is held)."""
        admitted: list[ImageJob] = []
        running = len(self._live)
        while self._waiting:
            job = self._waiting[0]
            if running and running + len(job.requests) > self.max_running:
                break
            self._waiting.popleft()
            admitted.append(job)
            running += len(job.requests)
        return admitted

    def _start(self, job: ImageJob) -> None:
        try:
            rows = self.pipeline.start(job.requests)
        except Exception as e:  # a prompt the pipeline cannot encode: this job fails, not the rest
            log.exception("image pipeline could not start a request")
            for i in range(len(job.requests)):
                job.tell(ImageEvent("error", i, message=f"The image pipeline failed: {e}"))
            return
        for i, row in enumerate(rows):
            if job.guides is not None:
                job.guides[i].begin(row)  # an edit starts part way, from the given image
            total = int(row.steps - row.index)
            self._live.append(_Live(job, i, row, total,
                                    previews=preview_steps(total, job.partial_images)))

    def _next_batch(self) -> list[_Live]:
        """Every running row of one size; sizes take turns."""
        sizes = sorted({_size(r.job.requests[r.index]) for r in self._live})
        size = sizes[self._turn % len(sizes)]
        self._turn += 1
        return [r for r in self._live if _size(r.job.requests[r.index]) == size]

    def _step(self, batch: list[_Live]) -> None:
        try:
            self.pipeline.step([r.row for r in batch])
        except Exception as e:
            log.exception("image pipeline step failed")
            for r in batch:
                r.job.tell(ImageEvent("error", r.index, message=f"The image pipeline failed: {e}"))
            self._live = [r for r in self._live if r not in batch]
            return
        self.metrics.steps.inc()
        self.metrics.row_steps.inc(len(batch))
        self.metrics.batch.observe(len(batch))
        finished = []
        for r in batch:
            r.done_steps += 1
            if r.job.guides is not None:
                r.job.guides[r.index].after_step(r.row)
            if r.row.done:
                finished.append(r)
                r.job.tell(ImageEvent("image", r.index, self.pipeline.image(r.row)))
                self.metrics.images.inc()
            elif r.done_steps in r.previews:
                r.job.tell(ImageEvent("partial", r.index, self.pipeline.preview(r.row),
                                      partial=r.previews.index(r.done_steps)))
        if finished:
            self._live = [r for r in self._live if r not in finished]


def _size(req: Any) -> tuple[int, int]:
    return int(req.width), int(req.height)
