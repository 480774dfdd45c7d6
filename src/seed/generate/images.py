"""The generate stage for image teachers: prompts in, image records (and their files) out.

Three teachers draw:
- `shapes` (seed.endpoints.shapes): `train.jsonl` holds `generate.num_records` images of training
  compositions, `eval.jsonl` `generate.eval_prompts` images of held-out compositions (never in
  training); each record's `meta.spec` is what was drawn. Written afresh each time (it is cheap
  and deterministic).
- `images` (seed.endpoints.images_api): prompts from `generate.prompts` files (as for text, also
  `--prompts`) through the engine: its limits, retries, SQLite cache, budget (`--max-cost`, priced
  per image or per token), and resume: a rerun skips prompts already in `train.jsonl`, and answers
  cached but not yet written are written without a request. A moderation refusal fails its
  prompt into `failed.jsonl` (a rerun tries it again) and the run goes on.
- `pipeline`: a local diffusers pipeline directory (seed.endpoints.diffusion.ImagePipeline) draws
  the prompts from files, seeded per prompt, in batches.

Prompts for the last two come from `generate.prompts` files; with `[generate.expand]` a chat
teacher also writes `variations` detailed prompts from each (through the same engine and cache,
so a rerun asks it nothing again; each variation's source names that teacher).

Every image is stored (seed.generate.image_files) before its record's line is appended, duplicates
(sha256, and dHash within `generate.filters.image_hamming` bits) are dropped, and
`images/metadata.jsonl` indexes the records for `datasets`' imagefolder. This module does not train
or evaluate; it knows prompts, teachers and files.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterator
from functools import partial
from io import BytesIO
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from seed.endpoints.factory import make_endpoint
from seed.endpoints.images_api import ImagesEndpoint, check_params, decode_completion
from seed.endpoints.shapes import Shapes, Split
from seed.errors import UserError
from seed.files import hash_json, seal_jsonl, write_json_atomic
from seed.generate import sources
from seed.generate.budget import Budget
from seed.generate.cache import RequestCache
from seed.generate.engine import Request, Result, Stats, complete_all, run
from seed.generate.filters import PromptFilter, is_refusal
from seed.generate.image_files import (
    Dedup,
    ImageRecordWriter,
    check_records_dir,
    prune_images,
    seen_images,
    write_imagefolder_metadata,
)
from seed.generate.progress import live, summary
from seed.generate.teacher import make_limits
from seed.recipe import GenerateConfig, ImagesEndpointConfig, PipelineTeacherConfig, ShapesConfig
from seed.records import (
    ImageRecord,
    Provenance,
    Source,
    Teacher,
    read_image_records,
    seal_records,
    whole_prompts,
)
from seed.runs import now_iso

RECORDS, EVAL, FAILED, CACHE, SUMMARY = ("train.jsonl", "eval.jsonl", "failed.jsonl",
                                         "cache.sqlite", "summary.json")
SHAPES_VERSION = "1"  # bump when the drawing changes, so records say which drawing made them


def png_bytes(image: Any) -> bytes:
    buf = BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def metadata(out_dir: Path) -> int:
    """Rewrite `images/metadata.jsonl` for the records in `out_dir`."""
    return write_imagefolder_metadata(out_dir, {"train": out_dir / RECORDS,
                                                "eval": out_dir / EVAL})


# -- shapes ------------------------------------------------------------------------------------

def shapes_teacher(config: ShapesConfig) -> Teacher:
    return Teacher(route="shapes", host=None, model_requested="seed-shapes",
                   model_returned=f"seed-shapes=={SHAPES_VERSION}",
                   params=config.model_dump(exclude={"kind"}))


def _write_shapes(shapes: Shapes, specs: Iterator[dict[str, Any]], count: int, path: Path,
                  purpose: Literal["train", "eval"], source: Source, dedup: Dedup) -> int:
    """Draw specs into a fresh records file (written beside, then renamed over `path`)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    teacher = shapes_teacher(shapes.config)
    written = 0
    with ImageRecordWriter(tmp) as out:
        for spec in specs:
            if written == count:
                break
            image = out.store(png_bytes(shapes.draw(spec)))
            if dedup.keep(image) is not None:
                continue
            out.write([ImageRecord.new(
                shapes.caption(spec), image,
                Provenance(teacher=teacher, source=source, purpose=purpose),
                {"spec": spec, "split": purpose})])
            written += 1
    tmp.replace(path)
    return written


def _spec_stream(shapes: Shapes, split: Split, count: int, seed: int
                 ) -> Iterator[dict[str, Any]]:
    """Specs of a split, more than asked for, so dropped duplicates can be replaced."""
    yield from shapes.specs(split, 2 * count + 16, seed)


def generate_shapes(config: GenerateConfig, seed: int, out_dir: Path) -> dict[str, Any]:
    """`train.jsonl` and `eval.jsonl` of shapes images in `out_dir` (see the module docstring)."""
    if not isinstance(config.teacher, ShapesConfig):
        raise UserError(f"generate.teacher.kind = \"{config.teacher.kind}\": this writes "
                        "shapes images")
    shapes = Shapes(config.teacher)
    out_dir.mkdir(parents=True, exist_ok=True)
    check_records_dir(out_dir)
    dedup = Dedup(config.filters.image_hamming)
    source = Source(kind="shapes", name="shapes", version=SHAPES_VERSION, seed=seed,
                    config=config.teacher.model_dump(exclude={"kind"}))
    n_train = _write_shapes(shapes, _spec_stream(shapes, "train", config.num_records, seed),
                            config.num_records, out_dir / RECORDS, "train", source, dedup)
    n_eval = 0
    if config.eval_prompts:
        n_eval = _write_shapes(
            shapes, _spec_stream(shapes, "eval", config.eval_prompts,
                                 seed + config.eval_seed_offset),
            config.eval_prompts, out_dir / EVAL, "eval", source, dedup)
    else:
        (out_dir / EVAL).unlink(missing_ok=True)
    prune_images(out_dir, [out_dir / RECORDS, out_dir / EVAL])
    metadata(out_dir)
    return {"train_records": n_train, "eval_records": n_eval,
            "duplicates_dropped": dedup.dropped,
            "train_compositions": len(shapes.compositions("train")),
            "eval_compositions": len(shapes.compositions("eval"))}


# -- prompts, failures -----------------------------------------------------------------------

class Failures:
    """`failed.jsonl`: one line per prompt that failed (reason, attempts), appended."""

    def __init__(self, path: Path) -> None:
        seal_jsonl(path)
        self._f = path.open("ab", buffering=0)
        self.count = 0

    def add(self, key: str, prompt: str, reason: str, attempts: int) -> None:
        line = json.dumps({"prompt_key": key, "prompt": prompt, "reason": reason,
                           "attempts": attempts, "at": now_iso()}, ensure_ascii=False)
        self._f.write((line + "\n").encode())
        self.count += 1

    def close(self) -> None:
        self._f.close()


def file_prompts(config: GenerateConfig) -> list[sources.Prompt]:
    """Every prompt of the configured files, in order (checked, not yet filtered)."""
    if not config.prompts:
        raise UserError("no prompts: add [[generate.prompts]] with a path or pass --prompts FILE "
                        "(one prompt a line, JSONL with `prompt`, or CSV)")
    return [prompt for p in config.prompts
            for prompt in sources.read_prompts(p.path, p.format, p.column, p.license, p.name)]


def kept_prompts(config: GenerateConfig, prompts: list[sources.Prompt]) -> list[sources.Prompt]:
    """The prompts the filters keep, up to `num_records` when the recipe sets it."""
    f = config.filters
    keep = PromptFilter(f.exact_duplicates, f.near_duplicates, f.min_prompt_chars,
                        f.max_prompt_chars)
    limit = config.num_records if "num_records" in config.model_fields_set else None
    out = [p for p in prompts if keep.reason(p.messages[-1]["content"]) is None]
    return out if limit is None else out[:limit]


EXPAND = ("Write {k} different prompts for a text-to-image model, each a more detailed "
          "description of the picture below (its subject, setting, colours, composition and "
          "style) in one sentence. Write them as a numbered list, one per line, and nothing "
          "else.\n\nPicture: {prompt}")
_ITEM = re.compile(r"^\s*(?:\d+\s*[.)]|[-*])\s*")


def _variations(answer: str | None, k: int) -> list[str]:
    lines = [_ITEM.sub("", x).strip() for x in (answer or "").splitlines()]
    return [x for x in lines if len(x) >= 3 and not is_refusal(x)][:k]


async def expand_prompts(config: GenerateConfig, prompts: list[sources.Prompt],
                         cache: RequestCache) -> list[sources.Prompt]:
    """Each prompt (when `keep_original`) and the chat teacher's variations of it, through the
    engine and the request cache (a rerun asks nothing again). Each variation's source names the
    chat teacher and the prompt it came from."""
    ex = config.expand
    if ex is None:
        return prompts
    endpoint = make_endpoint(ex.teacher, "generate.expand.teacher",
                             timeout=config.limits.timeout)
    asks = [[{"role": "user", "content": EXPAND.format(k=ex.variations,
                                                       prompt=p.messages[-1]["content"])}]
            for p in prompts]
    try:
        await endpoint.check_reachable()
        answers = await complete_all(asks, endpoint, make_limits(config), dict(ex.params), cache)
    finally:
        await endpoint.aclose()
    if prompts and not any(answers):
        raise UserError(f"generate.expand.teacher answered none of {len(prompts)} prompts; "
                        "check it is up and serves that model")
    teacher = endpoint.teacher().model_dump(mode="json", exclude_none=True)
    out: list[sources.Prompt] = []
    for p, answer in zip(prompts, answers, strict=True):
        if ex.keep_original:
            out.append(p)
        src = Source(kind="expand", name=p.source.name, license=p.source.license,
                     config={"teacher": teacher, "from": p.messages[-1]["content"]})
        out += [sources.Prompt([{"role": "user", "content": t}], src)
                for t in _variations(answer, ex.variations)]
    return out


def answered(path: Path, job: str) -> set[str]:
    """Prompts of this job wholly in the records file (each image file checked)."""
    if not path.exists():
        return set()
    return whole_prompts(read_image_records(path), job)


# -- the HTTP Images API teacher -------------------------------------------------------------

class HttpImageGeneration:
    """One `seed generate` with an Images API teacher (checks everything when built)."""

    def __init__(self, config: GenerateConfig, seed: int, out_dir: Path,
                 console: Console) -> None:
        if not isinstance(config.teacher, ImagesEndpointConfig):
            raise UserError(f"generate.teacher.kind = \"{config.teacher.kind}\": this asks an "
                            "images teacher")
        t = config.teacher
        self.config, self.seed, self.out_dir, self.console = config, seed, out_dir, console
        self.params = dict(config.params)
        check_params(t.model, self.params, config.samples)
        if config.samples > 1:
            self.params["n"] = config.samples
        self.total = sum(sources.check_prompts(p.path, kind=p.format, column=p.column)
                         for p in config.prompts)
        if not config.prompts:
            raise UserError("no prompts: add [[generate.prompts]] with a path or pass "
                            "--prompts FILE")
        self.endpoint = ImagesEndpoint(t.base_url, t.model, api_key_env=t.api_key_env,
                                       api_key_file=t.api_key_file, headers=t.headers,
                                       route=t.route, timeout=config.limits.timeout,
                                       max_connections=config.limits.concurrency * 2)
        self.teacher = self.endpoint.teacher().model_copy(update={"params": self.params})
        self.job = hash_json({"endpoint": self.endpoint.identity(), "params": self.params})[:16]
        self.limits = make_limits(config)
        self.budget = Budget(t.model, config.prices or None, config.max_cost, config.max_tokens,
                             image_params=self.params, image_prices=config.image_prices or None)
        self.stats = Stats()
        self.written = self.already = 0

    def _records(self, prompt: sources.Prompt, result: Result) -> list[ImageRecord]:
        out = []
        teacher = self.teacher.model_copy(update={
            "requested_at": result.requested_at, "responded_at": result.responded_at})
        for i, c in enumerate(result.completions):
            raw, revised = decode_completion(c.text)
            image = self.writer.store(raw)
            if (why := self.dedup.keep(image)) is not None:
                self.failures.add(prompt.key, prompt.messages[-1]["content"], why,
                                  result.attempts)
                continue
            meta: dict[str, Any] = {"prompt_key": prompt.key, "job": self.job, "sample": i,
                                    "usage": c.usage}
            if revised:
                meta["revised_prompt"] = revised
            out.append(ImageRecord.new(prompt.messages[-1]["content"], image, Provenance(
                teacher=teacher.model_copy(update={"usage_estimated": c.usage_estimated or None}),
                source=prompt.source, purpose="train"), meta))
        return out

    def _save(self, result: Result) -> None:
        prompt: sources.Prompt = result.request.payload
        text = prompt.messages[-1]["content"]
        if not result.ok:
            self.failures.add(prompt.key, text, result.error or "failed", result.attempts)
            return
        try:
            records = self._records(prompt, result)
        except ValueError as e:  # the bytes are no PNG, JPEG or WebP image
            self.failures.add(prompt.key, text, f"unusable image: {e}", result.attempts)
            return
        if records:
            self.writer.write(records)
            self.written += len(records)

    def _requests(self, prompts: list[sources.Prompt], done: set[str]) -> Iterator[Request]:
        for p in prompts:
            if p.key not in done:
                yield Request(p.key, [{"role": "user", "content": p.messages[-1]["content"]}],
                              self.params, payload=p)

    async def _main(self) -> None:
        try:
            await self.endpoint.check_reachable()
            path = self.out_dir / RECORDS
            done = answered(path, self.job)
            self.already = len(done)
            self.out_dir.mkdir(parents=True, exist_ok=True)
            check_records_dir(self.out_dir)
            seal_records(path)  # a prompt's images torn short are not duplicates of its rerun
            self.dedup = Dedup(self.config.filters.image_hamming)
            seen_images([path], self.dedup)
            cache = RequestCache(self.out_dir / CACHE)
            self.writer, self.failures = ImageRecordWriter(path), Failures(self.out_dir / FAILED)
            try:
                prompts = kept_prompts(self.config, await expand_prompts(
                    self.config, file_prompts(self.config), cache))
                self.stats.total = len([p for p in prompts if p.key not in done])
                with live(self.stats, self.budget, self.console):
                    await run(self._requests(prompts, done), self.endpoint, self.limits,
                              cache=cache, on_result=self._save, budget=self.budget,
                              stats=self.stats)
            finally:
                self.writer.close()
                self.failures.close()
                cache.close()
        finally:
            await self.endpoint.aclose()

    def run(self) -> dict[str, Any]:
        asyncio.run(self._main())
        metadata(self.out_dir)
        info = {"records_written": self.written, "prompts_already_done": self.already,
                "failed": self.failures.count, "duplicates_dropped": self.dedup.dropped,
                "requests_paid": self.stats.paid, "answers_from_cache": self.stats.cached,
                "retries": self.stats.retries, "images_billed": self.budget.images,
                "prompt_tokens": self.budget.prompt_tokens,
                "completion_tokens": self.budget.completion_tokens, "cost": self.budget.cost,
                "usage_estimated_requests": self.budget.estimated_requests,
                "stopped": self.stats.stopped}
        write_json_atomic(self.out_dir / SUMMARY, info)
        for line in summary(self.stats, self.budget):
            self.console.print(line)
        return info


# -- a local diffusers pipeline ----------------------------------------------------------------

def generate_with_pipeline(config: GenerateConfig, seed: int, out_dir: Path,
                           batch_size: int = 16) -> dict[str, Any]:
    """Draw every file prompt with a local pipeline (seed + prompt index seeds each image);
    prompts already in `train.jsonl` are skipped."""
    if not isinstance(config.teacher, PipelineTeacherConfig):
        raise UserError(f"generate.teacher.kind = \"{config.teacher.kind}\": this draws with a "
                        "local pipeline")
    from seed.endpoints.diffusion import DrawRequest, ImagePipeline

    t = config.teacher
    if not Path(t.path).is_dir():
        raise UserError(f"generate.teacher.path: {t.path}: no such pipeline directory")
    pipe = ImagePipeline.load(t.path, device=t.device)
    params = dict(config.params)
    job = hash_json({"pipeline": str(Path(t.path).resolve()), "params": params})[:16]
    path = out_dir / RECORDS
    out_dir.mkdir(parents=True, exist_ok=True)
    done = answered(path, job)
    dedup = Dedup(config.filters.image_hamming)
    seen_images([path], dedup)
    teacher = Teacher(route="local", host=None, model_requested=pipe.name,
                      weights_revision=None, params=params)
    cache = RequestCache(out_dir / CACHE)
    try:
        prompts = kept_prompts(config, asyncio.run(expand_prompts(config, file_prompts(config),
                                                                  cache)))
    finally:
        cache.close()
    todo = [(i, p) for i, p in enumerate(prompts) if p.key not in done]
    written = 0
    with ImageRecordWriter(path) as out:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            requests = [DrawRequest(p.messages[-1]["content"], seed=seed + i,
                                    steps=params.get("steps"), guidance=params.get("guidance"))
                        for i, p in batch]
            for (i, p), img in zip(batch, pipe.draw(requests), strict=True):
                image = out.store(png_bytes(img))
                if dedup.keep(image) is not None:
                    continue
                out.write([ImageRecord.new(p.messages[-1]["content"], image, Provenance(
                    teacher=teacher, source=p.source, purpose="train"),
                    {"prompt_key": p.key, "job": job, "seed": seed + i})])
                written += 1
    metadata(out_dir)
    return {"records_written": written, "prompts_already_done": len(done),
            "duplicates_dropped": dedup.dropped}


# -- entry points ------------------------------------------------------------------------------

def generate_images(config: GenerateConfig, seed: int, out_dir: Path,
                    console: Console | None = None) -> dict[str, Any]:
    """Image records from whichever image teacher the config names (see the docstring)."""
    teacher = config.teacher
    if isinstance(teacher, ShapesConfig):
        return generate_shapes(config, seed, out_dir)
    if isinstance(teacher, ImagesEndpointConfig):
        return HttpImageGeneration(config, seed, out_dir, console or Console()).run()
    if isinstance(teacher, PipelineTeacherConfig):
        return generate_with_pipeline(config, seed, out_dir)
    raise UserError(f"generate.teacher.kind = \"{teacher.kind}\" writes chat records, not images")


def image_work(config: GenerateConfig, seed: int, out_dir: Path, console: Console,
               check_teacher: bool = True) -> partial[dict[str, Any]]:
    """`seed run`'s generate stage for an image teacher: every input is checked now (the shapes
    config, the prompt files, the key, the pipeline directory; the HTTP ones unless
    `check_teacher` is False), the work is returned. A budget stop keeps the records and stops
    the run before training."""
    teacher = config.teacher
    if isinstance(teacher, ShapesConfig):
        Shapes(teacher)
        return partial(generate_shapes, config, seed, out_dir)
    if isinstance(teacher, PipelineTeacherConfig):
        if not Path(teacher.path).is_dir():
            raise UserError(f"generate.teacher.path: {teacher.path}: no such pipeline directory")
        return partial(_pipeline_stage, config, seed, out_dir)
    built = HttpImageGeneration(config, seed, out_dir, console) if check_teacher else None
    return partial(_http_stage, built, config, seed, out_dir, console)


def _pipeline_stage(config: GenerateConfig, seed: int, out_dir: Path) -> dict[str, Any]:
    return _counted(generate_with_pipeline(config, seed, out_dir), out_dir)


def _http_stage(built: HttpImageGeneration | None, config: GenerateConfig, seed: int,
                out_dir: Path, console: Console) -> dict[str, Any]:
    info = (built or HttpImageGeneration(config, seed, out_dir, console)).run()
    if info["stopped"]:
        raise UserError(f"generation stopped ({info['stopped']}); the records so far are kept "
                        "in data/, raise the cap and run again to finish")
    return _counted(info, out_dir)


def _counted(info: dict[str, Any], out_dir: Path) -> dict[str, Any]:
    n = sum(1 for _ in read_image_records(out_dir / RECORDS, check_files=False))
    return {"train_records": n, "eval_records": 0, **info}
