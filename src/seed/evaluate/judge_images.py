"""The judged evaluation of an image student: the judge sees both images for the same caption.

`run_image_judge(config, student_dir, out_dir, eval_records)`: the student draws every held-out
caption (one sampling seed; the PNGs are kept in `out_dir/images/`, so a rerun draws nothing it
has), the baseline is the teacher's own image for that caption from the records (or another image
pipeline directory in `eval.judge.baseline`), and a vision judge (any OpenAI-compatible chat
server that takes `image_url` content parts) compares them in both orders, through judge.py's
pairwise path: the same engine, cache, verdict parsing, `judgments.jsonl` and statistics as text
(win rate, bootstrap interval, position consistency). Length control does not apply to images, so
`lc_win_rate` is None. This module draws through seed.endpoints.diffusion; it grades nothing
itself.
"""

from __future__ import annotations

import asyncio
import base64
import os
import tomllib
from pathlib import Path
from string import Template
from typing import Any

from seed.endpoints.diffusion import DrawRequest, ImagePipeline
from seed.errors import UserError
from seed.evaluate.judge import JudgeSettings, judge_pairwise
from seed.evaluate.judge_run import (
    CACHE,
    JUDGMENTS,
    RESULTS,
    answerer,
    endpoint_name,
    limits_of,
    summarize_judgments,
)
from seed.evaluate.questions import Question
from seed.files import write_json_atomic
from seed.generate.cache import RequestCache
from seed.recipe import JudgeConfig, LocalEndpointConfig
from seed.records import read_image_records

PROMPTS = Path(__file__).parent / "prompts" / "pairwise_images.toml"
JUDGE_SEED = 7_000_003  # the student's sampling seed for judged images (apart from eval's)


def _prompts(prompts_dir: str | None) -> dict[str, str]:
    path = Path(prompts_dir) / PROMPTS.name if prompts_dir else PROMPTS
    if not path.is_file():
        raise UserError(f"{path}: no such judge prompt file; copy {PROMPTS}")
    try:
        prompts = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e}); fix the judge prompt file") from None
    if {"system", "user"} - set(prompts):
        raise UserError(f"{path}: an image judge prompt file needs `system` and `user`")
    return prompts


def data_uri(path: Path) -> str:
    """An image file as a data URI (what the chat API's `image_url` parts accept)."""
    kind = {".jpg": "jpeg", ".jpeg": "jpeg", ".webp": "webp"}.get(path.suffix.lower(), "png")
    return f"data:image/{kind};base64,{base64.b64encode(path.read_bytes()).decode()}"


def draw_missing(pipeline_dir: Path, captions: dict[str, str], out_dir: Path,
                 batch_size: int = 64) -> dict[str, Path]:
    """Each caption drawn once into out_dir/<id>.png; files already there are kept."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {qid: out_dir / f"{qid}.png" for qid in captions}
    todo = [qid for qid, p in paths.items() if not p.is_file()]
    if todo:
        pipeline = ImagePipeline.load(pipeline_dir)
        for start in range(0, len(todo), batch_size):
            ids = todo[start:start + batch_size]
            requests = [DrawRequest(captions[q], seed=JUDGE_SEED + i)
                        for i, q in enumerate(ids, start)]
            for qid, image in zip(ids, pipeline.draw(requests), strict=True):
                tmp = paths[qid].with_suffix(".tmp.png")
                image.save(tmp)
                tmp.replace(paths[qid])  # atomic: a kill never leaves half an image
    return paths


def renderer(prompts: dict[str, str], files: dict[str, Path]) -> Any:
    """judge_pairwise's `render`: the caption, then image A and image B as content parts."""
    def render(q: Question, a: list[str], b: list[str]) -> list[dict[str, Any]]:
        user = Template(prompts["user"]).substitute(caption=q.turns[0])
        parts = [{"type": "text", "text": user}] + [
            {"type": "image_url", "image_url": {"url": data_uri(files[name[0]])}}
            for name in (a, b)]
        return [{"role": "system", "content": prompts["system"]},
                {"role": "user", "content": parts}]
    return render


def run_image_judge(cfg: JudgeConfig, student_dir: str | Path, out_dir: str | Path,
                    eval_records: str | Path) -> dict[str, Any]:
    """Draw, judge in both orders and summarize; write and return `judge_results.json`'s content."""
    out_dir, eval_records = Path(out_dir), Path(eval_records)
    records = list(read_image_records(eval_records))[:cfg.max_questions]
    if not records:
        raise UserError(f"{eval_records}: no image records to judge; give held-out image records")
    captions = {r.id: r.prompt for r in records}
    questions = [Question(r.id, [r.prompt], category="image") for r in records]
    student = draw_missing(Path(student_dir), captions, out_dir / "images" / "student")
    baseline_cfg = cfg.baseline
    if baseline_cfg is None:
        baseline_name = "teacher"
        baseline = {r.id: r.image_path(eval_records) for r in records}
    elif isinstance(baseline_cfg, LocalEndpointConfig):
        baseline_name = Path(baseline_cfg.path).name
        baseline = draw_missing(Path(baseline_cfg.path), captions, out_dir / "images" / "baseline")
    else:
        raise UserError("eval.judge.baseline: an image student is compared with the teacher's "
                        "images (leave it unset) or a local image pipeline (kind = \"local\")")
    # An answer is its image's path relative to out_dir: what judgments.jsonl keeps as `output`
    # and `baseline_output`, so the judge report can show the two images.
    mine = {qid: os.path.relpath(p, out_dir) for qid, p in student.items()}
    theirs = {qid: os.path.relpath(p, out_dir) for qid, p in baseline.items()}
    files = {rel: out_dir / rel for rel in [*mine.values(), *theirs.values()]}
    limits = limits_of(cfg)
    judge = answerer(cfg.endpoint, "eval.judge.endpoint", limits)
    cache = RequestCache(out_dir / CACHE)

    async def main() -> dict[str, int]:
        try:
            return await judge_pairwise(
                questions, "student", {q: [mine[q]] for q in captions}, baseline_name,
                {q: [theirs[q]] for q in captions}, judge, out_dir / JUDGMENTS,
                settings=JudgeSettings(cfg.json_schema, cfg.max_tokens, cfg.prompts_dir),
                cache=cache, limits=limits, render=renderer(_prompts(cfg.prompts_dir), files))
        finally:
            await judge.aclose()

    try:
        counts = asyncio.run(main())
    finally:
        cache.close()
    stats = summarize_judgments(out_dir, "pairwise")
    stats.update(lc_win_rate=None, longer_wins_rate=None)  # an image's "length" means nothing
    results = {"mode": "pairwise", "kind": "image", "student": "student",
               "baseline": baseline_name, "judge": endpoint_name(cfg.endpoint),
               "requests": counts, "self_preference": False, "stats": stats}
    write_json_atomic(out_dir / RESULTS, results)
    return results
