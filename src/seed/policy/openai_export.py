"""Export OpenAI's stored chat completions to the file `seed import --format openai-stored` reads.

`python -m seed.policy.openai_export --out stored.jsonl [--model M] [--metadata KEY=VALUE]` pages
through `GET /v1/chat/completions` (completions created with `store: true`; `after` = the page's
`last_id` while `has_more`), fetches each one's request messages from
`GET /v1/chat/completions/{id}/messages` (every page) and writes one completion a line, as the API
returned it, with those messages added under `messages`. The file appears whole or not at all
(written beside it, then renamed); the API key is read from the environment (`OPENAI_API_KEY`, or
the variable `--api-key-env` names), sent only in the Authorization header and written nowhere.
This module talks HTTP and writes one file; reading the file into records is `openai_files.py`'s.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from seed.errors import UserError
from seed.files import write_text_atomic

OPENAI_URL = "https://api.openai.com/v1"
_PAGE = 100  # the most the list endpoints return per page


def _get(client: httpx.Client, path: str, params: dict[str, Any], key: str) -> dict[str, Any]:
    url = str(client.base_url).rstrip("/") + path
    try:
        r = client.get(path, params=params)
    except httpx.HTTPError as e:
        raise UserError(f"{url}: cannot be reached ({type(e).__name__}); "
                        "check --base-url and the network") from None
    if r.status_code != 200:
        said = r.text[:200].strip().replace(key, "***")  # a 401 may quote the key
        raise UserError(f"{url}: HTTP {r.status_code} ({said}); check the "
                        "API key and the parameters")
    page = r.json()
    if not isinstance(page, dict) or not isinstance(page.get("data"), list):
        raise UserError(f"{url}: the answer is not a list page; is "
                        "--base-url an OpenAI API?")
    return page


def _pages(client: httpx.Client, path: str, params: dict[str, Any], key: str) -> Iterator[Any]:
    """Every item of a paginated list endpoint, oldest first."""
    after = None
    while True:
        page = _get(client, path, {**params, "limit": _PAGE, "order": "asc",
                                   **({"after": after} if after else {})}, key)
        yield from page["data"]
        if not page.get("has_more") or not page["data"]:
            return
        after = page.get("last_id") or page["data"][-1]["id"]


def stored_completions(base_url: str, api_key: str, model: str | None = None,
                       metadata: dict[str, str] | None = None) -> Iterator[dict[str, Any]]:
    """Each stored completion with its request messages under `messages`."""
    params: dict[str, Any] = {f"metadata[{k}]": v for k, v in (metadata or {}).items()}
    if model:
        params["model"] = model
    with httpx.Client(base_url=base_url.rstrip("/"), timeout=60,
                      headers={"Authorization": f"Bearer {api_key}"}) as client:
        for completion in _pages(client, "/chat/completions", params, api_key):
            messages = list(_pages(client, f"/chat/completions/{completion['id']}/messages", {},
                                   api_key))
            yield {**completion, "messages": messages}


def export_stored(out: str | Path, base_url: str = OPENAI_URL, api_key_env: str = "OPENAI_API_KEY",
                  model: str | None = None, metadata: dict[str, str] | None = None) -> int:
    """Write every stored completion (filtered by `model` and `metadata`) to `out`; how many."""
    key = os.environ.get(api_key_env)
    if not key:
        raise UserError(f"${api_key_env} is not set; export your OpenAI API key in it (or name "
                        "another variable with --api-key-env)")
    lines = [json.dumps(c, ensure_ascii=False) + "\n"
             for c in stored_completions(base_url, key, model, metadata)]
    write_text_atomic(out, "".join(lines))
    return len(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m seed.policy.openai_export",
                                     description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--out", required=True, help="the JSONL file to write")
    parser.add_argument("--model", help="only completions of this model")
    parser.add_argument("--metadata", action="append", default=[], metavar="KEY=VALUE",
                        help="only completions with this metadata (repeatable)")
    parser.add_argument("--base-url", default=OPENAI_URL)
    parser.add_argument("--api-key-env", default="OPENAI_API_KEY")
    args = parser.parse_args(argv)
    try:
        bad = [m for m in args.metadata if "=" not in m]
        if bad:
            raise UserError(f"--metadata {bad[0]!r}: write KEY=VALUE")
        metadata = dict(m.split("=", 1) for m in args.metadata)
        n = export_stored(args.out, args.base_url, args.api_key_env, args.model, metadata)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"{n} stored completions in {args.out}; next: seed import --format openai-stored "
          f"{args.out} --out records.jsonl")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
