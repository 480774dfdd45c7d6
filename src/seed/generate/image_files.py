"""Image files beside image records: content-addressed atomic writes, dedup, the imagefolder index.

- `store(data_dir, data)` writes a teacher's image bytes, exactly as returned, to
  `images/<sha256[:2]>/<sha256>.<format>` under a temporary name and renames it into place, so a
  file under its final name is always whole; it returns the `ImageFile` a record holds.
- `ImageRecordWriter` appends image records the way `RecordWriter` appends chat records (one
  `write()` per prompt, a torn tail cut off on open), storing every image of a prompt before its
  lines, so a kill at any moment leaves no record pointing at a missing file.
- `dhash` is a 64-bit difference hash (a 9x8 grey thumbnail, one bit per horizontal neighbour
  pair); `Dedup` drops an image whose sha256 was seen, or whose dHash lies within a Hamming
  distance of one kept.
- `prune_images` deletes image files no record names (a procedural teacher's records are written
  afresh each run; an HTTP teacher's directory is never pruned, its images were paid for).
- `write_imagefolder_metadata` writes `images/metadata.jsonl` (`file_name`, `prompt`, `text`,
  `split`) so `datasets.load_dataset("imagefolder", data_dir=".../images")` and diffusers'
  text-to-image training scripts (`--caption_column text`) read the images as they are.

This module knows nothing of teachers or prompts; it reads and writes files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterable
from io import BytesIO
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from seed.errors import UserError
from seed.files import fsync_path, write_text_atomic
from seed.records import ImageFile, ImageRecord, prompt_lines, read_image_records, seal_records

log = logging.getLogger(__name__)

IMAGES = "images"
METADATA = "metadata.jsonl"
_FORMATS = {"PNG": "png", "JPEG": "jpeg", "WEBP": "webp"}


def image_format(data: bytes) -> tuple[str, int, int, Image.Image]:
    """(format, width, height, decoded image) of PNG, JPEG or WebP bytes; anything else (or a
    damaged file) is a ValueError."""
    try:
        img = Image.open(BytesIO(data))
        img.load()
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"not a readable image ({e})") from None
    fmt = _FORMATS.get(img.format or "")
    if fmt is None:
        raise ValueError(f"an image in {img.format} format; Seed keeps PNG, JPEG or WebP")
    return fmt, img.width, img.height, img


def dhash(img: Image.Image) -> str:
    """The 64-bit difference hash of an image, as 16 hex digits."""
    grey = img.convert("L").resize((9, 8), Image.Resampling.BOX)
    px = list(grey.getdata())
    bits = 0
    for row in range(8):
        for col in range(8):
            bits = (bits << 1) | (px[row * 9 + col] > px[row * 9 + col + 1])
    return f"{bits:016x}"


def hamming(a: str, b: str) -> int:
    """Bits that differ between two 16-hex-digit hashes."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def describe(data: bytes) -> ImageFile:
    """The `ImageFile` of some image bytes (not written anywhere)."""
    fmt, width, height, img = image_format(data)
    sha = hashlib.sha256(data).hexdigest()
    return ImageFile(file=f"{IMAGES}/{sha[:2]}/{sha}.{fmt}", sha256=sha, width=width,
                     height=height, format=fmt, phash=dhash(img))


def store(data_dir: Path, data: bytes, fsync: bool = False) -> ImageFile:
    """Write image bytes under their content address in `data_dir` (atomically; an intact file
    already there is kept) and return their `ImageFile`."""
    info = describe(data)
    path = data_dir / info.file
    if path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == info.sha256:
        return info
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with tmp.open("wb") as f:
        f.write(data)
        if fsync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if fsync:
        fsync_path(path.parent)
    return info


class ImageRecordWriter:
    """Appends image records to a JSONL file, each prompt's images stored before its lines."""

    def __init__(self, path: Path, fsync: bool = False) -> None:
        self.path, self.fsync = path, fsync
        path.parent.mkdir(parents=True, exist_ok=True)
        removed = seal_records(path)
        if removed:
            log.warning("%s: removed a torn last write (%d bytes) left by a crash", path, removed)
        self._f = path.open("ab", buffering=0)

    def store(self, data: bytes) -> ImageFile:
        """Write one image beside the records (see `store`)."""
        return store(self.path.parent, data, self.fsync)

    def write(self, records: list[ImageRecord]) -> None:
        """Append records whose images are stored; one `write()` for all of them."""
        for r in records:
            if not r.image_path(self.path).is_file():
                raise ValueError(f"record {r.id}: {r.image.file} was not stored first")
        self._f.write(prompt_lines(records))
        if self.fsync:
            os.fsync(self._f.fileno())

    def close(self) -> None:
        self._f.close()

    def __enter__(self) -> ImageRecordWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Dedup:
    """Exact (sha256) and, with `hamming_bits`, near (dHash) duplicates of images kept so far."""

    def __init__(self, hamming_bits: int | None = None) -> None:
        self.hamming_bits = hamming_bits
        self.sha: set[str] = set()
        self.hashes: list[str] = []
        self.dropped = 0

    def reason(self, image: ImageFile) -> str | None:
        """Why this image would be a duplicate, or None."""
        if image.sha256 in self.sha:
            return f"duplicate image (sha256 {image.sha256[:12]})"
        if self.hamming_bits is not None:
            for h in self.hashes:
                if hamming(h, image.phash) <= self.hamming_bits:
                    return f"near-duplicate image (dHash within {self.hamming_bits} bits)"
        return None

    def add(self, image: ImageFile) -> None:
        self.sha.add(image.sha256)
        if self.hamming_bits is not None:
            self.hashes.append(image.phash)

    def keep(self, image: ImageFile) -> str | None:
        """None (and remembered) when the image is new; else why it is dropped (and counted)."""
        why = self.reason(image)
        if why is None:
            self.add(image)
        else:
            self.dropped += 1
        return why


def write_imagefolder_metadata(data_dir: Path, splits: dict[str, Path]) -> int:
    """Write `images/metadata.jsonl` for every record of the given records files (split name ->
    path; missing files are skipped); return the rows written."""
    rows: list[dict[str, Any]] = []
    for split, path in splits.items():
        if not path.is_file():
            continue
        for r in read_image_records(path, check_files=False):
            if path.parent != data_dir:
                raise ValueError(f"{path} is not in {data_dir}")
            row: dict[str, Any] = {"file_name": r.image.file.removeprefix(f"{IMAGES}/"),
                                   "prompt": r.prompt, "text": r.prompt, "split": split,
                                   "id": r.id}
            if r.negative_prompt:
                row["negative_prompt"] = r.negative_prompt
            rows.append(row)
    if rows:
        write_text_atomic(data_dir / IMAGES / METADATA,
                          "".join(json.dumps(x, ensure_ascii=False) + "\n" for x in rows))
    return len(rows)


def prune_images(data_dir: Path, records: Iterable[Path]) -> int:
    """Delete the image files under `data_dir/images` that none of `records` names (left by an
    earlier run that wrote other records, or half-written by a killed one); return how many."""
    keep = {data_dir / r.image.file for path in records if path.is_file()
            for r in read_image_records(path, check_files=False)}
    removed = 0
    for path in (data_dir / IMAGES).glob("*/*"):
        if path.is_file() and path not in keep:
            path.unlink()
            removed += 1
    return removed


def seen_images(paths: Iterable[Path], dedup: Dedup) -> None:
    """Teach `dedup` the images of existing records files (a resumed run keeps deduplicating)."""
    for path in paths:
        if path.is_file():
            for r in read_image_records(path):
                dedup.add(r.image)


def check_records_dir(data_dir: Path) -> None:
    """A UserError when `data_dir/images` exists but is not a directory (nothing could be
    stored)."""
    images = data_dir / IMAGES
    if images.exists() and not images.is_dir():
        raise UserError(f"{images}: is a file; image records keep their images in this folder, "
                        "move the file away")
