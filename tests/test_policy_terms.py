"""The terms registry: every verdict cites its source and the date it was read."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from seed.errors import UserError
from seed.policy.terms import builtin_text, load_terms

RAW = tomllib.loads(builtin_text())
ALL = RAW["entry"] + RAW["license"]
FAMILIES_REQUIRED = ["openai-api", "azure-openai", "anthropic", "gemini-api", "llama-2",
                     "llama-3", "llama-3.1+", "gemma", "qwen-license", "qwen-research",
                     "qwen-apache", "mistral-apache", "mistral-api", "deepseek-r1-mit",
                     "deepseek-api", "procedural", "unknown"]


@pytest.mark.parametrize("entry", ALL, ids=[e["id"] for e in ALL])
def test_every_entry_cites_a_source_a_date_and_a_clause(entry: dict) -> None:
    assert entry.get("source_url", "").strip(), f"{entry['id']}: no source_url"
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", entry.get("read_on", "")), \
        f"{entry['id']}: read_on is not a date"
    assert len(entry.get("clause", "").strip()) > 40, f"{entry['id']}: no clause"


def test_the_registry_covers_the_families_the_issue_names() -> None:
    ids = [e["id"] for e in RAW["entry"]]
    assert all(f in ids for f in FAMILIES_REQUIRED)
    assert len(ids) == len(set(ids))
    assert ids[-1] == "unknown"


def test_unverified_entries_say_so_in_their_clause() -> None:
    for e in RAW["entry"]:
        if "unverified" in (e["internal"], e["distributed"]) and e["id"] != "unknown":
            assert e["clause"].startswith("Not verified"), e["id"]


def test_an_override_without_a_source_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "mine.toml"
    bad.write_text('[[entry]]\nid = "mine"\nfamily = "x"\nmodels = ["x*"]\n'
                   'internal = "allow"\ndistributed = "allow"\nread_on = "2026-11-01"\n'
                   'clause = "we asked nicely and they said yes in an email"\n')
    with pytest.raises(UserError, match=r"mine\.toml: \[\[entry\]\] mine: source_url"):
        load_terms(bad)


def test_an_override_with_a_bad_date_is_rejected(tmp_path: Path) -> None:
    bad = tmp_path / "mine.toml"
    bad.write_text('[[entry]]\nid = "mine"\nfamily = "x"\nmodels = ["x*"]\n'
                   'internal = "allow"\ndistributed = "allow"\nread_on = "last week"\n'
                   'source_url = "email from legal"\nclause = "we asked nicely and they agreed"\n')
    with pytest.raises(UserError, match="read_on"):
        load_terms(bad)


def test_override_entries_come_first_and_remember_their_file(tmp_path: Path) -> None:
    path = tmp_path / "mine.toml"
    path.write_text('[[entry]]\nid = "mine"\nfamily = "x"\nmodels = ["gpt-*"]\n'
                    'internal = "allow"\ndistributed = "allow"\nread_on = "2026-11-01"\n'
                    'source_url = "letter from OpenAI legal, 2026-10-30"\n'
                    'clause = "Written permission to distribute students trained on outputs."\n')
    terms = load_terms(path)
    assert terms.entries[0].id == "mine"
    assert terms.entries[0].origin == str(path)
    assert terms.entries[1].origin == "builtin"
    assert terms.overrides == [str(path)]


def test_a_missing_overrides_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no such terms overrides file"):
        load_terms(tmp_path / "nope.toml")
