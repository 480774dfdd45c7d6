"""Model and dataset cards that carry a student's provenance and the obligations it inherited.

Cards are Hugging Face `README.md` files built with `huggingface_hub`'s `ModelCard` /
`ModelCardData` and `DatasetCard` / `DatasetCardData`, so the Hub and every tool that reads model
cards understands their metadata; an image-generator student's card is tagged text-to-image for
diffusers. The body says, in words, who wrote the training data (teachers and record counts),
what the gate decided for which use, the obligations that follow (name prefix,
"Built with ..." notices, inherited terms), overrides, any accepted risk, and (dataset cards)
what generation's filters removed, identity claims included, and verified generation's yield
(answers paid for, verified and kept, per task family). This module formats
and writes; the verdicts come from `gate.py`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, ModelCard, ModelCardData

from seed.files import write_text_atomic
from seed.generate.verify import yield_lines
from seed.policy.gate import CheckResult


def _hub_license(name: str | None) -> str:
    """A license name as a Hub license id (`CC BY-NC 4.0` -> `cc-by-nc-4.0`); `unknown` if none."""
    if not name:
        return "unknown"
    return "-".join(name.strip().lower().replace("_", " ").split())


def _provenance_table(result: CheckResult) -> str:
    rows = ["| teacher | prompt source | records | verdict | terms |", "|---|---|---:|---|---|"]
    for f in result.findings:
        rows.append(f"| `{f.teacher}` | `{f.source}` | {f.records} | {f.verdict} | "
                    f"{f.family} |")
    return "\n".join(rows)


def _obligations_section(result: CheckResult) -> str:
    items = result.obligations()
    if not items:
        return "None: the terms of every teacher and source allow this use without conditions."
    return "\n".join(f"- {o}" for o in items)


def _policy_section(result: CheckResult) -> str:
    lines = [f"Checked by `seed check` for a **{result.use.describe()}**: overall verdict "
             f"**{result.verdict}** over {result.records} records."]
    if result.overrides:
        lines.append("")
        lines.append("Terms overrides applied (the user's own records, e.g. written permission):")
        for f in result.findings:
            lines.extend(f"- {o} (teacher `{f.teacher}`)" for o in f.overrides)
        if not any(f.overrides for f in result.findings):
            lines.append(f"- loaded from {', '.join(result.overrides)}; no entry matched")
    if result.accepted_risk:
        lines.append("")
        lines.append(f"**Terms risk accepted** (`--accept-terms-risk`): {result.accepted_risk}")
    lines.append("")
    lines.append("Where each verdict comes from:")
    for f in result.findings:
        for c in dict.fromkeys(f.citations):
            lines.append(f"- `{f.teacher}`: {c}")
    return "\n".join(lines)


def model_card(result: CheckResult, *, model_name: str, base_model: str | None = None,
               license: str | None = None, eval_results: dict[str, float] | None = None,
               training: dict[str, Any] | None = None) -> ModelCard:
    """A model card for a student trained on checked records (eval results optional)."""
    datasets = sorted({f.source.split(" (")[0] for f in result.findings})
    image = result.use.task == "image_generator"
    evals = [EvalResult(task_type="text-to-image" if image else "text-generation",
                        dataset_type="seed-held-out", dataset_name="held-out prompts",
                        metric_type=k, metric_value=v)
             for k, v in (eval_results or {}).items()]
    extra: dict[str, Any] = {"pipeline_tag": "text-to-image",
                             "library_name": "diffusers"} if image else {}
    data = ModelCardData(model_name=model_name, base_model=base_model,
                         license=_hub_license(license), datasets=datasets,
                         tags=["seed", "distillation", *(["text-to-image"] if image else [])],
                         eval_results=evals or None, **extra)
    notices = result.notices()
    body = [f"# {model_name}", ""]
    body += [f"**{n}**" for n in notices] + ([""] if notices else [])
    made = "teacher-drawn images" if image else "teacher-answered records"
    body += [f"A student model trained by Seed on {made}.",
             f"Base model: {base_model or 'none (trained from scratch)'}.", ""]
    if training:
        body += ["## Training", ""] + [f"- {k}: {v}" for k, v in training.items()] + [""]
    body += ["## Provenance", "", _provenance_table(result), "", "## Obligations", "",
             _obligations_section(result), "", "## Terms check", "", _policy_section(result), ""]
    if eval_results:
        body += ["## Evaluation", ""] + [f"- {k}: {v:.4g}" for k, v in eval_results.items()] + [""]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))


def _filters_section(summary: dict[str, Any]) -> list[str]:
    """What generation's filters removed (`summary.json` of an HTTP teacher's generation)."""
    prompts = summary.get("filtered_prompts") or {}
    answers = summary.get("filtered_answers") or {}
    lines = ["## Filters", ""]
    lines += [f"- prompts dropped ({why}): {n}" for why, n in sorted(prompts.items())]
    lines += [f"- answers dropped ({why}): {n}" for why, n in sorted(answers.items())
              if why != "identity"]
    lines.append(f"- answers dropped for claiming another model's identity: "
                 f"{answers.get('identity', 0)}")
    if summary.get("identity_flagged"):
        lines.append(f"- answers kept but flagged for claiming another model's identity "
                     f"(`meta.identity_claims`): {summary['identity_flagged']}")
    return [*lines, ""]


def _verify_section(verified: dict[str, Any]) -> list[str]:
    """Verified generation's yield: answers paid for, verified and kept, per family."""
    keep = {"first_correct": "the first verified answer of each prompt",
            "all_correct": "every verified answer",
            "pairs": "DPO pairs (a verified answer chosen, a failed one rejected)"}
    lines = ["## Verification", "",
             f"Every answer was checked (`{verified['kind']}` verifier) before it was kept; "
             f"kept: {keep.get(verified['keep'], verified['keep'])}. Yield: "
             f"{verified['correct']:,} of {verified['samples']:,} answers paid for verified "
             f"({verified['yield']:.1%}).", ""]
    return [*lines, *(f"- {line}" for line in yield_lines(verified)), ""]


def dataset_card(result: CheckResult, *, name: str, license: str | None = None,
                 generation: dict[str, Any] | None = None) -> DatasetCard:
    """A dataset card for generated records: machine-generated, with the provenance table and,
    given the generation's summary, what its filters removed."""
    licenses = {f.source.split(" (", 1)[1].rstrip(")") for f in result.findings
                if " (" in f.source}
    lic = license or (licenses.pop() if len(licenses) == 1 else None)
    image = result.use.task == "image_generator"
    data = DatasetCardData(pretty_name=name, annotations_creators=["machine-generated"],
                           language_creators=["machine-generated"], license=_hub_license(lic),
                           task_categories=["text-to-image" if image else "text-generation"],
                           source_datasets=sorted({f.source.split(" (")[0]
                                                   for f in result.findings}))
    what = ("Images with their prompts, one JSON line each beside content-addressed image files"
            if image else "Conversations in the OpenAI `messages` format")
    body = [f"# {name}", "",
            f"{what}; every record's `provenance` names its "
            "teacher (route, host, model) and its prompt source. Written by Seed.", "",
            "## Provenance", "", _provenance_table(result), "",
            "## Obligations for models trained on this data", "", _obligations_section(result), "",
            "## Terms check", "", _policy_section(result), ""]
    if generation is not None:
        body += _filters_section(generation)
        if generation.get("verify"):
            body += _verify_section(generation["verify"])
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body))


def write_model_card(model_dir: str | Path, result: CheckResult, **kwargs: Any) -> Path:
    """Write `README.md` into a trained model directory (atomically); return its path."""
    path = Path(model_dir) / "README.md"
    write_text_atomic(path, str(model_card(result, **kwargs)))
    return path


def write_dataset_card(data_dir: str | Path, result: CheckResult, **kwargs: Any) -> Path:
    """Write `README.md` next to the records (atomically); return its path. The generation's
    `summary.json` there, if any, gives the filter counts."""
    path = Path(data_dir) / "README.md"
    summary = Path(data_dir) / "summary.json"
    if summary.is_file() and "generation" not in kwargs:
        kwargs["generation"] = json.loads(summary.read_text())
    write_text_atomic(path, str(dataset_card(result, **kwargs)))
    return path
