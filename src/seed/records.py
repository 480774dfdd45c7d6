"""The record: one conversation per JSON line, and the only thing that travels between stages.

A record is `{"id", "messages", "provenance", "meta"}`; `messages` is the OpenAI chat format, so the
files load in `datasets`, TRL or axolotl as they are. This module reads records as a stream and
appends them; it knows nothing about where they came from or what a stage does with them.

Crash safety: a writer emits each record as one `write()` of a full line ending in a newline, so a
crash can leave at most one *torn* line, the last one, without its newline. Readers report and skip
it; `RecordWriter` cuts it off before appending. Any other line that is not a valid record is an
error naming the file and line number.

A prompt's records (its samples) are appended in one `write()` too, but a kill can stop a write
between pages, after a whole line: the first of a prompt's records without the rest. Such a write
marks each record with how many it holds (`meta.prompt_records`, `prompt_lines`); `whole_prompts`
counts a prompt only when all of them are there, and `seal_records` cuts a short last group off
before appending, so the rerun writes the prompt once, whole.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from seed.errors import UserError
from seed.files import jsonl_lines, lines_backward, seal_jsonl, truncate_to

log = logging.getLogger(__name__)

Role = Literal["system", "user", "assistant", "tool"]


class ToolFunction(BaseModel):
    """The function a tool call names, with its arguments as the JSON text the model wrote."""

    model_config = ConfigDict(extra="forbid")

    name: str
    arguments: str


class ToolCall(BaseModel):
    """One call in an assistant turn, in OpenAI's shape (`id`, `type`, `function`)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    type: Literal["function"] = "function"
    function: ToolFunction


class Message(BaseModel):
    """One chat turn in the OpenAI format; an assistant turn may hold its thinking trace in
    `reasoning_content` (the key Qwen3's and DeepSeek-R1's chat templates read), its tool calls
    (`tool_calls`) and a fine-tuning `weight` (0: not trained on, OpenAI's meaning); a tool turn
    names the call it answers (`tool_call_id`); any turn may carry a participant `name`. Each is
    written only when set, so a record without them is the same line it always was."""

    model_config = ConfigDict(extra="forbid")

    role: Role
    content: str
    reasoning_content: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    weight: Literal[0, 1] | None = None

    @field_validator("weight", mode="before")
    @classmethod
    def _weight_is_an_integer(cls, v: Any) -> Any:
        if v is not None and type(v) is not int:  # true or 1.0 is not OpenAI's 0 or 1
            raise ValueError(f"weight is {json.dumps(v)}; use 0 or 1")
        return v

    @model_validator(mode="after")
    def _fields_on_their_roles(self) -> Message:
        if self.reasoning_content is not None and self.role != "assistant":
            raise ValueError(f"a {self.role} message holds reasoning_content; only assistant "
                             "turns have a reasoning trace")
        if self.tool_calls is not None and self.role != "assistant":
            raise ValueError(f"a {self.role} message holds tool_calls; only assistant turns "
                             "call tools")
        if self.weight is not None and self.role != "assistant":
            raise ValueError(f"a {self.role} message holds a weight; only assistant turns are "
                             "weighted (0 or 1)")
        if self.tool_call_id is not None and self.role != "tool":
            raise ValueError(f"a {self.role} message holds tool_call_id; only tool turns "
                             "answer a call")
        return self

    def chat(self, weight: bool = False) -> dict[str, Any]:
        """The turn as a plain dict in OpenAI's chat shape, each optional field only where it is
        set; `weight` (a fine-tuning file's key, not a chat API's) only when asked for."""
        out: dict[str, Any] = {"role": self.role, "content": self.content}
        if self.reasoning_content is not None:
            out["reasoning_content"] = self.reasoning_content
        if self.tool_calls is not None:
            out["tool_calls"] = [c.model_dump() for c in self.tool_calls]
        if self.tool_call_id is not None:
            out["tool_call_id"] = self.tool_call_id
        if self.name is not None:
            out["name"] = self.name
        if weight and self.weight is not None:
            out["weight"] = self.weight
        return out


class Teacher(BaseModel):
    """Who wrote the assistant turns: enough to hold them against the teacher's terms; no key."""

    model_config = ConfigDict(extra="allow")

    route: str  # direct, azure, bedrock, openrouter, local, tasks
    host: str | None = None
    model_requested: str | None = None
    model_returned: str | None = None
    system_fingerprint: str | None = None
    weights_revision: str | None = None
    params: dict[str, Any] = Field(default_factory=dict)
    requested_at: str | None = None
    responded_at: str | None = None
    # True when the teacher sent no usable token counts and Seed charged its own upper bound
    usage_estimated: bool | None = None
    api: str | None = None  # "batch": answered through the provider's batch API (else online)


class Source(BaseModel):
    """Where the prompt came from: a file and its license, or a generator with version and seed."""

    model_config = ConfigDict(extra="allow")

    kind: str  # file, self_instruct, evol_instruct, tasks, import, ...
    name: str
    license: str | None = None
    version: str | None = None
    config: dict[str, Any] = Field(default_factory=dict)
    seed: int | None = None


class Provenance(BaseModel):
    """Who produced a record and for what it may be used."""

    model_config = ConfigDict(extra="allow")

    teacher: Teacher | None = None
    source: Source | None = None
    purpose: Literal["train", "eval", "judge"] = "train"


class Record(BaseModel):
    """One conversation with its provenance; `id` is a stable hash of the messages (and of the
    `tools` offered, OpenAI's function tools, when the conversation had any)."""

    model_config = ConfigDict(extra="forbid")

    id: str
    messages: list[Message]
    tools: list[dict[str, Any]] | None = None
    provenance: Provenance = Field(default_factory=Provenance)
    meta: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def new(
        cls,
        messages: list[dict[str, Any]] | list[dict[str, str]] | list[Message],
        provenance: Provenance | None = None,
        meta: dict[str, Any] | None = None,
        tools: list[dict[str, Any]] | None = None,
    ) -> Record:
        msgs = [m if isinstance(m, Message) else Message(**m) for m in messages]
        return cls(
            id=record_id(msgs, tools),
            messages=msgs,
            tools=tools,
            provenance=provenance or Provenance(),
            meta=meta or {},
        )

    def to_line(self) -> str:
        """The record as one JSON line with its newline, ready for a single append."""
        data = self.model_dump(mode="json", exclude_none=True)
        return json.dumps(data, ensure_ascii=False) + "\n"

    def chat(self, weights: bool = False) -> list[dict[str, Any]]:
        """The messages as plain dicts, the shape chat templates and HTTP APIs take (with each
        assistant turn's `reasoning_content` and `tool_calls` where it has them; each turn's
        fine-tuning `weight` too when `weights`)."""
        return [m.chat(weights) for m in self.messages]

    def prompt(self) -> list[dict[str, Any]]:
        """`chat()` without a trailing assistant answer: what a model is asked to continue."""
        chat = self.chat()
        return chat[:-1] if chat and chat[-1]["role"] == "assistant" else chat


def record_id(messages: Iterable[Message | dict[str, Any]],
              tools: list[dict[str, Any]] | None = None) -> str:
    """A stable 16-hex-digit hash of the conversation's roles, contents and reasoning traces
    (and tool calls, tool answers and the tools offered, where there are any; a turn's weight
    is not part of the conversation). A conversation without them hashes as it always did."""
    canon: Any = [m.chat() if isinstance(m, Message) else dict(m) for m in messages]
    if tools is not None:
        canon = {"messages": canon, "tools": tools}
    blob = json.dumps(canon, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _parse(line: bytes, path: Path, lineno: int) -> Record:
    try:
        return Record.model_validate_json(line)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "line"
        raise UserError(
            f"{path}:{lineno}: not a valid record ({where}: {first['msg']}); "
            "fix or remove that line"
        ) from None


def read_records(path: str | Path) -> Iterator[Record]:
    """Stream the records of a JSONL file; a torn last line is logged and skipped, a valid last
    record without its newline kept (files.jsonl_lines: the one torn-line rule)."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such records file; check the path")
    for lineno, raw in jsonl_lines(path):
        yield _parse(raw, path, lineno)


def count_records(path: str | Path) -> int:
    """How many complete records a file holds (0 if it does not exist)."""
    path = Path(path)
    if not path.exists():
        return 0
    return sum(1 for _ in read_records(path))


PROMPT_RECORDS = "prompt_records"  # meta key: how many records one prompt's write holds


class _Keyed(Protocol):
    meta: dict[str, Any]

    def to_line(self) -> str: ...


def prompt_lines(records: Sequence[_Keyed]) -> bytes:
    """One prompt's records as the bytes of its one `write()`; with more than one, it marks each
    record's meta with how many there are (`PROMPT_RECORDS`), so a write torn after a whole line
    shows."""
    if len(records) > 1:
        for r in records:
            r.meta[PROMPT_RECORDS] = len(records)
    return "".join(r.to_line() for r in records).encode()


def whole_prompts(records: Iterable[_Keyed], job: str) -> set[str]:
    """The `meta.prompt_key`s of `job` whose records are all there (see `prompt_lines`)."""
    have: dict[str, int] = {}
    want: dict[str, int] = {}
    for r in records:
        if r.meta.get("job") != job or "prompt_key" not in r.meta:
            continue
        key = r.meta["prompt_key"]
        have[key] = have.get(key, 0) + 1
        want[key] = max(want.get(key, 1), int(r.meta.get(PROMPT_RECORDS, 1)))
    return {k for k, n in have.items() if n >= want[k]}


def seal_records(path: Path) -> int:
    """Make a records file end with a whole prompt before appending to it; the bytes cut off.

    `files.seal_jsonl` cuts a torn last line; then the last prompt's lines are counted back from
    the end, and when there are fewer than their `meta.prompt_records` (a write torn after a whole
    line) they are cut too: the rerun answers that prompt again (from the cache, for nothing).
    """
    cut = seal_jsonl(path)
    if not path.is_file():
        return cut
    first, want, seen, key = 0, 0, 0, None
    for offset, raw in lines_backward(path):
        try:
            meta = json.loads(raw).get("meta") or {}
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            return cut  # not a record: the reader names the line
        if key is None:
            key, want = (meta.get("prompt_key"), meta.get("job")), meta.get(PROMPT_RECORDS, 1)
        elif (meta.get("prompt_key"), meta.get("job")) != key:
            break
        first, seen = offset, seen + 1
        if seen >= want:
            return cut
    if key is None:
        return cut
    return cut + truncate_to(path, first)


class RecordWriter:
    """Append records to a JSONL file, one whole line per write; repairs a torn tail on open."""

    def __init__(self, path: str | Path, fsync: bool = False) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        removed = seal_records(self.path)
        if removed:
            log.warning("%s: removed a torn last write (%d bytes) left by a crash",
                        self.path, removed)
        self._f = self.path.open("ab", buffering=0)
        self._fsync = fsync

    def write(self, record: Record) -> None:
        self._f.write(record.to_line().encode())
        if self._fsync:
            os.fsync(self._f.fileno())

    def write_many(self, records: Iterable[Record]) -> int:
        n = 0
        for r in records:
            self.write(r)
            n += 1
        return n

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def write_records(path: str | Path, records: Iterable[Record]) -> int:
    """Write a whole records file atomically (temp file + rename); return how many were written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    n = 0
    with tmp.open("w", encoding="utf-8") as f:
        for r in records:
            f.write(r.to_line())
            n += 1
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return n


# -- image records ----------------------------------------------------------------------------
# One JSON line per image: `{"id", "prompt", "negative_prompt"?, "image": {...}, "provenance",
# "meta"}`. The image itself is a file beside the records file, named by its content
# (`images/<sha256[:2]>/<sha256>.<format>`), written (seed.generate.image_files) before its line.

ImageFormat = Literal["png", "jpeg", "webp"]


class ImageFile(BaseModel):
    """An image kept exactly as the teacher returned it, addressed by its SHA-256."""

    model_config = ConfigDict(extra="forbid")

    file: str = Field(pattern=r"^images/[0-9a-f]{2}/[0-9a-f]{64}\.(png|jpeg|webp)$")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    format: ImageFormat
    phash: str = Field(pattern=r"^[0-9a-f]{16}$")  # 64-bit difference hash (dHash)


class ImageRecord(BaseModel):
    """One image with the prompt that asked for it; `id` is a stable hash of both."""

    model_config = ConfigDict(extra="forbid")

    id: str
    prompt: str
    negative_prompt: str | None = None
    image: ImageFile
    provenance: Provenance = Field(default_factory=Provenance)
    meta: dict[str, Any] = Field(default_factory=dict)

    @classmethod
    def new(cls, prompt: str, image: ImageFile, provenance: Provenance | None = None,
            meta: dict[str, Any] | None = None,
            negative_prompt: str | None = None) -> ImageRecord:
        blob = json.dumps([prompt, negative_prompt or "", image.sha256], ensure_ascii=False)
        return cls(id=hashlib.sha256(blob.encode()).hexdigest()[:16], prompt=prompt,
                   negative_prompt=negative_prompt or None, image=image,
                   provenance=provenance or Provenance(), meta=meta or {})

    def to_line(self) -> str:
        """The record as one JSON line with its newline, ready for a single append."""
        data = self.model_dump(mode="json", exclude_none=True)
        return json.dumps(data, ensure_ascii=False) + "\n"

    def image_path(self, records_file: str | Path) -> Path:
        """Where the image lies: `image.file` is relative to the records file's directory."""
        return Path(records_file).parent / self.image.file

    def read_bytes(self, records_file: str | Path) -> bytes:
        """The image file's bytes, checked against `image.sha256`; a missing or changed file is
        a UserError naming the record and the file."""
        path = self.image_path(records_file)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise UserError(f"{records_file}: record {self.id} names {path}, which is missing; "
                            "restore the images/ folder beside the records or drop the record"
                            ) from None
        if hashlib.sha256(data).hexdigest() != self.image.sha256:
            raise UserError(f"{records_file}: record {self.id}: {path} does not match its "
                            "sha256 (changed or damaged); restore it or drop the record")
        return data

    def load(self, records_file: str | Path) -> Any:
        """The image as a `PIL.Image` (checked as `read_bytes` does), fully read."""
        from io import BytesIO

        from PIL import Image

        img = Image.open(BytesIO(self.read_bytes(records_file)))
        img.load()
        return img


def read_image_records(path: str | Path, check_files: bool = True) -> Iterator[ImageRecord]:
    """Stream the image records of a JSONL file (the torn-line rule of `read_records`); each
    record's image file is checked to exist and match its sha256 unless `check_files` is False."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such records file; check the path")
    for lineno, raw in jsonl_lines(path):
        try:
            record = ImageRecord.model_validate_json(raw)
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "line"
            raise UserError(f"{path}:{lineno}: not a valid image record ({where}: "
                            f"{first['msg']}); fix or remove that line") from None
        if check_files:
            record.read_bytes(path)
        yield record
