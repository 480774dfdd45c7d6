"""`seed push`: a dataset or a trained student to the Hugging Face Hub, after the terms gate.

Distribution is the use the terms care about most, so before anything is uploaded the gate runs
again on the records behind what is pushed, for a *distributed* student named as the repository
is named (a name-prefix obligation is checked against that name): a blocked file is refused,
naming the clause, unless the user accepts the risk in words, and then the card says so. The card
(`README.md` on the Hub, with its YAML front matter: license, tags, base model, datasets) is
built for that use by `seed.policy.cards` and goes up with the files in one commit, through
`huggingface_hub` (`HfApi.create_repo`, `create_branch`, `create_commit`), so `HF_ENDPOINT` or
`--endpoint` points it at any Hub-compatible server.

What a directory is, and where its records are:
- a run directory (`manifest.json`): its student (rl/model after an [rl] stage, else
  train/model), trained on data/train.jsonl, for the recipe's [policy], with its eval results;
- a model directory (config.json or model_index.json) inside a run (runs/NAME/train/model), or
  from `seed train --out OUT` (OUT/model, the records named in OUT/policy.json), or a `seed train`
  output directory itself;
- a dataset directory (train.jsonl, eval.jsonl and images/ beside them).
`--records` names the training records where nothing on disk does.

The token comes from `--token-file` or huggingface_hub's own lookup (`HF_TOKEN`, `hf auth login`)
and goes to the Hub in a header only: it is never printed, logged or written. This module writes
nothing locally; it knows nothing about how the records or the model were made.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from rich.console import Console

from seed.errors import UserError, first_line
from seed.files import hash_path
from seed.policy.commands import use_from
from seed.policy.gate import CheckResult, gate
from seed.recipe import PolicyConfig
from seed.runs import read_manifest

Kind = Literal["model", "dataset"]
# Hub repository ids: OWNER/NAME, each 1-96 of letters, digits, `-`, `_` and `.`, not starting or
# ending with `-` or `.`, no `--` or `..` (huggingface_hub's validate_repo_id).
_PART = r"[A-Za-z0-9_](?:[\w.-]{0,94}[A-Za-z0-9_])?"
_REPO = re.compile(rf"{_PART}/{_PART}")
_DATASET_FILES = ("train.jsonl", "eval.jsonl")
_SKIP = (".tmp", ".partial", ".lock")


@dataclass
class Bundle:
    """What one push uploads: the files, the records they came from, and how to card them."""

    kind: Kind
    describe: str  # "run directory runs/x (its student rl/model)", for the user
    root: Path  # the directory whose files go up (README.md excepted)
    records: Path
    policy: PolicyConfig
    base_model: str | None = None
    training: dict[str, Any] = field(default_factory=dict)
    eval_results: dict[str, float] = field(default_factory=dict)
    generation: dict[str, Any] | None = None

    def files(self) -> list[Path]:
        """The files to upload, relative paths sorted; the local card is replaced, and temporary
        files and a dataset directory's cache, summary and failures stay home."""
        if self.kind == "dataset":
            found = [self.root / n for n in _DATASET_FILES if (self.root / n).is_file()]
            found += [p for p in (self.root / "images").rglob("*") if p.is_file()]
        else:
            found = [p for p in self.root.rglob("*") if p.is_file()]
        return sorted(p.relative_to(self.root) for p in found
                      if p.relative_to(self.root) != Path("README.md")
                      and not p.name.endswith(_SKIP) and not p.name.startswith("."))


def check_repo_id(repo: str) -> str:
    """`repo` if it is a Hub repository id OWNER/NAME, else a UserError saying the form."""
    if not _REPO.fullmatch(repo) or "--" in repo or ".." in repo:
        raise UserError(f"--repo {repo!r}: give OWNER/NAME, each part 1-96 letters, digits, '-', "
                        "'_' or '.' (e.g. --repo my-org/my-student)")
    return repo


def _is_model(path: Path) -> bool:
    return (path / "config.json").is_file() or (path / "model_index.json").is_file()


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: not readable JSON ({first_line(e)}); restore it or pass "
                        "--records") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: not the JSON object Seed writes; restore it or pass --records")
    return data


def _from_run(run: Path, model: Path | None) -> Bundle:
    """A run directory's student (or the given model directory in it), with its recipe's policy,
    training figures and eval results from the manifest."""
    manifest = read_manifest(run / "manifest.json")
    config = manifest.get("config") or {}
    stages = manifest["stages"]
    if model is None:
        model = run / ("rl/model" if config.get("rl") and _is_model(run / "rl/model")
                       else "train/model")
    if not _is_model(model):
        raise UserError(f"{run}: no trained student in {model}; finish the run with "
                        "`seed run` first")
    trained = stages.get("rl" if model.parent.name == "rl" else "train", {}).get("info", {})
    evaluated = stages.get("eval", {}).get("info", {})
    return Bundle(
        kind="model", describe=f"model directory {model} of the run {run}", root=model,
        records=run / "data" / "train.jsonl",
        policy=PolicyConfig.model_validate(config.get("policy") or {}),
        base_model=((config.get("train") or {}).get("student") or {}).get("checkpoint"),
        training={k: trained[k] for k in ("steps", "tokens", "params") if k in trained},
        eval_results={k: float(evaluated[k]) for k in ("accuracy", "baseline_accuracy")
                      if isinstance(evaluated.get(k), int | float)})


def _from_train_out(out: Path, records: Path | None) -> Bundle:
    """A `seed train --out OUT` student: OUT/model, the use and records OUT/policy.json names."""
    policy_file = out / "policy.json"
    recorded = _json(policy_file) if policy_file.is_file() else {}
    use = recorded.get("use") or {}
    if records is None:
        named = recorded.get("records")
        if not isinstance(named, str):
            raise UserError(f"{out / 'model'}: nothing names the records it was trained on; "
                            "pass --records FILE")
        records = Path(named)
        digest = recorded.get("records_sha256")
        if digest and hash_path(records) not in (None, digest):
            raise UserError(f"{records}: changed since {out / 'model'} was trained on it; pass "
                            "--records with the file it was trained on")
    summary = out / "summary.json"
    trained = _json(summary) if summary.is_file() else {}
    card = _card_data(out / "model" / "README.md")  # the license and base model it was given
    license = card.get("license")
    base = card.get("base_model")
    return Bundle(
        kind="model", describe=f"model directory {out / 'model'} (trained by `seed train`)",
        root=out / "model", records=records,
        policy=PolicyConfig(commercial=use.get("commercial", True),
                            task=use.get("task", "chat"), unknown=use.get("unknown", "warn"),
                            license=license if isinstance(license, str) and license != "unknown"
                            else None),
        base_model=base if isinstance(base, str) else None,
        training={k: trained[k] for k in ("steps", "tokens", "params") if k in trained})


def _card_data(path: Path) -> dict[str, Any]:
    """The YAML front matter of a card Seed wrote ({} without one)."""
    if not path.is_file():
        return {}
    from huggingface_hub import ModelCard

    try:
        return ModelCard.load(path).data.to_dict()
    except (ValueError, OSError):
        return {}


def find_bundle(path: Path, records: Path | None = None) -> Bundle:
    """What `path` is (run, model or dataset directory) and the records behind it."""
    if not path.is_dir():
        raise UserError(f"{path}: no such directory; give a run, model or dataset directory")
    bundle: Bundle
    if (path / "manifest.json").is_file():
        bundle = _from_run(path, None)
    elif _is_model(path) and (path.parent.parent / "manifest.json").is_file():
        bundle = _from_run(path.parent.parent, path)
    elif _is_model(path):
        bundle = _from_train_out(path.parent, records)
    elif _is_model(path / "model") and (path / "policy.json").is_file():
        bundle = _from_train_out(path, records)
    elif (path / "train.jsonl").is_file():
        run = path.parent
        config = (read_manifest(run / "manifest.json").get("config") or {}
                  if (run / "manifest.json").is_file() else {})
        summary = path / "summary.json"
        bundle = Bundle(kind="dataset", describe=f"dataset directory {path}", root=path,
                        records=path / "train.jsonl",
                        policy=PolicyConfig.model_validate(config.get("policy") or {}),
                        generation=_json(summary) if summary.is_file() else None)
    else:
        raise UserError(f"{path}: neither a run directory (manifest.json), a model directory "
                        "(config.json or model_index.json) nor a dataset directory (train.jsonl)")
    if records is not None:
        bundle.records = records
    if not bundle.records.is_file():
        raise UserError(f"{bundle.records}: no such records file, so the terms of the data "
                        f"behind {path} cannot be checked; pass --records FILE")
    return bundle


def gate_for_distribution(bundle: Bundle, repo: str, terms: Path | None,
                          accept_terms_risk: str | None) -> CheckResult:
    """The terms gate for a distributed student named as the repository is (a dataset: for the
    distributed students others will train on it); blocked -> UserError naming the clauses,
    unless the risk is accepted (then kept in the result, for the card)."""
    p = bundle.policy
    use = use_from(p, repo.split("/", 1)[1], distribute=True)

    def refusal(result: CheckResult) -> str:
        clauses = "; ".join(dict.fromkeys(r for f in result.findings if f.verdict == "block"
                                          for r in f.reasons))
        return (f"{bundle.records}: push refused, {result.blocked} of {result.records} records "
                f"are forbidden for a {use.describe()}: {clauses} Run `seed check "
                f"{bundle.records}` for the sources, or pass --accept-terms-risk \"REASON\"")

    return gate(bundle.records, use, terms or p.overrides, accept_terms_risk, refusal)


def card_text(bundle: Bundle, result: CheckResult, repo: str) -> str:
    """The README.md the Hub shows: the model or dataset card for this push's use."""
    from seed.policy.cards import dataset_card, model_card

    name = repo.split("/", 1)[1]
    if bundle.kind == "dataset":
        return str(dataset_card(result, name=name, generation=bundle.generation))
    return str(model_card(result, model_name=name, base_model=bundle.base_model,
                          license=bundle.policy.license, training=bundle.training or None,
                          eval_results=bundle.eval_results or None))


def read_token(token_file: Path | None) -> str:
    """The Hub token: the first line of `token_file`, else huggingface_hub's (HF_TOKEN, then the
    one `hf auth login` saved); never echoed, even in an error."""
    if token_file is not None:
        try:
            token = token_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"--token-file {token_file}: cannot be read ({first_line(e)}); give "
                            "a file holding a Hugging Face token") from None
        if not token:
            raise UserError(f"--token-file {token_file}: is empty; write a Hugging Face token "
                            "into it")
        return token.splitlines()[0].strip()
    from huggingface_hub import get_token

    saved = get_token()
    if not saved:
        raise UserError("no Hugging Face token: set HF_TOKEN, pass --token-file FILE, or run "
                        "`hf auth login`")
    return saved


@contextmanager
def hub_online() -> Iterator[None]:
    """Let huggingface_hub make requests: the CLI sets HF_HUB_OFFLINE=1 so that no other stage
    reaches a hub, and pushing is the one command whose job is to reach one."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def _hub_error(e: Exception, endpoint: str, repo: str) -> UserError:
    """A Hub failure as one line (the token is in no message huggingface_hub writes)."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(e, HfHubHTTPError):
        status = e.response.status_code
        if status == 401:
            return UserError(f"{endpoint}: the Hub refused the token (401); check HF_TOKEN or "
                             "--token-file (a token with write access)")
        if status == 403:
            return UserError(f"--repo {repo}: the token may not write there (403); push to a "
                             "namespace you own or give a token of that organization")
        return UserError(f"{endpoint}: the Hub answered {status} ({first_line(e)}); check "
                         "--repo and --revision")
    return UserError(f"{endpoint}: cannot reach the Hub ({first_line(e)}); check the network "
                     "or HF_ENDPOINT / --endpoint")


def upload(bundle: Bundle, files: list[Path], card: str, repo: str, *, token: str,
           endpoint: str | None, private: bool, revision: str | None) -> str:
    """Create the repository (kept if it exists), the branch if one is named, and commit
    `files` (relative to the bundle's root) and the card in one commit; return the commit's
    URL."""
    import httpx2  # huggingface_hub's HTTP client
    from huggingface_hub import CommitOperationAdd, HfApi, close_session
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=endpoint, token=token)
    operations = [CommitOperationAdd(path_in_repo=p.as_posix(), path_or_fileobj=bundle.root / p)
                  for p in files]
    operations.append(CommitOperationAdd(path_in_repo="README.md",
                                         path_or_fileobj=card.encode("utf-8")))
    try:
        with hub_online():
            api.create_repo(repo, repo_type=bundle.kind, private=private, exist_ok=True)
            if revision and revision != "main":
                api.create_branch(repo, branch=revision, repo_type=bundle.kind, exist_ok=True)
            info = api.create_commit(repo, operations, repo_type=bundle.kind, revision=revision,
                                     commit_message=f"Upload {bundle.kind} with seed push")
    except (HfHubHTTPError, httpx2.HTTPError, ConnectionError) as e:
        raise _hub_error(e, api.endpoint, repo) from None
    finally:
        close_session()  # this push's connections, not kept idle for a next one
    return str(info.commit_url)


def push(path: Path, repo: str, *, console: Console, private: bool = False,
         revision: str | None = None, accept_terms_risk: str | None = None,
         token_file: Path | None = None, endpoint: str | None = None,
         records: Path | None = None, terms: Path | None = None) -> dict[str, Any]:
    """`seed push`: check the repo id and the token, find what `path` is, gate it for
    distribution, and upload it with its card; return what was pushed."""
    check_repo_id(repo)
    token = read_token(token_file)
    bundle = find_bundle(path, records)
    console.print(f"pushing the {bundle.describe} as the {bundle.kind} {repo}")
    result = gate_for_distribution(bundle, repo, terms, accept_terms_risk)
    if result.accepted_risk:
        console.print(f"[bold red]terms gate: {result.blocked} forbidden records pushed at the "
                      f"user's risk[/]: {result.accepted_risk} (the card says so)")
    else:
        console.print(f"terms gate: {result.verdict} for a {result.use.describe()} "
                      f"({result.records} records)")
    files = bundle.files()
    url = upload(bundle, files, card_text(bundle, result, repo), repo, token=token,
                 endpoint=endpoint, private=private, revision=revision)
    console.print(f"pushed {len(files)} files and the card in one commit: {url}")
    return {"kind": bundle.kind, "files": [p.as_posix() for p in files] + ["README.md"],
            "commit_url": url, "verdict": result.verdict, "accepted_risk": result.accepted_risk}
