"""The terms registry: load `terms.toml` (and a user's overrides), validate it, match a teacher.

An entry says, for one teacher family or route, whether its outputs may train an internal or a
distributed student, what obligations follow, and the text it rests on (a URL, the date it was read,
the clause). A user's overrides file has the same schema; its entries are tried first and are
marked with the file they came from, so a verdict that rests on them says so. This module knows
nothing about records files or how verdicts are combined (see `gate.py`).
"""

from __future__ import annotations

import re
import tomllib
from fnmatch import fnmatchcase
from importlib.resources import files
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from seed.errors import UserError
from seed.records import Source, Teacher

BUILTIN = "builtin"
RawVerdict = Literal["allow", "warn", "block", "unverified"]
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class Obligation(BaseModel):
    """What the student inherits: a name prefix, a notice, terms that pass on, a license copy."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["name_prefix", "notice", "inherit_terms", "include_license"]
    value: str
    when: Literal["distributed", "always"] = "distributed"


class Cited(BaseModel):
    """What every registry entry must carry: where its verdict comes from and when it was read."""

    model_config = ConfigDict(extra="forbid")

    id: str
    source_url: str = Field(min_length=1)
    read_on: str
    clause: str = Field(min_length=1)
    obligations: list[Obligation] = Field(default_factory=list)
    origin: str = BUILTIN  # "builtin" or the overrides file the entry came from

    @field_validator("read_on")
    @classmethod
    def _date(cls, v: str) -> str:
        if not _DATE.match(v):
            raise ValueError("must be a date, YYYY-MM-DD")
        return v


class TermsEntry(Cited):
    """One teacher family or route and what its terms allow."""

    family: str
    # "model": the teacher family's terms (first match wins); "route": a platform's own terms
    # (Bedrock, OpenRouter), judged in addition to the model's, the stricter verdict winning.
    layer: Literal["model", "route"] = "model"
    routes: list[str] = Field(default_factory=list)
    hosts: list[str] = Field(default_factory=list)
    models: list[str] = Field(default_factory=list)
    internal: RawVerdict
    distributed: RawVerdict
    # A prompt source kind (e.g. "shapes"): such an entry matches only records with no teacher,
    # whose source produced the whole record itself.
    sources: list[str] = Field(default_factory=list)
    internal_classifier: RawVerdict | None = None
    distributed_classifier: RawVerdict | None = None
    internal_image_generator: RawVerdict | None = None
    distributed_image_generator: RawVerdict | None = None
    noncommercial_only: bool = False

    def matches(self, teacher: Teacher) -> bool:
        """True when every condition the entry sets holds for this teacher (globs, lowercased)."""
        if not (self.routes or self.hosts or self.models):
            return False  # the fallback entry and source-only entries match no teacher
        if self.routes and not _any(self.routes, [teacher.route]):
            return False
        if self.hosts and not _any(self.hosts, [teacher.host]):
            return False
        return not self.models or _any(self.models, [teacher.model_returned,
                                                     teacher.model_requested])

    def matches_source(self, source: Source | None) -> bool:
        """For a record without a teacher: true when this source-only entry names its kind."""
        if self.routes or self.hosts or self.models or source is None:
            return False
        return _any(self.sources, [source.kind])

    def verdict_for(self, distribute: bool, task: str) -> RawVerdict:
        base = self.distributed if distribute else self.internal
        if task == "classifier":
            special = self.distributed_classifier if distribute else self.internal_classifier
            return special or base
        if task == "image_generator":
            special = (self.distributed_image_generator if distribute
                       else self.internal_image_generator)
            return special or base
        return base


class LicenseEntry(Cited):
    """A data license by its names and its class: all uses, or non-commercial only."""

    names: list[str]
    license_class: Literal["all", "nc"] = Field(alias="class")


class Terms(BaseModel):
    """The registry in matching order: override entries first, then the built-in ones."""

    entries: list[TermsEntry]
    licenses: list[LicenseEntry]
    overrides: list[str] = Field(default_factory=list)

    def match(self, teacher: Teacher | None, source: Source | None = None) -> TermsEntry:
        """The first model-layer entry matching the teacher (or, for a record without one, its
        source kind), or the `unknown` entry."""
        for entry in self.entries:
            if entry.layer != "model":
                continue
            if entry.matches(teacher) if teacher is not None else entry.matches_source(source):
                return entry
        return self.unknown

    def route_terms(self, teacher: Teacher | None) -> list[TermsEntry]:
        """The platform (route-layer) entries that also apply to this teacher, first match only."""
        if teacher is None:
            return []
        return [e for e in self.entries if e.layer == "route" and e.matches(teacher)][:1]

    @property
    def unknown(self) -> TermsEntry:
        return next(e for e in self.entries if e.id == "unknown")

    def license(self, name: str) -> LicenseEntry | None:
        """The license entry one of whose names equals `name` (case and spacing ignored)."""
        key = normalize_license(name)
        for lic in self.licenses:
            if key in {normalize_license(n) for n in lic.names}:
                return lic
        return None


def normalize_license(name: str) -> str:
    return re.sub(r"[\s_]+", " ", name.strip().lower())


def _any(patterns: list[str], values: list[str | None]) -> bool:
    vals = [v.lower() for v in values if v]
    return any(fnmatchcase(v, p.lower()) for p in patterns for v in vals)


def _parse(data: dict, where: str, origin: str) -> tuple[list[TermsEntry], list[LicenseEntry]]:
    unknown_top = set(data) - {"entry", "license"}
    if unknown_top:
        raise UserError(f"{where}: unknown top-level key {sorted(unknown_top)[0]!r}; "
                        "use [[entry]] and [[license]] tables")
    out_e: list[TermsEntry] = []
    out_l: list[LicenseEntry] = []
    for kind, model, out in (("entry", TermsEntry, out_e), ("license", LicenseEntry, out_l)):
        tables = data.get(kind, [])
        if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
            raise UserError(f"{where}: {kind} must be an array of tables, each written "
                            f"[[{kind}]]; fix the file")
        for i, raw in enumerate(tables):
            try:
                out.append(model.model_validate({**raw, "origin": origin}))  # type: ignore[arg-type]
            except ValidationError as e:
                err = e.errors()[0]
                field = ".".join(str(p) for p in err["loc"]) or "entry"
                name = raw.get("id", f"#{i + 1}")
                raise UserError(f"{where}: [[{kind}]] {name}: {field}: {err['msg'].lower()}; "
                                "every entry needs id, source_url, read_on (YYYY-MM-DD) and clause"
                                ) from None
    return out_e, out_l


def _read_toml(path: Path) -> dict:
    if not path.is_file():
        raise UserError(f"{path}: no such terms overrides file; check the path")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not UTF-8 text; save the terms file as UTF-8 TOML") from None
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{path}: not valid TOML ({e}); fix the syntax") from None


def builtin_text() -> str:
    """The packaged registry, as text."""
    return files("seed.policy").joinpath("terms.toml").read_text(encoding="utf-8")


def load_terms(overrides: str | Path | None = None) -> Terms:
    """The built-in registry, with a user's overrides file (same schema) tried first."""
    entries, licenses = _parse(tomllib.loads(builtin_text()), "seed/policy/terms.toml", BUILTIN)
    used: list[str] = []
    if overrides:
        path = Path(overrides)
        o_entries, o_licenses = _parse(_read_toml(path), str(path), str(path))
        entries, licenses = o_entries + entries, o_licenses + licenses
        used.append(str(path))
    return Terms(entries=entries, licenses=licenses, overrides=used)
