"""`seed push`: the terms gate for distribution first, then one commit to a Hub with the card.

The Hub is tests/helpers/hub_server.py, a real HTTP server speaking huggingface_hub's protocol
(repo create, preupload, NDJSON commit, LFS batch + PUT); what it cannot speak (Xet) is off
(HF_HUB_DISABLE_XET=1), so the model's weights go up through the LFS basic transfer.
"""

from __future__ import annotations

import io
import json
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from rich.console import Console

from helpers.cli import assert_one_line_error, cli_env, run_cli
from helpers.hub_server import Hub, running_hub
from helpers.images import write_shapes
from helpers.models import tiny_model
from helpers.recipes import write_recipe
from seed.endpoints.tasks import TasksEndpoint
from seed.errors import UserError
from seed.policy.importers import import_dataset
from seed.push import check_repo_id
from seed.push import push as push_to_hub
from seed.recipe import TaskSpec
from seed.records import write_records

ROOT = Path(__file__).resolve().parents[1]
DPI = ROOT.parent / "shared" / "data" / "provenance"
needs_dpi = pytest.mark.skipif(not (DPI / "Alpaca.json").is_file(),
                               reason="../shared/data/provenance (DPI summaries) is not present")
TOKEN = "hf_pushTestTokenThatMustNeverBeWritten0123"
USER = "seed-user"

# Alpaca-format items written for this test; their provenance comes from the DPI summary.
ALPACA_ITEMS = [
    {"instruction": "Name three primary colors.", "input": "", "output": "Red, blue and yellow."},
    {"instruction": "What is the capital of France?", "input": "", "output": "Paris."},
    {"instruction": "Rewrite in the passive voice.", "input": "The cat chased the mouse.",
     "output": "The mouse was chased by the cat."},
]
DOLLY_ITEMS = [{"instruction": f"What is {a} plus {b}?", "input": "", "output": str(a + b)}
               for a in range(4) for b in range(4)]
GENERATE = {"num_records": 24, "teacher": {"kind": "tasks", "tasks": [
    {"name": "basic_arithmetic", "config": {"max_terms": 2, "max_digits": 1}}]}}
TRAIN = {"max_steps": 2, "batch_size": 4, "seq_len": 48, "warmup_steps": 1,
         "checkpoint_every": 10, "log_every": 1, "threads": 1, "eval_fraction": 0}


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    with running_hub(TOKEN, USER) as h:
        yield h


def push(hub: Hub, tmp_path: Path, *args: str | Path, token: str | None = TOKEN
         ) -> subprocess.CompletedProcess[str]:
    """`seed push ARGS` against the local hub, the token in HF_TOKEN (HF_HOME empty, so no
    saved token is found)."""
    env = cli_env(HF_ENDPOINT=hub.base_url, HF_HOME=str(tmp_path / "hf-home"),
                  HF_HUB_DISABLE_XET="1", COLUMNS="200")
    env.pop("HF_TOKEN", None)
    if token is not None:
        env["HF_TOKEN"] = token
    return run_cli("push", *args, env=env, cwd=tmp_path)


@pytest.fixture
def in_process(hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., str]:
    """`seed.push.push` in this process against the local hub; returns what it printed."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-saved-token"))
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)

    def run(path: Path, repo: str, **options: Any) -> str:
        out = io.StringIO()
        push_to_hub(path, repo, console=Console(file=out, soft_wrap=True), endpoint=hub.base_url,
                    **options)
        return out.getvalue()

    return run


def imported(tmp_path: Path, name: str, items: list[dict], **declared: Any) -> Path:
    """A dataset directory with `items` imported as `seed import` does (train.jsonl)."""
    (tmp_path / f"{name}.json").write_text(json.dumps(items))
    out = tmp_path / name / "train.jsonl"
    out.parent.mkdir()
    import_dataset(tmp_path / f"{name}.json", "alpaca", out, **declared)
    return out.parent


def front_matter(card: bytes) -> dict:
    text = card.decode()
    assert text.startswith("---\n")
    return yaml.safe_load(text[4:].split("\n---\n", 1)[0])


def no_token_anywhere(tmp_path: Path, *printed: str) -> None:
    for text in printed:
        assert TOKEN not in text
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


@needs_dpi
def test_an_alpaca_derived_dataset_is_refused_for_distribution_naming_the_clause(
        hub: Hub, tmp_path: Path) -> None:
    data = imported(tmp_path, "alpaca", ALPACA_ITEMS, dpi=DPI / "Alpaca.json")
    requests = len(hub.log)
    proc = push(hub, tmp_path, data, "--repo", f"{USER}/alpaca-mirror")
    assert_one_line_error(proc, "push refused, 3 of 3 records are forbidden for a distributed "
                          "commercial chat student", "compete", "NonCommercial",
                          "--accept-terms-risk")
    assert f"pushing the dataset directory {data} as the dataset {USER}/alpaca-mirror" \
        in proc.stdout
    assert len(hub.log) == requests  # not one request: nothing was created or uploaded
    no_token_anywhere(tmp_path, proc.stdout, proc.stderr)


@needs_dpi
def test_an_accepted_risk_pushes_and_the_card_says_so(
        hub: Hub, tmp_path: Path, in_process: Callable[..., str]) -> None:
    data = imported(tmp_path, "alpaca", ALPACA_ITEMS, dpi=DPI / "Alpaca.json")
    repo = f"{USER}/alpaca-research"
    printed = in_process(data, repo, private=True,
                         accept_terms_risk="research mirror, cleared by counsel")
    assert "forbidden records pushed at the user's risk" in printed
    files = hub.files("dataset", repo)
    assert sorted(files) == ["README.md", "train.jsonl"]
    assert files["train.jsonl"] == (data / "train.jsonl").read_bytes()
    card = files["README.md"].decode()
    assert "**Terms risk accepted** (`--accept-terms-risk`): research mirror, cleared by counsel" \
        in card
    assert "overall verdict **block** over 3 records" in card
    assert hub.repo("dataset", repo).visibility == "private"
    assert len(hub.repo("dataset", repo).commits) == 1
    no_token_anywhere(tmp_path, printed)


@needs_dpi
def test_a_clean_dataset_goes_up_in_one_commit_with_its_card_and_obligations(
        hub: Hub, tmp_path: Path, in_process: Callable[..., str]) -> None:
    data = imported(tmp_path, "dolly", DOLLY_ITEMS, dpi=DPI / "Dolly_15k.json",
                    dpi_id="dolly-openqa")
    (data / "cache.sqlite").write_bytes(b"a request cache stays home")
    (data / "eval.jsonl").write_text((data / "train.jsonl").read_text().splitlines()[0] + "\n")
    repo = f"{USER}/dolly-sums"
    printed = in_process(data, repo)
    assert f"pushing the dataset directory {data} as the dataset {repo}" in printed
    assert "terms gate: allow for a distributed commercial chat student named 'dolly-sums'" \
        in printed
    files = hub.files("dataset", repo)
    assert sorted(files) == ["README.md", "eval.jsonl", "train.jsonl"]
    assert files["train.jsonl"] == (data / "train.jsonl").read_bytes()
    meta = front_matter(files["README.md"])
    assert meta["license"] == "cc-by-sa-3.0"
    assert meta["annotations_creators"] == ["machine-generated"]
    card = files["README.md"].decode()
    obligations = card.split("## Obligations for models trained on this data")[1].split("##")[0]
    assert "CC BY-SA 3.0" in obligations
    [commit] = hub.repo("dataset", repo).commits
    assert sorted(commit["paths"]) == ["README.md", "eval.jsonl", "train.jsonl"]
    no_token_anywhere(tmp_path, printed)


@pytest.mark.slow
def test_a_trained_student_goes_up_with_its_weights_and_model_card(
        hub: Hub, tmp_path: Path, in_process: Callable[..., str]) -> None:
    teacher = TasksEndpoint([TaskSpec(name="basic_arithmetic", config={"max_terms": 2,
                                                                       "max_digits": 1})])
    write_records(tmp_path / "train.jsonl", [teacher.answer(r) for r in teacher.prompts(24, 1)])
    write_recipe(tmp_path / "r.toml", {"name": "push", "generate": GENERATE, "train": TRAIN,
                                       "policy": {"license": "Apache-2.0"}})
    trained = run_cli("train", "train.jsonl", "--out", "out", "--recipe", "r.toml",
                      cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    model = tmp_path / "out" / "model"
    repo = f"{USER}/sum-student"
    printed = in_process(model, repo, revision="v1")
    assert f"pushing the model directory {model} (trained by `seed train`)" in printed
    local = sorted(p.relative_to(model).as_posix() for p in model.rglob("*") if p.is_file())
    files = hub.files("model", repo, "v1")
    assert sorted(files) == local  # every file of model/, the card (README.md) replaced
    assert files["model.safetensors"] == (model / "model.safetensors").read_bytes()
    assert files["config.json"] == (model / "config.json").read_bytes()
    assert hub.repo("model", repo).lfs_paths == {"model.safetensors"}  # the LFS basic transfer
    assert hub.files("model", repo) == {}  # main untouched: the commit went to v1
    meta = front_matter(files["README.md"])
    assert meta["license"] == "apache-2.0"
    assert "distillation" in meta["tags"]
    assert meta["model_name"] == "sum-student"
    card = files["README.md"].decode()
    assert "distributed commercial chat student named 'sum-student'" in card
    assert "Procedural generators (reasoning-gym)" in card
    assert "- steps: 2" in card
    no_token_anywhere(tmp_path, trained.stdout, trained.stderr, printed)


@pytest.mark.slow
def test_a_run_directory_pushes_its_student_with_the_eval_results_and_its_data(
        hub: Hub, tmp_path: Path, in_process: Callable[..., str]) -> None:
    write_recipe(tmp_path / "r.toml", {"name": "pushed", "generate": {
        **GENERATE, "eval_prompts": 6}, "train": TRAIN, "eval": {"max_new_tokens": 4,
                                                                  "samples": 2}})
    done = run_cli("run", "r.toml", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    run = tmp_path / "runs" / "pushed"
    printed = in_process(run, f"{USER}/pushed-student")
    assert f"pushing the model directory {run / 'train' / 'model'} of the run {run}" in printed
    files = hub.files("model", f"{USER}/pushed-student")
    model = run / "train" / "model"
    assert sorted(files) == sorted(p.relative_to(model).as_posix() for p in model.rglob("*")
                                   if p.is_file())
    accuracy = json.loads((run / "eval" / "results.json").read_text())["accuracy"]
    meta = front_matter(files["README.md"])
    [result] = [m for r in meta["model-index"] for res in r["results"] for m in res["metrics"]
                if m["type"] == "accuracy"]
    assert result["value"] == pytest.approx(accuracy)
    in_process(run / "data", f"{USER}/pushed-data")
    data = hub.files("dataset", f"{USER}/pushed-data")
    assert sorted(data) == ["README.md", "eval.jsonl", "train.jsonl"]
    assert data["eval.jsonl"] == (run / "data" / "eval.jsonl").read_bytes()


def test_an_image_dataset_goes_up_with_its_image_files_as_lfs_objects(
        hub: Hub, tmp_path: Path, in_process: Callable[..., str]) -> None:
    records = write_shapes(tmp_path / "shapes" / "train.jsonl", 3)
    repo = f"{USER}/shapes"
    printed = in_process(records.parent, repo)
    assert "image-generator student" in printed  # image records judged for an image student
    images = sorted(p.relative_to(records.parent).as_posix()
                    for p in (records.parent / "images").rglob("*") if p.is_file())
    assert len(images) == 3 and all(p.endswith(".png") for p in images)
    files = hub.files("dataset", repo)
    assert sorted(files) == sorted(["README.md", "train.jsonl", *images])
    assert all(files[p] == (records.parent / p).read_bytes() for p in images)
    assert hub.repo("dataset", repo).lfs_paths == set(images)
    assert front_matter(files["README.md"])["task_categories"] == ["text-to-image"]


def test_what_is_not_a_run_model_or_dataset_or_has_no_records_is_refused(
        tmp_path: Path, in_process: Callable[..., str]) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="neither a run directory"):
        in_process(tmp_path / "empty", f"{USER}/x")
    model = tiny_model(tmp_path / "model")  # a model directory nothing says how it was trained
    with pytest.raises(UserError, match="nothing names the records it was trained on; pass "
                       "--records FILE"):
        in_process(model, f"{USER}/x")
    with pytest.raises(UserError, match="no such records file"):
        in_process(model, f"{USER}/x", records=tmp_path / "missing.jsonl")


def test_a_bad_repo_id_is_a_one_line_error(hub: Hub, tmp_path: Path) -> None:
    proc = push(hub, tmp_path, tmp_path, "--repo", "no-owner")
    assert_one_line_error(proc, "--repo 'no-owner': give OWNER/NAME")
    for bad in ("a/b/c", "owner/-dash", "owner/na me", "owner/a--b", "/name"):
        with pytest.raises(UserError, match="give OWNER/NAME"):
            check_repo_id(bad)
    assert check_repo_id("my-org/my_student.v2") == "my-org/my_student.v2"


def test_a_missing_or_refused_token_is_a_one_line_error(
        hub: Hub, tmp_path: Path, in_process: Callable[..., str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    teacher = TasksEndpoint([TaskSpec(name="basic_arithmetic", config={"max_terms": 2,
                                                                       "max_digits": 1})])
    (tmp_path / "d").mkdir()
    write_records(tmp_path / "d" / "train.jsonl",
                  [teacher.answer(r) for r in teacher.prompts(4, 1)])
    missing = push(hub, tmp_path, "d", "--repo", f"{USER}/d", token=None)
    assert_one_line_error(missing, "no Hugging Face token: set HF_TOKEN")
    monkeypatch.setenv("HF_TOKEN", "hf_wrong")
    with pytest.raises(UserError, match=r"the Hub refused the token \(401\)") as refused:
        in_process(tmp_path / "d", f"{USER}/d")
    assert "hf_wrong" not in str(refused.value)
    assert (tmp_path / "d" / "train.jsonl").is_file() and ("dataset", f"{USER}/d") not in hub.repos
    (tmp_path / "token").write_text(TOKEN + "\n")
    before = len(hub.log)
    in_process(tmp_path / "d", f"{USER}/d", token_file=tmp_path / "token")
    assert sorted(hub.files("dataset", f"{USER}/d")) == ["README.md", "train.jsonl"]
    assert all(e["authorized"] for e in hub.log[before:] if e["path"].startswith("/api/"))
