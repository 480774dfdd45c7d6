"""Image students graded by the procedural teacher's verifier, on compositions never trained on.

The student (and its untrained copy, the baseline) draws every held-out caption once per sampling
seed; `seed.endpoints.shapes` checks each image pixel by pixel: exact (both objects right: colour
and shape, each on its side) and per attribute. Accuracies come with Wilson 95% intervals and per
seed, since one seed's few hundred images move a score by several points. Writes `results.json`
(top-level `accuracy` and `baseline_accuracy` as fractions, like the text eval, so the report's
cards read either) and `samples.jsonl` (the report's grid: caption, seed, verdicts and the PNGs
written under `images/`). Metrics that need weights nothing may download (CLIP score, FID) are
computed only from local weights the recipe names, and otherwise listed in `skipped` with why.
This module draws nothing itself (seed.endpoints.diffusion does) and trains nothing.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from seed.endpoints.diffusion import DrawRequest, ImagePipeline
from seed.endpoints.shapes import Shapes
from seed.evaluate.stats import wilson_interval
from seed.files import write_json_atomic, write_text_atomic
from seed.recipe import ImageEvalConfig, ShapesConfig
from seed.records import read_image_records

SEED_STRIDE = 1_000_003  # image i under sampling seed s draws its noise from s * STRIDE + i

SKIPPED_FID = ("FID needs an Inception network's weights, which nothing in Seed may download; "
               "it is not computed")
SKIPPED_CLIP = ("CLIP score needs CLIP weights, which nothing in Seed may download; name a local "
                "CLIP directory in eval.images.clip_model")


@dataclass
class Graded:
    """One model's verdicts over every (caption, sampling seed) pair, in drawing order."""

    exact: list[bool] = field(default_factory=list)
    attributes: dict[str, list[bool]] = field(default_factory=dict)
    seeds: list[int] = field(default_factory=list)

    def add(self, exact: bool, attributes: dict[str, bool], seed: int) -> None:
        self.exact.append(exact)
        self.seeds.append(seed)
        for name, ok in attributes.items():
            self.attributes.setdefault(name, []).append(ok)

    def summary(self) -> dict[str, Any]:
        """Exact accuracy with its interval, per sampling seed, and per attribute."""
        n, correct = len(self.exact), sum(self.exact)
        low, high = wilson_interval(correct, n)
        per_seed = {str(s): _share([e for e, t in zip(self.exact, self.seeds, strict=True)
                                    if t == s]) for s in dict.fromkeys(self.seeds)}
        return {"accuracy": _share(self.exact), "n": n, "correct": correct, "ci_low": low,
                "ci_high": high, "per_seed": per_seed,
                "attributes": {k: _share(v) for k, v in self.attributes.items()}}


def _share(values: Sequence[bool]) -> float:
    return sum(values) / len(values) if values else 0.0


def draw_and_grade(pipeline: ImagePipeline, shapes: Shapes, prompts: list[str],
                   config: ImageEvalConfig, keep: int = 0) -> tuple[Graded, list[Image.Image]]:
    """Every prompt drawn once per sampling seed and graded; the first `keep` images of the first
    seed are returned for the report's grid."""
    graded, kept = Graded(), list[Image.Image]()
    for s in config.seeds:
        requests = [DrawRequest(prompt, seed=s * SEED_STRIDE + i, steps=config.steps,
                                guidance=config.guidance) for i, prompt in enumerate(prompts)]
        for start in range(0, len(requests), config.batch_size):
            batch = requests[start:start + config.batch_size]
            for request, image in zip(batch, pipeline.draw(batch), strict=True):
                verdict = shapes.verify(image, request.prompt)
                graded.add(verdict.exact, verdict.attributes, s)
                if s == config.seeds[0] and len(kept) < keep:
                    kept.append(image)
    return graded, kept


def _save(images: list[Image.Image], out_dir: Path, who: str) -> list[str]:
    """The grid's PNGs under out_dir/images/<who>/; their paths relative to out_dir."""
    (out_dir / "images" / who).mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        rel = f"images/{who}/{i:04d}.png"
        image.save(out_dir / rel)
        paths.append(rel)
    return paths


def evaluate_images(model_dir: Path, eval_records: Path, out_dir: Path, config: ImageEvalConfig,
                    teacher: ShapesConfig, baseline_dir: Path | None = None,
                    train_records: Path | None = None) -> dict[str, Any]:
    """Grade an image student (and optionally its baseline) on the held-out captions."""
    shapes = Shapes(teacher)
    records = list(read_image_records(eval_records))[:config.max_prompts]
    prompts = [r.prompt for r in records]
    student = ImagePipeline.load(model_dir)
    graded, shown = draw_and_grade(student, shapes, prompts, config, keep=config.grid)
    results: dict[str, Any] = {**graded.summary(), "model": str(model_dir),
                               "prompts": len(prompts), "seeds": config.seeds,
                               "steps": config.steps or student.default_steps,
                               "guidance": (config.guidance if config.guidance is not None
                                            else student.default_guidance)}
    base_graded: Graded | None = None
    base_shown: list[Image.Image] = []
    if baseline_dir is not None:
        base_graded, base_shown = draw_and_grade(ImagePipeline.load(baseline_dir), shapes,
                                                 prompts, config, keep=config.grid)
        base = base_graded.summary()
        results.update({"baseline": str(baseline_dir), "baseline_accuracy": base["accuracy"],
                        "baseline_ci_low": base["ci_low"], "baseline_ci_high": base["ci_high"],
                        "baseline_per_seed": base["per_seed"],
                        "baseline_attributes": base["attributes"]})
    else:
        results["baseline_accuracy"] = None
    if train_records is not None and config.train_prompts:
        seen = [r.prompt for r in read_image_records(train_records)][:config.train_prompts]
        results["train_compositions"] = draw_and_grade(student, shapes, seen, config)[0].summary()
    results["skipped"] = {"fid": SKIPPED_FID, **({} if config.clip_model else
                                                 {"clip_score": SKIPPED_CLIP})}
    if config.clip_model:
        from seed.evaluate.clip_score import clip_score

        results["clip_score"] = clip_score(Path(config.clip_model), shown, prompts[:len(shown)])
    _write_samples(out_dir, records, eval_records, shown, base_shown, graded, base_graded)
    write_json_atomic(out_dir / "results.json", results)
    return {k: results[k] for k in ("accuracy", "baseline_accuracy", "n", "correct")}


def _write_samples(out_dir: Path, records: list[Any], eval_records: Path,
                   shown: list[Image.Image], base_shown: list[Image.Image], graded: Graded,
                   base_graded: Graded | None) -> None:
    """samples.jsonl: one line per grid cell (caption, its teacher image, both models' verdicts);
    image paths are relative to `out_dir`, so the run directory can move."""
    student_files = _save(shown, out_dir, "student")
    base_files = _save(base_shown, out_dir, "baseline")
    lines = []
    for i, path in enumerate(student_files):
        record = records[i]
        row: dict[str, Any] = {
            "kind": "image", "id": record.id, "prompt": record.prompt, "student": path,
            "teacher": os.path.relpath(record.image_path(eval_records), out_dir),
            "correct": graded.exact[i],
            "attributes": {k: v[i] for k, v in graded.attributes.items()},
        }
        if base_graded is not None and i < len(base_files):
            row.update({"baseline": base_files[i], "baseline_correct": base_graded.exact[i]})
        lines.append(json.dumps(row, ensure_ascii=False) + "\n")
    write_text_atomic(out_dir / "samples.jsonl", "".join(lines))
