"""The terms gate: records x terms -> a verdict per teacher and source, for one use of the student.

A *use* says whether the student will be distributed, used commercially, and whether it is a chat
model, a classifier or an image generator, and gives its name. Records are grouped by teacher
(route, host, model) and prompt source (kind, name, license); each group gets the teacher's verdict
from the terms registry and the source license's verdict, the stricter of the two, the obligations
that follow, and the reasons with the clause and URL they rest on. `seed check` prints this;
`seed train` refuses to train on a blocked file unless the user accepts the risk in writing. Image
records (a line with `image` and no `messages`) are read for their provenance only; the gate never
opens the image files. This module reads records and the registry; it writes nothing (cards are
`cards.py`).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from seed.errors import UserError
from seed.files import jsonl_lines
from seed.policy.terms import BUILTIN, LicenseEntry, Obligation, Terms, TermsEntry, load_terms
from seed.records import Provenance, Record, Source, Teacher
from seed.runs import read_manifest

Verdict = Literal["allow", "warn", "block"]
_RANK = {"allow": 0, "warn": 1, "block": 2}
# Prompt sources whose license is the data's own; generators' prompts carry the teacher's terms.
_LICENSED_KINDS = {"file", "import"}


class Use(BaseModel):
    """How the student will be used: the question every verdict answers."""

    model_config = ConfigDict(extra="forbid")

    distribute: bool = True
    commercial: bool = True
    task: Literal["chat", "classifier", "image_generator"] = "chat"
    student_name: str | None = None
    unknown: Literal["warn", "block"] = "warn"

    def describe(self) -> str:
        return (f"{'distributed' if self.distribute else 'internal'} "
                f"{'commercial' if self.commercial else 'non-commercial'} "
                f"{self.task.replace('_', '-')} student"
                + (f" named {self.student_name!r}" if self.student_name else ""))


@dataclass
class Finding:
    """The verdict for one (teacher, source) group of records."""

    teacher: str
    source: str
    records: int
    verdict: Verdict
    entry: str
    family: str
    obligations: list[str] = field(default_factory=list)
    notices: list[str] = field(default_factory=list)  # "Built with ..." lines the card displays
    route_terms: list[str] = field(default_factory=list)  # platform entries judged as well
    reasons: list[str] = field(default_factory=list)
    citations: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class CheckResult:
    """Every group's finding, the use it was judged for, and the overall verdict."""

    use: Use
    findings: list[Finding]
    overrides: list[str] = field(default_factory=list)
    accepted_risk: str | None = None

    @property
    def records(self) -> int:
        return sum(f.records for f in self.findings)

    @property
    def verdict(self) -> Verdict:
        return max((f.verdict for f in self.findings), key=_RANK.__getitem__, default="allow")

    @property
    def blocked(self) -> int:
        return sum(f.records for f in self.findings if f.verdict == "block")

    def obligations(self) -> list[str]:
        """Every obligation in the findings, each once, in order of first appearance."""
        return list(dict.fromkeys(o for f in self.findings for o in f.obligations))

    def notices(self) -> list[str]:
        return list(dict.fromkeys(n for f in self.findings for n in f.notices))

    def to_dict(self) -> dict[str, Any]:
        return {"use": self.use.model_dump(), "verdict": self.verdict, "records": self.records,
                "blocked_records": self.blocked, "overrides": self.overrides,
                "accepted_risk": self.accepted_risk, "obligations": self.obligations(),
                "findings": [f.to_dict() for f in self.findings]}


def teacher_label(t: Teacher | None) -> str:
    if t is None:
        return "(no provenance)"
    model = t.model_returned or t.model_requested or "?"
    return f"{t.route}:{model}" + (f" @ {t.host}" if t.host else "")


def source_label(s: Source | None) -> str:
    if s is None:
        return "(none)"
    return f"{s.kind}:{s.name}" + (f" ({s.license})" if s.license else "")


def _cite(e: TermsEntry | LicenseEntry) -> str:
    where = "" if e.origin == BUILTIN else f"; override from {e.origin}"
    return f"{e.source_url} (read {e.read_on}{where})"


def _worst(a: Verdict, b: Verdict) -> Verdict:
    return a if _RANK[a] >= _RANK[b] else b


def _applies(o: Obligation, use: Use) -> bool:
    return o.when == "always" or use.distribute


def _judge_teacher(teacher: Teacher | None, source: Source | None, use: Use, terms: Terms,
                   f: Finding) -> None:
    entry = terms.match(teacher, source)
    f.entry, f.family = entry.id, entry.family
    for e in [entry, *terms.route_terms(teacher)]:
        _apply(e, use, f)
        if e.layer == "route":
            f.route_terms.append(e.id)


def _apply(entry: TermsEntry, use: Use, f: Finding) -> None:
    """One registry entry's verdict, reasons, obligations and citation, folded into `f`."""
    raw = entry.verdict_for(use.distribute, use.task)
    verdict: Verdict = use.unknown if raw == "unverified" else raw
    # What decided this use comes first, then the clause it rests on.
    why: list[str] = []
    if raw == "unverified":
        why.append(f"Terms not verified for {entry.family}; policy.unknown = {use.unknown}.")
    if entry.noncommercial_only and use.commercial:
        verdict = "block"
        why.append(f"{entry.family} allows non-commercial use only; this student is commercial.")
    for o in entry.obligations:
        if not _applies(o, use):
            continue
        if o.kind == "name_prefix":
            name = use.student_name or ""
            if not name.startswith(o.value):
                verdict = "block"
                why.append(f"The student's name must start with {o.value!r} (got "
                           f"{name or 'no name'!r}); set --student-name or policy.student_name.")
            f.obligations.append(f"The model's name starts with {o.value!r}.")
        elif o.kind == "notice":
            f.notices.append(o.value)
            f.obligations.append(f"Display \"{o.value}\" in the model's documentation.")
        else:
            f.obligations.append(o.value)
    f.verdict = _worst(f.verdict, verdict)
    f.reasons.extend([*why, f"{entry.family}: {entry.clause}"])
    f.citations.append(_cite(entry))
    if entry.origin != BUILTIN:
        f.overrides.append(f"{entry.id} from {entry.origin}")


def _judge_source(source: Source | None, use: Use, terms: Terms, f: Finding) -> None:
    if source is None or source.kind not in _LICENSED_KINDS:
        return
    if not source.license:
        f.verdict = _worst(f.verdict, use.unknown)
        f.reasons.append(f"Source {source.name!r} declares no license (policy.unknown = "
                         f"{use.unknown}); declare it with `seed import --license`.")
        return
    for name in (n.strip() for n in source.license.split(";") if n.strip()):
        lic = terms.license(name)
        if lic is None:
            f.verdict = _worst(f.verdict, use.unknown)
            f.reasons.append(f"Source license {name!r} is not in the terms registry "
                             f"(policy.unknown = {use.unknown}); add it to an overrides file.")
            continue
        verdict: Verdict = "block" if lic.license_class == "nc" and use.commercial else "allow"
        f.verdict = _worst(f.verdict, verdict)
        f.reasons.append(f"Source license {name}: {lic.clause}")
        f.citations.append(_cite(lic))
        if lic.origin != BUILTIN:
            f.overrides.append(f"license {lic.id} from {lic.origin}")
        f.obligations.extend(o.value.format(license=name, source=source.name)
                             for o in lic.obligations if _applies(o, use))


class _Provenanced(Protocol):
    provenance: Provenance


class _ImageLine(BaseModel):
    """An image record as the gate reads it: its provenance only (records.py has the full model)."""

    model_config = ConfigDict(extra="allow")

    id: str
    image: dict[str, Any]
    provenance: Provenance = Field(default_factory=Provenance)


def read_provenanced(path: str | Path) -> Iterator[_Provenanced]:
    """A records file's lines as the gate needs them: chat records in full, image records (a line
    with `image` and no `messages`) by their provenance only; errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such records file; check the path")
    for lineno, raw in jsonl_lines(path):
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        image = isinstance(data, dict) and "image" in data and "messages" not in data
        try:
            yield (_ImageLine if image else Record).model_validate_json(raw)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "line"
            raise UserError(f"{path}:{lineno}: not a valid record ({where}: {first['msg']}); "
                            "fix or remove that line") from None


def evaluate(records: Iterable[_Provenanced], use: Use, terms: Terms) -> CheckResult:
    """Judge every record for this use; one finding per (teacher, source) group, in file order."""
    groups: dict[tuple[str, str], tuple[Teacher | None, Source | None, int]] = {}
    for r in records:
        t, s = r.provenance.teacher, r.provenance.source
        key = (teacher_label(t), source_label(s))
        _, _, n = groups.get(key, (t, s, 0))
        groups[key] = (t, s, n + 1)
    findings = []
    for (tl, sl), (t, s, n) in groups.items():
        f = Finding(teacher=tl, source=sl, records=n, verdict="allow", entry="", family="")
        _judge_teacher(t, s, use, terms, f)
        _judge_source(s, use, terms, f)
        f.obligations = list(dict.fromkeys(f.obligations))
        f.notices = list(dict.fromkeys(f.notices))
        findings.append(f)
    return CheckResult(use=use, findings=findings, overrides=terms.overrides)


def check_file(path: str | Path, use: Use, overrides: str | Path | None = None) -> CheckResult:
    """`evaluate` on a records file with the built-in registry plus an optional overrides file.

    A file of image records judged for a chat student (the default use) is judged for an image
    generator instead: no chat model trains on images."""
    terms = load_terms(overrides)
    records = list(read_provenanced(path))
    if use.task == "chat" and records and all(isinstance(r, _ImageLine) for r in records):
        use = use.model_copy(update={"task": "image_generator"})  # images train no chat model
    result = evaluate(records, use, terms)
    if not result.findings:
        raise UserError(f"{path}: no records to check; the file is empty")
    return result


def gate(path: str | Path, use: Use, overrides: str | Path | None,
         accept_terms_risk: str | None, refusal: Callable[[CheckResult], str]) -> CheckResult:
    """`check_file`, then a UserError saying `refusal(result)` unless every record may serve
    `use`. With `accept_terms_risk` (a reason in words) a blocked file passes and the reason is
    kept in the result, for the manifest and the card."""
    result = check_file(path, use, overrides)
    if result.verdict == "block":
        if accept_terms_risk is None or not accept_terms_risk.strip():
            raise UserError(refusal(result))
        result.accepted_risk = accept_terms_risk.strip()
    return result


def gate_training(path: str | Path, use: Use, overrides: str | Path | None = None,
                  accept_terms_risk: str | None = None) -> CheckResult:
    """The check `seed train` runs first: raise unless every record may train this student."""

    def refusal(result: CheckResult) -> str:
        families = sorted({f.family for f in result.findings if f.verdict == "block"})
        return (f"{path}: training refused, {result.blocked} of {result.records} records are "
                f"forbidden for a {use.describe()} ({'; '.join(families)}); run `seed check "
                f"{path}` for the clauses, or pass --accept-terms-risk \"REASON\"")

    return gate(path, use, overrides, accept_terms_risk, refusal)


def summarize(records_path: str | Path, use: Use | None = None,
              overrides: str | Path | None = None) -> list[dict[str, Any]]:
    """Per teacher and source: records, verdict, obligations, reasons, citations (for reports).

    Without a `use`, the verdicts are for a distributed commercial chat student, the strictest case.
    """
    return [f.to_dict() for f in check_file(records_path, use or Use(), overrides).findings]


def summarize_run(run_dir: str | Path) -> dict[str, Any]:
    """A run's terms decision as `seed run` recorded it: use, verdict, accepted risk, findings.

    Reads `manifest.json`'s `policy` entry (the decision training ran under); for a run made
    before the gate existed, checks `data/train.jsonl` now for the strictest use.
    """
    run_dir = Path(run_dir)
    manifest = run_dir / "manifest.json"
    if manifest.is_file():
        recorded = read_manifest(manifest).get("policy")
        if isinstance(recorded, dict) and recorded:
            return recorded
    return check_file(run_dir / "data" / "train.jsonl", Use()).to_dict()
