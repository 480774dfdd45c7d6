"""`seed import`: existing instruction datasets into records, with the provenance the user declares.

Three input shapes: `alpaca` (`instruction`, `input`, `output`), `sharegpt` (`conversations` of
`from`/`value` turns) and `messages` (the OpenAI chat format, as Seed writes it), each as a JSON
array or JSON lines. Provenance comes from `--teacher ROUTE:MODEL`, `--license NAME`, or a Data
Provenance Initiative summary (`--dpi`): its "Model Generated" names the teacher and its "Licenses"
the data license. Nothing is guessed: without them the records carry no teacher and the gate
treats them as unknown. This module parses and labels; judging is `gate.py`'s job.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import ValidationError

from seed.errors import UserError
from seed.files import read_jsonl
from seed.records import Provenance, Record, Source, Teacher, write_records

log = logging.getLogger(__name__)

Format = Literal["alpaca", "sharegpt", "messages"]
ROUTES = ("direct", "azure", "bedrock", "openrouter", "local", "tasks", "declared", "human")
# DPI lists a model's terms among "Licenses" (e.g. "OpenAI"): they name the teacher, not the data.
_DPI_TERMS = {"openai", "anthropic", "google cloud translation api"}
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "bard": "assistant", "bing": "assistant",
                   "system": "system"}


def _rows(path: Path) -> Iterator[tuple[int, Any]]:
    """Items of a JSON array file, or lines of a JSONL file, with their 1-based position."""
    if not path.is_file():
        raise UserError(f"{path}: no such dataset file; check the path")
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            yield from enumerate(json.loads(text), 1)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: not valid JSON ({e}); fix the file") from None
        return
    yield from read_jsonl(path)


def _alpaca(row: dict[str, Any]) -> list[dict[str, str]]:
    prompt = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}]


def _sharegpt(row: dict[str, Any]) -> list[dict[str, str]]:
    out = []
    for turn in row["conversations"]:
        role = _SHAREGPT_ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise ValueError(f"unknown speaker {turn['from']!r}")
        out.append({"role": role, "content": turn["value"]})
    return out


def _messages(row: dict[str, Any]) -> list[dict[str, str]]:
    return [{"role": m["role"], "content": m["content"]} for m in row["messages"]]


_PARSERS = {"alpaca": _alpaca, "sharegpt": _sharegpt, "messages": _messages}


def parse_teacher(spec: str) -> Teacher:
    """`ROUTE:MODEL` (e.g. `direct:gpt-4o`, `local:meta-llama/Llama-3.1-8B-Instruct`)."""
    route, sep, model = spec.partition(":")
    if not sep or not model or route not in ROUTES:
        raise UserError(f"--teacher {spec!r}: expected ROUTE:MODEL with ROUTE one of "
                        f"{', '.join(ROUTES)}, e.g. direct:gpt-4o")
    # model_validate: `declared_by` is one of the extra fields Teacher allows (not declared)
    return Teacher.model_validate({"route": route, "model_requested": model,
                                   "declared_by": "seed import --teacher"})


def read_dpi(path: str | Path, dataset_id: str | None = None) -> dict[str, Any]:
    """One dataset's entry from a Data Provenance Initiative summary file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such Data Provenance summary; check the path")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e}); is it a DPI data summary?") from None
    if not isinstance(summary, dict) or not summary:
        raise UserError(f"{path}: not a DPI data summary (expected an object of datasets)")
    if dataset_id is None:
        if len(summary) > 1:
            raise UserError(f"{path}: holds {len(summary)} datasets; pick one with --dpi-id "
                            f"(one of {', '.join(sorted(summary))})")
        dataset_id = next(iter(summary))
    if dataset_id not in summary:
        raise UserError(f"--dpi-id {dataset_id!r}: not in {path}; pick one of "
                        f"{', '.join(sorted(summary))}")
    entry = summary[dataset_id]
    if "Licenses" not in entry or "Model Generated" not in entry:
        raise UserError(f"{path}: dataset {dataset_id!r} lacks 'Licenses' or 'Model Generated'")
    return entry


def dpi_provenance(entry: dict[str, Any]) -> tuple[Teacher | None, Source]:
    """Teacher and source declared by a DPI entry: its generating model and its data licenses."""
    models = [m for m in entry.get("Model Generated") or [] if m]
    licenses = [lic["License"] for lic in entry.get("Licenses") or [] if lic.get("License")]
    terms = [name for name in licenses if name.lower() in _DPI_TERMS]
    data_licenses = [name for name in licenses if name.lower() not in _DPI_TERMS]
    if not models and terms:
        models = [f"{terms[0]} (model not named)"]
    human = not models and str(entry.get("Human Annotation", "")).lower() == "yes"
    if len(models) > 1:
        log.warning("DPI entry %s names %d generating models; records are labelled with the "
                    "first, %r", entry.get("Unique Dataset Identifier"), len(models), models[0])
    name = entry.get("Dataset Name") or entry.get("Unique Dataset Identifier") or "dataset"
    teacher = None
    if models or human:
        teacher = Teacher.model_validate({
            "route": "declared" if models else "human",
            "model_requested": models[0] if models else "human-written",
            "declared_by": "Data Provenance Initiative summary"})
    # model_validate: url, dpi_id and license_urls are extra fields Source allows (not declared)
    source = Source.model_validate({
        "kind": "import", "name": name, "license": "; ".join(data_licenses) or None,
        "url": entry.get("Hugging Face URL") or entry.get("Dataset URL") or None,
        "dpi_id": entry.get("Unique Dataset Identifier"),
        "license_urls": [lic.get("License URL") for lic in entry.get("Licenses") or []
                         if lic.get("License URL")]})
    return teacher, source


def import_dataset(path: str | Path, fmt: Format, out: str | Path, *, name: str | None = None,
                   teacher: str | None = None, license: str | None = None,
                   dpi: str | Path | None = None, dpi_id: str | None = None) -> dict[str, Any]:
    """Convert a dataset file to a records file with declared provenance; return counts."""
    path = Path(path)
    if fmt not in _PARSERS:
        raise UserError(f"--format {fmt!r}: use alpaca, sharegpt or messages")
    t: Teacher | None = None
    src = Source(kind="import", name=name or path.stem)
    if dpi is not None:
        t, src = dpi_provenance(read_dpi(dpi, dpi_id))
        if name:
            src = src.model_copy(update={"name": name})
    if teacher is not None:
        t = parse_teacher(teacher)
    if license is not None:
        src = src.model_copy(update={"license": license})
    prov = Provenance(teacher=t, source=src, purpose="train")

    # Parse everything before writing, so a bad item leaves no partial output behind.
    records = []
    for i, row in _rows(path):
        try:
            records.append(Record.new(_PARSERS[fmt](row), provenance=prov,
                                      meta={"import_index": i}))
        except (KeyError, TypeError, ValueError, ValidationError) as e:
            raise UserError(f"{path}: item {i} is not a {fmt} record ({type(e).__name__}: "
                            f"{e}); check --format") from None
    if not records:
        raise UserError(f"{path}: no items found; is it empty?")
    n = write_records(out, records)
    return {"records": n, "teacher": t.model_dump(exclude_none=True) if t else None,
            "source": src.model_dump(exclude_none=True)}
