"""A careless user's input: each mistake is one line naming the input, exit 2, and nothing written.

Every case is the real `seed` command in a subprocess (the exit code and stderr are the point) in
one shared directory of bad inputs; after each, the directory holds exactly what it held before.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from helpers.cli import assert_one_line_error, run_cli
from seed.errors import UserError
from seed.policy.importers import import_dataset

TASKS = ('[generate.teacher]\nkind = "tasks"\n'
         '[[generate.teacher.tasks]]\nname = "basic_arithmetic"\n')
ALPACA = [{"instruction": "Name a colour.", "output": "Blue."}]


def dpi(**fields: object) -> str:
    entry = {"Unique Dataset Identifier": "ds", "Dataset Name": "DS", "Model Generated": [],
             "Licenses": [{"License": "CC BY 4.0"}], **fields}
    return json.dumps({"ds": entry})


FILES: dict[str, str | bytes] = {
    "latin1.toml": 'name = "caf\xe9"\n'.encode("latin-1") + TASKS.encode(),
    "absolute.toml": f'name = "/tmp/seed-outside-runs"\n{TASKS}',
    "dotdot.toml": f'name = "../outside"\n{TASKS}',
    "nested.toml": f'name = "a/b"\n{TASKS}',
    "seed.toml": f'name = "x"\nseed = {2**70}\n{TASKS}',
    "inf.toml": f'name = "x"\n[generate]\nnum_records = 5\nmax_cost = inf\n{TASKS}',
    "under_file.toml": f'name = "x"\nruns_dir = "plain_file/runs"\n{TASKS}',
    "good.toml": f'name = "kept"\n{TASKS}',
    "plain_file": "not a directory\n",
    "binary.jsonl": bytes(range(256)) * 4,
    "alpaca.json": json.dumps(ALPACA),
    "latin1.json": '[{"instruction": "caf\xe9", "output": "x"}]'.encode("latin-1"),
    "dpi_string.json": dpi(**{"Model Generated": "OpenAI GPT-4"}),
    "terms_table.toml": '[entry]\nid = "mine"\n',
    "records.jsonl": json.dumps({"id": "a", "messages": [
        {"role": "user", "content": "1+1"}, {"role": "assistant", "content": "2"}]}) + "\n",
    "runs/kept/manifest.json": "{not json",
    "empty.jsonl": "",
    "preference_word.json": json.dumps([{"instruction": "a", "output_1": "b", "output_2": "c",
                                         "preference": "left"}]),
    "one_verdict.jsonl": json.dumps({"verdicts": [1], "model": "m", "baseline": "b"}) + "\n",
}

CASES = {
    "non-UTF-8 recipe": (["run", "latin1.toml"], ["latin1.toml", "not UTF-8"]),
    "non-UTF-8 import file": (["import", "latin1.json", "--format", "alpaca", "--out", "i.jsonl"],
                              ["latin1.json", "not UTF-8"]),
    "absolute run name": (["run", "absolute.toml"], ["name: '/tmp/seed-outside-runs'",
                                                    "runs_dir/<name>"]),
    "'..' in the run name": (["run", "dotdot.toml"], ["name: '../outside'"]),
    "a path as the run name": (["run", "nested.toml"], ["name: 'a/b'"]),
    "seed = 2**70": (["run", "seed.toml"], ["seed:", "4294967295"]),
    "seed --seed 2**70": (["train", "records.jsonl", "--out", "t", "--seed", str(2**70)],
                          ["--seed", "4294967295"]),
    "inf in a recipe": (["run", "inf.toml"], ["generate.max_cost", "finite"]),
    "runs_dir under a file": (["run", "under_file.toml"], ["runs_dir", "plain_file is a file"]),
    "--out under a file": (["generate", "good.toml", "--out", "plain_file/out"],
                           ["--out", "plain_file is a file"]),
    "--out a directory for a file": (["import", "alpaca.json", "--format", "alpaca", "--out",
                                      "runs"], ["--out", "is a directory"]),
    "corrupt manifest": (["run", "good.toml"], ["runs/kept/manifest.json", "move it away"]),
    "DPI Model Generated a string": (
        ["import", "alpaca.json", "--format", "alpaca", "--out", "i.jsonl", "--dpi",
         "dpi_string.json"], ["dpi_string.json", "'ds'", '["Model Generated"]', "is str"]),
    "a directory as the recipe": (["run", "runs"], ["runs", "is a directory"]),
    "a binary file as records": (["check", "binary.jsonl"], ["binary.jsonl:1",
                                                          "not a valid record"]),
    "terms entry as a table": (["check", "records.jsonl", "--terms", "terms_table.toml"],
                               ["terms_table.toml", "[[entry]]"]),
    "no judgments to count": (["stats", "empty.jsonl"], ["empty.jsonl", "holds no judgments"]),
    "a preference that is a word": (["stats", "preference_word.json"],
                                    ["preference_word.json: item 0", "'left'"]),
    "one verdict where two belong": (["stats", "one_verdict.jsonl"],
                                     ["one_verdict.jsonl:1", "not a Seed judgment line"]),
}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("careless")
    for name, content in FILES.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None
            for p in root.rglob("*")}


@pytest.mark.parametrize("case", CASES)
def test_each_careless_input_is_one_line_exit_2_and_writes_nothing(inputs: Path,
                                                                   case: str) -> None:
    args, needles = CASES[case]
    before = snapshot(inputs)
    proc = run_cli(*args, cwd=inputs, timeout=60)
    assert_one_line_error(proc, *needles)
    assert snapshot(inputs) == before
    assert not Path("/tmp/seed-outside-runs").exists()
    assert not (inputs.parent / "outside").exists()


@pytest.mark.parametrize(("fields", "needles"), [
    ({"Model Generated": [1, 2]}, ['["Model Generated"][0]', "is int", "a model name"]),
    ({"Model Generated": [["GPT-4"]]}, ['["Model Generated"][0]', "is list"]),
    ({"Licenses": "MIT"}, ['["Licenses"]', "is str", "a list of"]),
    ({"Licenses": ["MIT"]}, ['["Licenses"][0]', "is str"]),
    ({"Licenses": [{"License": {"name": "MIT"}}]}, ['["Licenses"][0]["License"]', "is dict"]),
    ({"Licenses": [{"License URL": "https://x"}]}, ['lacks ["Licenses"][0]["License"]']),
    ({"Dataset Name": 5}, ['["Dataset Name"]', "is int"]),
])
def test_a_dpi_field_of_the_wrong_type_is_an_error_naming_file_dataset_and_field(
        tmp_path: Path, fields: dict, needles: list[str]) -> None:
    path = tmp_path / "summary.json"
    path.write_text(dpi(**fields))
    with pytest.raises(UserError) as e:
        import_dataset(tmp_path / "x.json", "alpaca", tmp_path / "out.jsonl", dpi=path)
    for needle in [str(path), "dataset 'ds'", *needles]:
        assert needle in str(e.value)
    assert not (tmp_path / "out.jsonl").exists()
