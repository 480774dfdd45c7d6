"""Image records and their files: content-addressed writes, checked reads, dedup, imagefolder."""

from __future__ import annotations

import hashlib
import io
import json
from pathlib import Path

import pytest
from PIL import Image

from seed.errors import UserError
from seed.generate.image_files import (
    Dedup,
    ImageRecordWriter,
    dhash,
    hamming,
    store,
    write_imagefolder_metadata,
)
from seed.records import ImageRecord, read_image_records


def _png(color: tuple[int, int, int], size: int = 16, dot: int | None = None) -> bytes:
    img = Image.new("RGB", (size, size), color)
    if dot is not None:
        img.putpixel((dot, 0), (255, 255, 255))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _write(path: Path, prompts: dict[str, bytes]) -> list[ImageRecord]:
    records = []
    with ImageRecordWriter(path) as out:
        for prompt, data in prompts.items():
            record = ImageRecord.new(prompt, out.store(data), meta={"n": len(records)})
            out.write([record])
            records.append(record)
    return records


def test_image_is_stored_under_its_sha256_exactly_as_given(tmp_path: Path) -> None:
    buf = io.BytesIO()
    Image.new("RGB", (20, 12), (10, 200, 30)).save(buf, format="JPEG", quality=71)
    data = buf.getvalue()
    info = store(tmp_path, data)
    sha = hashlib.sha256(data).hexdigest()
    assert info.file == f"images/{sha[:2]}/{sha}.jpeg"
    assert (tmp_path / info.file).read_bytes() == data
    assert (info.width, info.height, info.format, info.sha256) == (20, 12, "jpeg", sha)
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(ValueError, match="not a readable image"):
        store(tmp_path, b"GIF89a no")


def test_records_round_trip_and_load_their_images(tmp_path: Path) -> None:
    path = tmp_path / "data" / "train.jsonl"
    written = _write(path, {"red": _png((255, 0, 0)), "blue": _png((0, 0, 255))})
    back = list(read_image_records(path))
    assert back == written
    assert back[1].load(path).getpixel((3, 3)) == (0, 0, 255)
    assert back[0].image_path(path) == tmp_path / "data" / written[0].image.file
    line = json.loads(path.read_text().splitlines()[0])
    assert set(line) == {"id", "prompt", "image", "provenance", "meta"}
    assert set(line["image"]) == {"file", "sha256", "width", "height", "format", "phash"}


def test_a_missing_or_changed_image_file_is_an_error_naming_record_and_file(
        tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    red, blue = _write(path, {"red": _png((255, 0, 0)), "blue": _png((0, 0, 255))})
    red.image_path(path).write_bytes(_png((254, 0, 0)))
    with pytest.raises(UserError, match=f"record {red.id}: .*{red.image.sha256}.*does not match"):
        list(read_image_records(path))
    red.image_path(path).unlink()
    with pytest.raises(UserError, match=f"record {red.id} names .*{red.image.sha256}.*missing"):
        list(read_image_records(path))
    assert [r.id for r in read_image_records(path, check_files=False)] == [red.id, blue.id]


def test_a_record_cannot_point_outside_its_images_folder(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    _write(path, {"red": _png((255, 0, 0))})
    line = json.loads(path.read_text())
    line["image"]["file"] = "../../etc/passwd"
    path.write_text(json.dumps(line) + "\n")
    with pytest.raises(UserError, match=r"train.jsonl:1: not a valid image record \(image.file"):
        list(read_image_records(path))


def test_a_torn_last_line_is_cut_off_before_appending(tmp_path: Path) -> None:
    path = tmp_path / "train.jsonl"
    (first,) = _write(path, {"red": _png((255, 0, 0))})
    with path.open("ab") as f:
        f.write(b'{"id": "torn", "prompt": "gre')
    assert [r.id for r in read_image_records(path)] == [first.id]
    _write(path, {"green": _png((0, 255, 0))})
    assert [r.prompt for r in read_image_records(path)] == ["red", "green"]


def test_writer_refuses_a_record_whose_image_was_not_stored(tmp_path: Path) -> None:
    from seed.generate.image_files import describe

    path = tmp_path / "train.jsonl"
    with ImageRecordWriter(path) as out, pytest.raises(ValueError, match="not stored first"):
        out.write([ImageRecord.new("red", describe(_png((255, 0, 0))))])
    assert path.read_text() == ""


def test_dedup_drops_same_bytes_and_near_images_within_the_hamming_threshold(
        tmp_path: Path) -> None:
    base = Image.new("RGB", (64, 64), (0, 0, 0))
    for x in range(32):
        for y in range(64):
            base.putpixel((x, y), (x * 8, 100, 50))
    near = base.copy()
    near.putpixel((63, 63), (9, 9, 9))  # one pixel: the same picture to a person
    other = base.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    assert hamming(dhash(base), dhash(near)) <= 2 < hamming(dhash(base), dhash(other))

    def png(img: Image.Image) -> bytes:
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()

    exact_only, near_too = Dedup(), Dedup(hamming_bits=4)
    a, b, c = (store(tmp_path, png(i)) for i in (base, near, other))
    assert [exact_only.keep(x) for x in (a, a, b, c)][1].startswith("duplicate image")
    assert exact_only.dropped == 1
    reasons = [near_too.keep(x) for x in (a, b, c)]
    assert reasons[0] is None and reasons[2] is None
    assert reasons[1] is not None and reasons[1].startswith("near-duplicate")


def test_imagefolder_reads_the_records_as_they_are(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data = tmp_path / "data"
    _write(data / "train.jsonl", {"red circle": _png((255, 0, 0)), "blue": _png((0, 0, 255))})
    _write(data / "eval.jsonl", {"green": _png((0, 255, 0))})
    (data / "failed.jsonl").write_text("")
    assert write_imagefolder_metadata(data, {"train": data / "train.jsonl",
                                             "eval": data / "eval.jsonl"}) == 3
    ds = datasets.load_dataset("imagefolder", data_dir=str(data / "images"),
                               cache_dir=str(tmp_path / "cache"))["train"]
    rows = sorted(ds, key=lambda r: r["text"])
    assert [(r["text"], r["split"]) for r in rows] == [
        ("blue", "train"), ("green", "eval"), ("red circle", "train")]
    assert [r["image"].getpixel((1, 1)) for r in rows] == [(0, 0, 255), (0, 255, 0), (255, 0, 0)]
