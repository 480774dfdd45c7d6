"""A local Hugging Face Hub: enough of its HTTP API for `huggingface_hub`'s create_repo and
create_commit, with the committed files kept for the test to read back.

It speaks what `huggingface_hub` 2.x sends (hf_api.py, _commit_api.py, lfs.py): `whoami-v2`,
`repos/create`, `validate-yaml` (the README's front matter must parse as YAML), `preupload` (the
server decides "regular" or "lfs" per file, like the Hub: binary weights and images are LFS),
`commit` (NDJSON: a header line, then `file` lines with base64 content and `lfsFile` lines naming
an uploaded object by sha256), `branch`, and the LFS batch API with the basic transfer (one PUT per
object to a signed URL, checked against its sha256). Every /api call must carry the expected
bearer token; each request is logged (method, path, whether it was authorized, never the token).

What it does not speak: Xet storage (huggingface_hub uploads LFS files through `hf_xet` when that
package is installed and `HF_HUB_DISABLE_XET` is unset; a test that wants LFS files sets
`HF_HUB_DISABLE_XET=1`) and LFS multipart transfers (it never offers a `chunk_size`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import yaml
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from helpers.thread_server import app_in_thread

LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".png", ".jpeg", ".jpg", ".webp", ".gguf")


@dataclass
class Repo:
    kind: str  # model or dataset
    visibility: str
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    commits: list[dict[str, Any]] = field(default_factory=list)
    lfs_paths: set[str] = field(default_factory=set)  # files committed as lfsFile


@dataclass
class Hub:
    """What the server holds: repos by (kind, id), LFS objects by sha256, and a request log."""

    token: str
    user: str
    base_url: str = ""
    repos: dict[tuple[str, str], Repo] = field(default_factory=dict)
    lfs: dict[str, bytes] = field(default_factory=dict)
    log: list[dict[str, Any]] = field(default_factory=list)
    upload_secret: str = field(default_factory=lambda: secrets.token_hex(8))

    def repo(self, kind: str, repo_id: str) -> Repo:
        return self.repos[(kind, repo_id)]

    def files(self, kind: str, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        return self.repo(kind, repo_id).branches[branch]


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status,
                        headers={"X-Error-Message": message})


def hub_app(hub: Hub) -> FastAPI:
    app = FastAPI()

    @app.middleware("http")
    async def authorize(request: Request, call_next: Any) -> Any:
        ok = request.headers.get("authorization") == f"Bearer {hub.token}"
        hub.log.append({"method": request.method, "path": request.url.path, "authorized": ok})
        signed = request.url.path.startswith(f"/lfs-upload/{hub.upload_secret}/")
        if not ok and not signed:
            return _error(401, "Invalid credentials in Authorization header")
        return await call_next(request)

    @app.get("/api/whoami-v2")
    def whoami() -> dict[str, Any]:
        return {"type": "user", "name": hub.user, "orgs": [], "auth": {"type": "access_token"}}

    @app.post("/api/repos/create")
    async def create(request: Request) -> Any:
        body = await request.json()
        kind = body.get("type") or "model"
        repo_id = f"{body.get('organization') or hub.user}/{body['name']}"
        if repo_id.split("/")[0] != hub.user:
            return _error(403, f"You don't have the rights to create a repo under {repo_id}")
        if (kind, repo_id) in hub.repos:
            return _error(409, "You already created this repo")
        hub.repos[(kind, repo_id)] = Repo(kind, body.get("visibility") or "public")
        prefix = "" if kind == "model" else f"{kind}s/"
        return {"url": f"{hub.base_url}/{prefix}{repo_id}", "name": repo_id}

    @app.post("/api/validate-yaml")
    async def validate_yaml(request: Request) -> Any:
        content = (await request.json())["content"]
        if content.startswith("---\n"):
            front = content[4:].split("\n---\n", 1)[0]
            try:
                yaml.safe_load(front)
            except yaml.YAMLError as e:
                return JSONResponse({"errors": [{"message": str(e)}]}, status_code=400)
        return {"errors": [], "warnings": []}

    def _find(kind: str, owner: str, name: str) -> Repo | None:
        return hub.repos.get((kind.removesuffix("s"), f"{owner}/{name}"))

    @app.post("/api/{kind}/{owner}/{name}/branch/{branch}")
    def branch(kind: str, owner: str, name: str, branch: str) -> Any:
        repo = _find(kind, owner, name)
        if repo is None:
            return _error(404, "Repository not found")
        if branch in repo.branches:
            return _error(409, "Reference already exists")
        repo.branches[branch] = dict(repo.branches["main"])
        return {}

    @app.post("/api/{kind}/{owner}/{name}/preupload/{revision}")
    async def preupload(kind: str, owner: str, name: str, revision: str,
                        request: Request) -> Any:
        if _find(kind, owner, name) is None:
            return _error(404, "Repository not found")
        files = (await request.json())["files"]
        return {"files": [{"path": f["path"], "shouldIgnore": False, "oid": None,
                           "uploadMode": "lfs" if f["path"].endswith(LFS_SUFFIXES)
                           else "regular"} for f in files]}

    @app.post("/{owner}/{name}.git/info/lfs/objects/batch")
    @app.post("/datasets/{owner}/{name}.git/info/lfs/objects/batch")
    async def lfs_batch(owner: str, name: str, request: Request) -> Any:
        body = await request.json()
        objects = [{"oid": o["oid"], "size": o["size"], "actions": {"upload": {
            "href": f"{hub.base_url}/lfs-upload/{hub.upload_secret}/{o['oid']}"}}}
            for o in body["objects"] if o["oid"] not in hub.lfs]
        objects += [{"oid": o["oid"], "size": o["size"]} for o in body["objects"]
                    if o["oid"] in hub.lfs]
        return {"transfer": "basic", "objects": objects}

    @app.put("/lfs-upload/{secret}/{oid}")
    async def lfs_put(secret: str, oid: str, request: Request) -> Any:
        data = await request.body()
        if secret != hub.upload_secret or hashlib.sha256(data).hexdigest() != oid:
            return _error(400, "the uploaded bytes do not match the object's sha256")
        hub.lfs[oid] = data
        return {}

    @app.post("/api/{kind}/{owner}/{name}/commit/{revision}")
    async def commit(kind: str, owner: str, name: str, revision: str, request: Request) -> Any:
        repo = _find(kind, owner, name)
        if repo is None:
            return _error(404, "Repository not found")
        if revision not in repo.branches:
            return _error(404, f"Invalid rev id: {revision}")
        lines = [json.loads(line) for line in (await request.body()).splitlines() if line]
        if not lines or lines[0]["key"] != "header":
            return _error(400, "the commit payload starts with a header line")
        staged = dict(repo.branches[revision])
        for line in lines[1:]:
            value = line["value"]
            if line["key"] == "file":
                staged[value["path"]] = base64.b64decode(value["content"])
            elif line["key"] == "lfsFile":
                if value["oid"] not in hub.lfs:
                    return _error(422, f"LFS object {value['oid']} was never uploaded")
                staged[value["path"]] = hub.lfs[value["oid"]]
                repo.lfs_paths.add(value["path"])
            elif line["key"] == "deletedFile":
                staged.pop(value["path"], None)
            else:
                return _error(400, f"unsupported commit operation {line['key']}")
        repo.branches[revision] = staged
        oid = hashlib.sha1(json.dumps(sorted(staged)).encode()
                           + str(len(repo.commits)).encode()).hexdigest()
        repo.commits.append({"oid": oid, "revision": revision, "summary": lines[0]["value"]
                             ["summary"], "paths": [line["value"]["path"] for line in lines[1:]]})
        prefix = "" if repo.kind == "model" else f"{repo.kind}s/"
        return {"success": True, "commitOid": oid, "pullRequestUrl": None,
                "commitUrl": f"{hub.base_url}/{prefix}{owner}/{name}/commit/{oid}"}

    return app


@contextmanager
def running_hub(token: str, user: str = "seed-user") -> Iterator[Hub]:
    """A local Hub on a free port until the block ends; `hub.base_url` is its endpoint."""
    hub = Hub(token=token, user=user)
    with app_in_thread(hub_app(hub), "the hub server") as url:
        hub.base_url = url.removesuffix("/v1")
        yield hub
