"""The image generate stage: shapes records, an Images API teacher through the engine (fields per
model, refusals, retries, budget, resume), and a kill -9 of `seed generate` mid-run."""

from __future__ import annotations

import hashlib
import io
import json
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from helpers.cli import start_cli
from helpers.image_server import ImageServer, image_server
from helpers.recipes import write_recipe
from seed.endpoints.shapes import Shapes
from seed.errors import UserError
from seed.generate.images import generate_images
from seed.pipeline import preflight
from seed.recipe import GenerateConfig, Recipe
from seed.records import read_image_records

QUIET = Console(file=io.StringIO())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ImageServer]:
    with image_server(tmp_path_factory.mktemp("images")) as s:
        yield s


def _prompts(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(f"{x}\n" for x in lines))
    return path


def _config(server: ImageServer, prompts: Path, model: str = "gpt-image-1",
            **extra: Any) -> GenerateConfig:
    return GenerateConfig.model_validate({
        "teacher": {"kind": "images", "base_url": server.base_url, "model": model},
        "prompts": [{"path": str(prompts), "license": "CC0-1.0"}],
        "limits": {"backoff_base": 0.01, "backoff_max": 0.05, "concurrency": 4}, **extra})


def _sent(server: ImageServer, word: str) -> list[dict[str, Any]]:
    return [r for r in server.requests() if word in r["prompt"]]


# -- shapes --------------------------------------------------------------------------------------

def test_shapes_writes_training_and_held_out_images_the_verifier_accepts(tmp_path: Path) -> None:
    recipe = Recipe.model_validate({"name": "s", "seed": 5, "generate": {
        "teacher": {"kind": "shapes", "size": 16, "colors": ["red", "green", "blue"]},
        "num_records": 120, "eval_prompts": 40}})
    info = preflight(recipe, tmp_path)()
    assert (info["train_records"], info["eval_records"]) == (120, 40)
    shapes = Shapes(recipe.generate.teacher)  # type: ignore[arg-type]
    train = list(read_image_records(tmp_path / "train.jsonl"))
    held = list(read_image_records(tmp_path / "eval.jsonl"))
    train_captions = {shapes.caption(c) for c in [r.meta["spec"] for r in train]}
    eval_captions = {r.prompt for r in held}
    assert not train_captions & eval_captions
    assert eval_captions <= {f"{a[0]} {a[1]} left of {b[0]} {b[1]}"
                             for a, b in shapes.compositions("eval")}
    for split, records in (("train", train), ("eval", held)):
        for r in records:
            assert r.provenance.purpose == split and r.meta["split"] == split
            assert r.provenance.teacher is not None and r.provenance.teacher.route == "shapes"
            assert shapes.verify(r.load(tmp_path / "train.jsonl"), r.prompt).exact
    rows = (tmp_path / "images" / "metadata.jsonl").read_text().splitlines()
    assert len(rows) == 160 and json.loads(rows[0])["text"] == train[0].prompt
    before = (tmp_path / "train.jsonl").read_bytes()
    preflight(recipe, tmp_path)()
    assert (tmp_path / "train.jsonl").read_bytes() == before  # seeded: the same records again
    fewer = recipe.model_copy(update={"generate": recipe.generate.model_copy(
        update={"num_records": 10, "eval_prompts": 0})})
    preflight(fewer, tmp_path)()
    assert not (tmp_path / "eval.jsonl").exists()
    assert len(list((tmp_path / "images").glob("*/*.png"))) == 10  # the others' files are gone


# -- an Images API teacher -------------------------------------------------------------------

def test_gpt_image_teacher_gets_only_its_fields_and_refusals_fail_one_prompt(
        server: ImageServer, tmp_path: Path) -> None:
    server.refuse("forbidden-cat")
    server.faults(["429:0.01", "500"], match="retried-owl")
    prompts = _prompts(tmp_path / "p.txt", ["red circle left of blue square", "forbidden-cat 1",
                                            "retried-owl", "plain fox"])
    cfg = _config(server, prompts, samples=2,
                  params={"size": "32x32", "quality": "low", "output_format": "webp"})
    info = generate_images(cfg, 1, tmp_path / "out", QUIET)
    assert (info["records_written"], info["failed"], info["retries"]) == (6, 1, 2)
    sent = server.requests()
    assert all("response_format" not in r["fields"] for r in sent)
    assert {r["n"] for r in _sent(server, "fox")} == {2}
    records = list(read_image_records(tmp_path / "out" / "train.jsonl"))
    assert {r.image.format for r in records} == {"webp"}
    assert len({r.image.sha256 for r in records}) == 6
    first = records[0]
    assert first.provenance.teacher is not None
    assert first.provenance.teacher.model_requested == "gpt-image-1"
    assert first.provenance.teacher.params["output_format"] == "webp"
    assert first.meta["usage"]["completion_tokens"] == 2 * 272  # the request's two images
    # 3 paid requests of 2 images: 1,632 output tokens at $40/M and the prompts' words at $5/M
    words = sum(len(p.split()) for p in ("red circle left of blue square", "retried-owl",
                                         "plain fox"))
    assert info["cost"] == pytest.approx((1632 * 40 + words * 5) / 1e6)
    (failed,) = [json.loads(x) for x in (tmp_path / "out" / "failed.jsonl").read_text().split("\n")
                 if x]
    assert failed["prompt"] == "forbidden-cat 1"
    assert failed["reason"].startswith("refused: moderation_blocked: Your request was rejected")
    assert failed["attempts"] == 1  # a refusal is not retried
    paid = len(server.paid())
    again = generate_images(cfg, 1, tmp_path / "out", QUIET)
    assert again["records_written"] == 0 and again["prompts_already_done"] == 3
    assert len(server.paid()) == paid  # nothing paid twice; only the refused prompt asked again
    assert len(_sent(server, "forbidden-cat 1")) == 2


def test_dall_e_3_gets_b64_json_and_keeps_the_revised_prompt_priced_per_image(
        server: ImageServer, tmp_path: Path) -> None:
    prompts = _prompts(tmp_path / "p.txt", ["a dall-e lighthouse", "a dall-e harbor"])
    cfg = _config(server, prompts, "dall-e-3", params={"size": "1024x1024", "quality": "hd",
                                                       "style": "natural"})
    info = generate_images(cfg, 1, tmp_path / "out", QUIET)
    assert info["records_written"] == 2 and info["cost"] == pytest.approx(2 * 0.080)
    assert all("response_format" in r["fields"] for r in _sent(server, "dall-e"))
    records = list(read_image_records(tmp_path / "out" / "train.jsonl"))
    assert {r.meta["revised_prompt"] for r in records} == {"A picture of a dall-e lighthouse",
                                                           "A picture of a dall-e harbor"}
    assert {(r.image.width, r.image.height) for r in records} == {(1024, 1024)}


def test_a_chat_teacher_expands_the_prompts_once(server: ImageServer, tmp_path: Path) -> None:
    prompts = _prompts(tmp_path / "p.txt", ["an expanded kite", "an expanded boat"])
    cfg = _config(server, prompts, "dall-e-2", params={"size": "256x256"}, expand={
        "teacher": {"kind": "openai", "base_url": server.base_url, "model": "gpt-4o-mini"},
        "variations": 2})
    assert generate_images(cfg, 1, tmp_path / "out", QUIET)["records_written"] == 6
    records = list(read_image_records(tmp_path / "out" / "train.jsonl"))
    assert [r.prompt for r in records if "kite" in r.prompt] == [
        "an expanded kite", "an expanded kite, variation 1", "an expanded kite, variation 2"]
    expanded = next(r for r in records if r.prompt.endswith("kite, variation 2"))
    assert expanded.provenance.source is not None
    assert expanded.provenance.source.kind == "expand"
    assert expanded.provenance.source.config["teacher"]["model_requested"] == "gpt-4o-mini"
    chats = len([e for e in server.entries() if "chat" in e])
    again = generate_images(cfg, 1, tmp_path / "out", QUIET)
    assert again["prompts_already_done"] == 6
    assert len([e for e in server.entries() if "chat" in e]) == chats  # the cache answered


def test_a_url_answer_is_downloaded_and_kept(server: ImageServer, tmp_path: Path) -> None:
    prompts = _prompts(tmp_path / "p.txt", ["url green square left of red circle"])
    cfg = _config(server, prompts, "dall-e-2", params={"response_format": "url",
                                                       "size": "256x256"})
    assert generate_images(cfg, 1, tmp_path / "out", QUIET)["records_written"] == 1
    (record,) = read_image_records(tmp_path / "out" / "train.jsonl")
    assert record.image.width == 256 and record.image.format == "png"


def test_fields_a_model_does_not_take_are_refused_before_any_request(
        server: ImageServer, tmp_path: Path) -> None:
    prompts = _prompts(tmp_path / "p.txt", ["never sent"])
    with pytest.raises(UserError, match=r"generate.params.style: gpt-image-1 does not take it"):
        generate_images(_config(server, prompts, params={"style": "vivid"}), 1, tmp_path, QUIET)
    with pytest.raises(UserError, match="dall-e-3 draws at most 1 image"):
        generate_images(_config(server, prompts, "dall-e-3", samples=2), 1, tmp_path, QUIET)
    with pytest.raises(UserError, match=r"needs a price for image model 'my-drawer'.*"
                                        r"generate.image_prices"):
        generate_images(_config(server, prompts, "my-drawer", max_cost=1.0), 1, tmp_path, QUIET)
    assert not _sent(server, "never sent")


def test_the_budget_stops_new_requests_and_a_rerun_with_more_finishes(
        server: ImageServer, tmp_path: Path) -> None:
    prompts = _prompts(tmp_path / "p.txt", [f"budget {i}" for i in range(10)])
    cfg = _config(server, prompts, "dall-e-2", max_cost=0.05,
                  limits={"concurrency": 1}, params={"size": "256x256"})
    first = generate_images(cfg, 1, tmp_path / "out", QUIET)
    assert first["stopped"] and first["stopped"].startswith("cost cap reached")
    assert first["records_written"] == 4  # $0.016 each: the fourth passes $0.05
    cfg = cfg.model_copy(update={"max_cost": 1.0})
    second = generate_images(cfg, 1, tmp_path / "out", QUIET)
    assert second["records_written"] == 6 and second["stopped"] is None
    assert sorted(server.paid().count(f"budget {i}") for i in range(10)) == [1] * 10


# -- kill -9 and rerun -------------------------------------------------------------------------

N = 30


def _answered(out: Path) -> set[str]:
    path = out / "train.jsonl"
    return {r.prompt for r in read_image_records(path)} if path.exists() else set()


def _cached(out: Path) -> int:
    path = out / "cache.sqlite"
    if not path.exists():
        return 0
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return db.execute("SELECT COUNT(*) FROM answers").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        db.close()


@pytest.mark.slow
def test_kill_9_mid_run_then_rerun_pays_nothing_twice_and_no_record_lacks_its_image(
        tmp_path: Path) -> None:
    with image_server(tmp_path, latency=0.05) as srv:
        prompts = _prompts(tmp_path / "p.txt", [f"kill prompt {i}" for i in range(N)])
        srv.refuse("kill prompt 7")
        recipe = write_recipe(tmp_path / "r.toml", {"name": "k", "seed": 1, "generate": {
            "teacher": {"kind": "images", "base_url": srv.base_url, "model": "gpt-image-1"},
            "prompts": [{"path": str(prompts)}], "samples": 2,
            "params": {"size": "64x64"}, "limits": {"concurrency": 4}}})
        out = tmp_path / "out"
        for target in (6, 16, None):
            answered, asked = _answered(out), len(srv.requests())
            proc = start_cli("generate", recipe, "--out", out, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 60
            while target is not None and len(srv.paid()) < target and proc.poll() is None \
                    and time.monotonic() < deadline:
                time.sleep(0.01)
            if target is not None:
                proc.send_signal(signal.SIGKILL)
            _, err = proc.communicate(timeout=120)
            assert proc.returncode == (-signal.SIGKILL if target else 0), err
            # what had records before this run was never asked for again
            assert not {r["prompt"] for r in srv.requests()[asked:]} & answered
            now = _answered(out)  # reading checks every record's image file and its sha256
            assert answered <= now and _cached(out) >= len(now)
        paid = srv.paid()
        # each prompt paid for once, but for answers in flight when a run was killed (4 at most)
        assert len(set(paid)) == N - 1 and len(paid) - (N - 1) <= 2 * 4
        records = list(read_image_records(out / "train.jsonl"))
        assert len(records) == 2 * (N - 1)
        assert {r.prompt for r in records} == {f"kill prompt {i}" for i in range(N)} - {
            "kill prompt 7"}
        assert "refused: moderation_blocked" in (out / "failed.jsonl").read_text()
        for image in (out / "images").rglob("*.png"):  # no torn image under a final name
            assert hashlib.sha256(image.read_bytes()).hexdigest() == image.stem


# -- a local diffusers pipeline --------------------------------------------------------------

def test_a_local_pipeline_draws_each_prompt_once_seeded_by_its_index(
        tmp_path: Path, request: pytest.FixtureRequest) -> None:
    import torch

    from helpers.images import tiny_image_pipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # on a loaded 2-core machine, 2 spinning threads cost ~30x
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    pipe = tiny_image_pipeline(tmp_path / "teacher-pipe")
    prompts = _prompts(tmp_path / "p.txt", ["red circle left of blue square",
                                            "green square left of red triangle"])
    cfg = GenerateConfig.model_validate({
        "teacher": {"kind": "pipeline", "path": str(pipe)}, "params": {"steps": 2},
        "prompts": [{"path": str(prompts)}]})
    info = generate_images(cfg, 3, tmp_path / "out", QUIET)
    assert info["records_written"] == 2
    records = list(read_image_records(tmp_path / "out" / "train.jsonl"))
    assert [(r.image.width, r.image.height, r.image.format) for r in records] == [
        (16, 16, "png")] * 2
    assert records[0].provenance.teacher is not None
    assert records[0].provenance.teacher.model_requested == "teacher-pipe"
    assert [r.meta["seed"] for r in records] == [3, 4]
    again = generate_images(cfg, 3, tmp_path / "out", QUIET)
    assert again["records_written"] == 0 and again["prompts_already_done"] == 2
