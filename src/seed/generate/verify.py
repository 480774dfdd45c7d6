"""Verified generation (rejection sampling): each sampled answer is graded before it is kept.

`grade(config, record, reply)` scores one reply to one prompt (1.0 is correct) with the verifier
`config.kind` names:
- `"task"`: the reasoning-gym family's own scorer (`seed.endpoints.tasks.score`) on the answer
  extracted from the reply; the record carries the task's provenance and entry.
- `"math"`: math-verify (Hugging Face's parser and checker, on sympy) of the extracted answer
  against the prompt's reference (`meta.answer`), so 1/2, 0.5 and \\frac{1}{2} are one answer.
- `"json_schema"`: the reply parses as JSON and validates against the schema (jsonschema-rs).
Only a reply's content is graded, never its reasoning (a `<think>` block still in the content,
as a raw rollout has it, is split off first with seed.thinking). `extract_answer` finds the
answer (VerifyConfig.extract says where).

`select(config, samples, passed)` grades one prompt's samples and keeps what `config.keep` says:
`first_correct` the first verified sample, `all_correct` every one, `pairs` one DPO record
(`meta.chosen` a verified answer, `meta.rejected` a failed one, the prompt and the chosen answer
as its messages; `mode = "dpo"` trains on it as it is). Each kept record's `meta.verify` says how
its prompt fared (family, samples, correct); `dataset_yield` totals that per family over the
records and failures files, so the yield covers every run that wrote them. This module knows
nothing about HTTP, the cache or the engine: it grades answers already cached, so a rerun
re-verifies for free.
"""

from __future__ import annotations

import json
import re
import threading
from functools import lru_cache
from pathlib import Path
from typing import Any

from seed.errors import UserError
from seed.files import read_jsonl
from seed.recipe import GenerateConfig, VerifyConfig
from seed.records import Record, read_records
from seed.thinking import split_thought

_TAG = re.compile(r"<answer>(.*?)</answer>", re.S)
_LINE = re.compile(r"^\s*(?:final\s+)?answer\s*[:：]\s*(.+?)\s*$", re.I | re.M)
_FENCE = re.compile(r"^```[\w-]*\s*\n(.*?)\n?```$", re.S)


def _boxed(text: str) -> str | None:
    """The content of the last `\\boxed{...}`, braces balanced."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j].strip()
    return None


def extract_answer(reply: str, how: str = "auto") -> str | None:
    """The answer in a reply's content: the last `<answer>` tag, `\\boxed{}` or "Answer:" line, or
    the whole reply (`auto` tries them in that order); None when the asked-for marker is absent."""
    return _located(reply, how)[0]


def _located(reply: str, how: str) -> tuple[str | None, bool]:
    """`extract_answer`, and whether a marker delimited it (else it is the whole reply)."""
    text = split_thought(reply)[1].strip()
    found: dict[str, Any] = {
        "answer_tag": lambda: (m[-1].strip() if (m := _TAG.findall(text)) else None),
        "boxed": lambda: _boxed(text),
        "answer_line": lambda: (m[-1] if (m := _LINE.findall(text)) else None),
    }
    if how == "whole":
        return text, False
    if how != "auto":
        return found[how](), True
    for way in ("answer_tag", "boxed", "answer_line"):
        if (answer := found[way]()) is not None:
            return answer, True
    return text, False


def family(record: Record) -> str:
    """What a yield is counted by: the reasoning-gym task, else the prompt source's name."""
    source = record.provenance.source
    return str(record.meta.get("task") or (source.name if source else "prompts"))


def _math(text: str, bare: bool) -> list[Any]:
    """math-verify's reading of `text`; a bare expression (a reference, a delimited answer) is read
    as LaTeX math first (unwrapped, `x^2 + 1` would be read as its last number)."""
    from math_verify import parse

    # signal.alarm bounds a pathological expression, and only works on the main thread
    limit = 5 if threading.current_thread() is threading.main_thread() else 0
    if bare and (got := parse(f"${text}$", parsing_timeout=limit)):
        return list(got)
    return list(parse(text, parsing_timeout=limit))


def _math_score(reference: Any, answer: str, bare: bool) -> float:
    from math_verify import verify

    if not isinstance(reference, str):
        raise UserError("generate.verify.kind = \"math\" needs each prompt's reference answer "
                        "(generate.verify.reference) in its meta.answer")
    gold, got = _math(reference, bare=True), _math(answer, bare)
    if not gold:
        raise UserError(f"reference answer {reference!r}: math-verify cannot read it as math; "
                        "fix the prompt's reference or verify with kind = \"task\"")
    limit = 5 if threading.current_thread() is threading.main_thread() else None
    return 1.0 if got and verify(gold, got, timeout_seconds=limit) else 0.0


@lru_cache(maxsize=16)
def _validator(schema_json: str) -> Any:
    import jsonschema_rs

    try:
        return jsonschema_rs.validator_for(json.loads(schema_json))
    except (jsonschema_rs.ValidationError, ValueError) as e:
        raise UserError(f"generate.verify.json_schema: not a JSON schema ({e}); fix it") from None


def check_schema(schema: dict[str, Any]) -> None:
    """A UserError now if `schema` is no JSON schema, before anything is paid for."""
    _validator(json.dumps(schema, sort_keys=True))


def _schema_score(schema: dict[str, Any], answer: str) -> float:
    text = answer.strip()
    if (m := _FENCE.match(text)) is not None:
        text = m[1]
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return 0.0
    return 1.0 if _validator(json.dumps(schema, sort_keys=True)).is_valid(value) else 0.0


def resolved(config: GenerateConfig) -> VerifyConfig | None:
    """`generate.verify`, checked against the rest of `[generate]`, its schema defaulting to
    `generate.response_schema`; a UserError before anything is paid for."""
    v = config.verify
    if v is None:
        return None
    if config.turns > 1:
        raise UserError("generate.verify checks single answers: set generate.turns = 1")
    if v.keep == "pairs" and config.samples < 2:
        raise UserError("generate.verify.keep = \"pairs\" needs a verified and a failed answer "
                        "per prompt: set generate.samples to 2 or more")
    if v.kind == "task" and not config.tasks:
        raise UserError("generate.verify.kind = \"task\" grades answers to reasoning-gym "
                        "prompts: add [[generate.tasks]] (a family name and its config)")
    if v.kind == "task" and config.prompts:
        raise UserError("generate.verify.kind = \"task\" grades only [[generate.tasks]] prompts, "
                        "and prompts files have no task to grade against: generate them in "
                        "another run, or verify with kind = \"math\" and reference answers")
    if v.kind in ("task", "math") and (config.self_instruct or config.evol_instruct):
        raise UserError(f"generate.verify.kind = \"{v.kind}\" needs each prompt's reference "
                        "answer, which Self-Instruct and Evol-Instruct prompts do not have; "
                        "remove them or verify with kind = \"json_schema\"")
    if v.kind == "json_schema":
        schema = v.json_schema or config.response_schema
        if schema is None:
            raise UserError("generate.verify.kind = \"json_schema\" needs a schema: set "
                            "generate.verify.json_schema or generate.response_schema")
        check_schema(schema)
        v = v.model_copy(update={"json_schema": schema})
    return v


def grade(config: VerifyConfig, record: Record, reply: str) -> float:
    """The verifier's score of `reply` (content only) to the prompt `record`: 1.0 is correct.

    `record` holds what the verifier reads: a reasoning-gym task's provenance and `meta.entry`
    (`task`), the reference `meta.answer` (`math`); `json_schema` reads `config.json_schema`."""
    answer, marked = _located(reply, config.extract)
    if answer is None:
        return 0.0
    if config.kind == "task":
        from seed.endpoints.tasks import score

        return score(record, answer)
    if config.kind == "math":
        return _math_score(record.meta.get("answer"), answer, bare=marked)
    if config.json_schema is None:
        raise UserError("generate.verify.kind = \"json_schema\" needs a schema: set "
                        "generate.verify.json_schema or generate.response_schema")
    return _schema_score(config.json_schema, answer)


def select(config: VerifyConfig, samples: list[Record],
           passed: list[Record]) -> tuple[list[Record], str | None, dict[str, Any]]:
    """One prompt's records to keep (see the module docstring), why when none, and its tally
    (family, samples, correct; what a failures-file line carries for `dataset_yield`).

    `samples` are every answer paid for, in order; `passed` those the answer filters kept, which
    alone are graded (a filtered answer is neither kept nor a pair's rejected answer)."""
    scores = [grade(config, r, r.messages[-1].content) for r in passed]
    good = [r for r, s in zip(passed, scores, strict=True) if s >= config.threshold]
    bad = [r for r, s in zip(passed, scores, strict=True) if s < config.threshold]
    tally = {"kind": config.kind, "family": family(samples[0]) if samples else "prompts",
             "samples": len(samples), "correct": len(good)}
    for r, s in zip(passed, scores, strict=True):
        r.meta["verify"] = {**tally, "score": s}
    if config.keep == "pairs":
        if not good or not bad:
            return [], f"no pair: {len(good)} of {len(samples)} answers verified", tally
        return [_pair(good[0], bad[0])], None, tally
    if not good:
        return [], f"no verified answer: 0 of {len(samples)} verified", tally
    return (good[:1] if config.keep == "first_correct" else good), None, tally


def _pair(chosen: Record, rejected: Record) -> Record:
    chosen_text, rejected_text = chosen.messages[-1].content, rejected.messages[-1].content
    meta = {**chosen.meta, "chosen": chosen_text, "rejected": rejected_text,
            "rejected_sample": rejected.meta.get("sample"),
            "rejected_finish_reason": rejected.meta.get("finish_reason")}
    return Record.new(chosen.messages, chosen.provenance, meta)


def dataset_yield(records_path: Path, failed_path: Path, job: str,
                  config: VerifyConfig) -> dict[str, Any]:
    """Prompts, answers paid for, answers verified and records kept, in all and per family, over
    the job's records and its failed prompts (each prompt counted once, however many reruns)."""
    prompts: dict[str, dict[str, Any]] = {}
    if records_path.exists():
        for r in read_records(records_path):
            if r.meta.get("job") != job or "verify" not in r.meta:
                continue
            v = r.meta["verify"]
            entry = prompts.setdefault(r.meta["prompt_key"], {
                "family": v["family"], "samples": v["samples"], "correct": v["correct"],
                "records": 0})
            entry["records"] += 1
    failed: dict[str, dict[str, Any]] = {}
    if failed_path.exists():
        for _, row in read_jsonl(failed_path):
            if isinstance(row, dict) and row.get("job") == job and "verify" in row:
                failed[row["prompt_key"]] = {**row["verify"], "records": 0}
    for key, entry in failed.items():
        prompts.setdefault(key, entry)
    families: dict[str, dict[str, Any]] = {}
    for entry in prompts.values():
        _add(families.setdefault(entry["family"], _empty()), entry)
    total = _empty()
    for entry in prompts.values():
        _add(total, entry)
    return {"kind": config.kind, "keep": config.keep, **total,
            "families": dict(sorted(families.items()))}


def _empty() -> dict[str, Any]:
    return {"prompts": 0, "prompts_kept": 0, "samples": 0, "correct": 0, "records": 0,
            "yield": 0.0}


def _add(into: dict[str, Any], entry: dict[str, Any]) -> None:
    into["prompts"] += 1
    into["prompts_kept"] += entry["records"] > 0
    for key in ("samples", "correct", "records"):
        into[key] += entry[key]
    into["yield"] = into["correct"] / into["samples"] if into["samples"] else 0.0


def yield_lines(verified: dict[str, Any]) -> list[str]:
    """The yield in words, one line per family (the summary's and the dataset card's)."""
    lines = []
    for name, f in verified["families"].items():
        lines.append(f"{name}: {f['correct']:,} of {f['samples']:,} answers verified "
                     f"({f['yield']:.1%}); {f['records']:,} records kept from "
                     f"{f['prompts_kept']:,} of {f['prompts']:,} prompts")
    return lines
