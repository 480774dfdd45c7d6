"""`seed import`: existing instruction datasets into records, with the provenance the user declares.

Four input shapes: `alpaca` (`instruction`, `input`, `output`), `sharegpt` (`conversations` of
`from`/`value` turns, with an optional top-level `system`), `messages` (the OpenAI chat format, as
Seed writes it) and `s1k` (s1K's `question`, `thinking_trajectories`, `attempt`; s1K-1.1's
`deepseek_thinking_trajectory` and `deepseek_attempt` first where present), each as a JSON array or
JSON lines. An assistant turn's thinking trace becomes its `reasoning_content`, whichever way the
dataset holds it: a separate `reasoning_content` (or `reasoning`) field, `<think>...</think>` inline
(OpenR1-Math, DeepSeek-R1 dumps), or Bespoke-Stratos / OpenThoughts markers
(`<|begin_of_thought|>...<|end_of_thought|>` then `<|begin_of_solution|>...<|end_of_solution|>`,
the solution becoming the content). Two more read OpenAI's own files (`openai_files.py`):
`openai-ft` (chat fine-tuning or preference JSONL, tools and weights included) and `openai-stored`
(an export of stored chat completions, each record's teacher the model the completion names).

Provenance comes from `--teacher ROUTE:MODEL`, `--license NAME`, or a Data Provenance Initiative
summary (`--dpi`): its "Model Generated" names the teacher and its "Licenses"
the data license. Nothing is guessed: without them the records carry no teacher and the gate
treats them as unknown. This module parses and labels; judging is `gate.py`'s job.

A DPI entry is read against the fields' documented types (the DPI's `_template_spec.yaml`):
"Model Generated" a list of strings (or null), "Licenses" a list of {"License", "License URL"}
objects, the names and URLs strings. Anything else is an error naming the file, the dataset and
the field, never a guess: a string read as a list would name a teacher one letter long.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from seed.errors import UserError
from seed.files import read_jsonl
from seed.policy.openai_files import Bad, ft_record, stored_completions, stored_records
from seed.records import Provenance, Record, Source, Teacher, write_records
from seed.thinking import CLOSE, OPEN, split_thought

log = logging.getLogger(__name__)

Format = Literal["alpaca", "sharegpt", "messages", "s1k", "openai-ft", "openai-stored"]
FORMATS = ("alpaca", "sharegpt", "messages", "s1k", "openai-ft", "openai-stored")
ROUTES = ("direct", "azure", "bedrock", "openrouter", "local", "tasks", "declared", "human")
# DPI lists a model's terms among "Licenses" (e.g. "OpenAI"): they name the teacher, not the data.
_DPI_TERMS = {"openai", "anthropic", "google cloud translation api"}
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "chatgpt": "assistant", "bard": "assistant", "bing": "assistant",
                   "system": "system"}


def _rows(path: Path) -> Iterator[tuple[int, Any]]:
    """Items of a JSON array file, or lines of a JSONL file, with their 1-based position."""
    if _is_array(path):
        yield from enumerate(_json(path, "fix the file"), 1)
        return
    yield from read_jsonl(path)


def _is_array(path: Path) -> bool:
    """The file holds one JSON array (else JSON lines)."""
    if not path.is_file():
        raise UserError(f"{path}: no such dataset file; check the path")
    with path.open("rb") as f:
        return f.read(4096).lstrip().startswith(b"[")


def _json(path: Path, fix: str) -> Any:
    """A whole JSON file's value; a file that is not UTF-8 JSON is one line naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; {fix}") from None
    except json.JSONDecodeError as e:
        raise UserError(f"{path}: not valid JSON ({e}); {fix}") from None


def _alpaca(row: dict[str, Any]) -> list[dict[str, str]]:
    prompt = row["instruction"] + (f"\n\n{row['input']}" if row.get("input") else "")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": row["output"]}]


_THOUGHT = re.compile(r"<\|begin_of_thought\|>(.*?)<\|end_of_thought\|>\s*"
                      r"<\|begin_of_solution\|>(.*?)(?:<\|end_of_solution\|>|$)", re.DOTALL)


def _turn(role: str, text: str, trace: Any = None) -> dict[str, str]:
    """A message; an assistant's trace from `trace`, else from thought markers in its text."""
    if role != "assistant":
        return {"role": role, "content": text}
    if not isinstance(trace, str) and (found := _THOUGHT.fullmatch(text.strip())):
        trace, text = found.group(1), found.group(2)
    elif not isinstance(trace, str) and CLOSE in text:  # no <think>: it was in the prompt
        trace, text = split_thought(text, inside=OPEN not in text.split(CLOSE, 1)[0])
    out = {"role": role, "content": text.strip() if isinstance(trace, str) else text}
    if isinstance(trace, str) and trace.strip():
        out["reasoning_content"] = trace.strip()
    return out


def _sharegpt(row: dict[str, Any]) -> list[dict[str, str]]:
    out = [{"role": "system", "content": row["system"]}] if row.get("system") else []
    for turn in row["conversations"]:
        role = _SHAREGPT_ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise ValueError(f"unknown speaker {turn['from']!r}")
        out.append(_turn(role, turn["value"]))
    return out


def _messages(row: dict[str, Any]) -> list[dict[str, str]]:
    return [_turn(m["role"], m["content"], m.get("reasoning_content", m.get("reasoning")))
            for m in row["messages"]]


def _s1k(row: dict[str, Any]) -> list[dict[str, str]]:
    if isinstance(row.get("deepseek_thinking_trajectory"), str):  # s1K-1.1
        trace, answer = row["deepseek_thinking_trajectory"], row["deepseek_attempt"]
    else:
        traces = row["thinking_trajectories"]
        trace = traces[0] if isinstance(traces, list) else traces
        answer = row["attempt"]
    return [{"role": "user", "content": row["question"]}, _turn("assistant", answer, trace)]


_PARSERS = {"alpaca": _alpaca, "sharegpt": _sharegpt, "messages": _messages, "s1k": _s1k}


def _why(e: Exception) -> str:
    """One line on why an item did not parse."""
    if isinstance(e, ValidationError):
        err = e.errors()[0]
        return f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}"
    if isinstance(e, KeyError):
        return f"no {e} field"
    if isinstance(e, UnicodeEncodeError):  # JSON's lone \ud800-\udfff escapes are not text
        return "it holds half of a UTF-16 surrogate pair, which is not text"
    return f"{type(e).__name__}: {e}"


def parse_teacher(spec: str) -> Teacher:
    """`ROUTE:MODEL` (e.g. `direct:gpt-4o`, `local:meta-llama/Llama-3.1-8B-Instruct`)."""
    route, sep, model = spec.partition(":")
    if not sep or not model or route not in ROUTES:
        raise UserError(f"--teacher {spec!r}: expected ROUTE:MODEL with ROUTE one of "
                        f"{', '.join(ROUTES)}, e.g. direct:gpt-4o")
    # model_validate: `declared_by` is one of the extra fields Teacher allows (not declared)
    return Teacher.model_validate({"route": route, "model_requested": model,
                                   "declared_by": "seed import --teacher"})


class DpiLicense(BaseModel):
    """One item of a DPI entry's "Licenses"."""

    model_config = ConfigDict(extra="allow")

    license: str = Field(alias="License")
    url: str | None = Field(None, alias="License URL")


class DpiEntry(BaseModel):
    """The fields of a DPI entry that provenance is read from, with their documented types."""

    model_config = ConfigDict(extra="allow")

    model_generated: list[str] | None = Field(alias="Model Generated")
    licenses: list[DpiLicense] = Field(alias="Licenses")
    human_annotation: str | None = Field(None, alias="Human Annotation")
    name: str | None = Field(None, alias="Dataset Name")
    uid: str | None = Field(None, alias="Unique Dataset Identifier")
    hf_url: str | None = Field(None, alias="Hugging Face URL")
    url: str | None = Field(None, alias="Dataset URL")


# What each field holds, and (under "[]") what each item of a list field holds.
_DPI_TYPES = {"Model Generated": "a list of model names", "Model Generated[]": "a model name",
              "Licenses": "a list of {\"License\", \"License URL\"} objects",
              "Licenses[]": "a {\"License\", \"License URL\"} object"}


def _dpi_entry(entry: Any, path: Path, dataset_id: str) -> DpiEntry:
    """`entry` checked against the DPI's documented types; a mismatch names the field."""
    if not isinstance(entry, dict):
        raise UserError(f"{path}: dataset {dataset_id!r} is not an object of fields; is it a DPI "
                        "data summary?")
    try:
        return DpiEntry.model_validate(entry)
    except ValidationError as e:
        err = e.errors()[0]
        loc = [str(p) for p in err["loc"]]
        where = "".join(f"[{p}]" if p.isdigit() else f"[{json.dumps(p)}]" for p in loc)
        field = loc[0] + ("[]" if loc[-1].isdigit() else "") if len(loc) < 3 else loc[-1]
        should = _DPI_TYPES.get(field, "a string")
        if err["type"] == "missing":
            raise UserError(f"{path}: dataset {dataset_id!r} lacks {where}; add it as "
                            f"{should}") from None
        got = "null" if err["input"] is None else type(err["input"]).__name__
        raise UserError(f"{path}: dataset {dataset_id!r}, field {where}: is {got}, should be "
                        f"{should}; fix the summary") from None


def read_dpi(path: str | Path, dataset_id: str | None = None) -> DpiEntry:
    """One dataset's entry from a Data Provenance Initiative summary file."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such Data Provenance summary; check the path")
    summary = _json(path, "is it a DPI data summary?")
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
    return _dpi_entry(summary[dataset_id], path, dataset_id)


def dpi_provenance(entry: DpiEntry) -> tuple[Teacher | None, Source]:
    """Teacher and source declared by a DPI entry: its generating model and its data licenses."""
    models = [m for m in entry.model_generated or [] if m.strip()]
    licenses = [lic.license for lic in entry.licenses if lic.license.strip()]
    terms = [name for name in licenses if name.lower() in _DPI_TERMS]
    data_licenses = [name for name in licenses if name.lower() not in _DPI_TERMS]
    if not models and terms:
        models = [f"{terms[0]} (model not named)"]
    human = not models and (entry.human_annotation or "").strip().lower() == "yes"
    if len(models) > 1:
        log.warning("DPI entry %s names %d generating models; records are labelled with the "
                    "first, %r", entry.uid, len(models), models[0])
    name = entry.name or entry.uid or "dataset"
    teacher = None
    if models or human:
        teacher = Teacher.model_validate({
            "route": "declared" if models else "human",
            "model_requested": models[0] if models else "human-written",
            "declared_by": "Data Provenance Initiative summary"})
    # model_validate: url, dpi_id and license_urls are extra fields Source allows (not declared)
    source = Source.model_validate({
        "kind": "import", "name": name, "license": "; ".join(data_licenses) or None,
        "url": entry.hf_url or entry.url or None, "dpi_id": entry.uid,
        "license_urls": [lic.url for lic in entry.licenses if lic.url]})
    return teacher, source


def import_dataset(path: str | Path, fmt: Format, out: str | Path, *, name: str | None = None,
                   teacher: str | None = None, license: str | None = None,
                   dpi: str | Path | None = None, dpi_id: str | None = None) -> dict[str, Any]:
    """Convert a dataset file to a records file with declared provenance; return counts."""
    path = Path(path)
    if fmt not in FORMATS:
        raise UserError(f"--format {fmt!r}: use {', '.join(FORMATS)}")
    if fmt == "openai-stored" and (teacher is not None or dpi is not None):
        raise UserError(f"--{'teacher' if teacher is not None else 'dpi'}: a stored-completions "
                        "file names each completion's model, and each record is labelled with "
                        "its own; drop it")
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
    if fmt in ("openai-ft", "openai-stored"):
        records = _openai_records(path, fmt, prov)
    else:
        records = []
        for i, row in _rows(path):
            try:
                record = Record.new(_PARSERS[fmt](row), provenance=prov, meta={"import_index": i})
            except (KeyError, TypeError, ValueError, ValidationError) as e:
                raise UserError(f"{path}: item {i} is not a {fmt} record "
                                f"({_why(e)}); check --format") from None
            records.append(record)
    if not records:
        raise UserError(f"{path}: no items found; is it empty?")
    n = write_records(out, records)
    teachers = [r.provenance.teacher for r in records]
    models = dict.fromkeys(x.model_returned or x.model_requested or "?" for x in teachers if x)
    return {"records": n, "teacher": t.model_dump(exclude_none=True) if t else None,
            "teachers": list(models), "source": src.model_dump(exclude_none=True)}


def _openai_records(path: Path, fmt: Format, prov: Provenance) -> list[Record]:
    """The records of an OpenAI fine-tuning or stored-completions file; a field Seed cannot
    read is one error naming the line (or array item) and the field."""
    unit = "item" if _is_array(path) else "line"
    records: list[Record] = []
    for i, row in _rows(path):
        try:
            if fmt == "openai-ft":
                records.append(ft_record(row, prov, i))
                continue
            assert prov.source is not None
            for where, completion in stored_completions(row):
                records += stored_records(completion, where, prov.source, i)
        except Bad as e:
            raise UserError(f"{path}: {unit} {i}, {e.where}: {e.why}; fix that {unit} "
                            f"(--format {fmt})") from None
    return records
