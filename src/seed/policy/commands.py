"""What `seed check`, `seed import` and the gate in `seed train` / `seed run` print and record.

The CLI and the pipeline call these so that the gate behaves the same everywhere: the table a user
sees, the warnings, the refusal, and the record of an accepted risk. The verdicts themselves come
from `gate.py`, the cards from `cards.py`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from seed.files import hash_path, write_json_atomic
from seed.policy.cards import write_dataset_card, write_model_card
from seed.policy.gate import CheckResult, Use, check_file, gate_training
from seed.recipe import PolicyConfig

_STYLE = {"allow": "green", "warn": "yellow", "block": "bold red"}


def use_from(policy: PolicyConfig, student_name: str | None = None,
             distribute: bool | None = None) -> Use:
    """The use a recipe's [policy] describes, with command-line values taking precedence."""
    return Use(distribute=policy.distribute if distribute is None else distribute,
               commercial=policy.commercial, task=policy.task, unknown=policy.unknown,
               student_name=student_name or policy.student_name)


def _short(text: str, limit: int = 320) -> str:
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"


def print_check(result: CheckResult, console: Console) -> None:
    """One row per teacher and source: records, verdict, obligations, reason with its source."""
    table = Table(title=f"Terms check for a {result.use.describe()}", show_lines=True)
    for col in ("teacher", "source", "records", "verdict", "obligations", "reason (source)"):
        table.add_column(col, overflow="fold", justify="right" if col == "records" else "left")
    for f in result.findings:
        reasons = "\n".join(_short(r) for r in f.reasons)
        cites = "\n".join(f"source: {c}" for c in dict.fromkeys(f.citations))
        table.add_row(escape(f.teacher), escape(f.source), str(f.records),
                      f"[{_STYLE[f.verdict]}]{f.verdict}[/]",
                      escape("\n".join(f.obligations) or "-"), escape(f"{reasons}\n{cites}"))
    console.print(table)
    if result.overrides:
        console.print(f"terms overrides: {', '.join(result.overrides)}")
    console.print(f"[{_STYLE[result.verdict]}]{result.verdict}[/]: {result.blocked} of "
                  f"{result.records} records forbidden for this use")


def check_command(data: Path, use: Use, terms: Path | None, as_json: bool,
                  console: Console) -> int:
    """`seed check`: print the findings; the exit code is 1 when any record is forbidden."""
    result = check_file(data, use, terms)
    if as_json:
        print(json.dumps(result.to_dict(), indent=2, ensure_ascii=False))
    else:
        print_check(result, console)
    return 1 if result.verdict == "block" else 0


def gate_before_training(records: Path, policy: PolicyConfig, console: Console, *,
                         student_name: str | None = None, distribute: bool | None = None,
                         terms: str | Path | None = None,
                         accept_terms_risk: str | None = None) -> CheckResult:
    """Run the gate on training records: refuse (UserError), warn, or pass; say which."""
    use = use_from(policy, student_name, distribute)
    result = gate_training(records, use, terms or policy.overrides, accept_terms_risk)
    if result.accepted_risk:
        console.print(f"[bold red]terms gate: {result.blocked} forbidden records accepted at "
                      f"the user's risk[/]: {result.accepted_risk}")
    elif result.verdict == "warn":
        warned = sorted({f.family for f in result.findings if f.verdict == "warn"})
        console.print(f"[yellow]terms gate: warning[/] for {'; '.join(warned)}; "
                      f"see `seed check {records}`")
    else:
        console.print(f"terms gate: {result.records} records may train a {use.describe()}")
    return result


def write_cards(result: CheckResult, policy: PolicyConfig, *, model_dir: Path | None = None,
                data_dir: Path | None = None, model_name: str, base_model: str | None = None,
                training: dict[str, Any] | None = None,
                eval_results: dict[str, float] | None = None) -> list[Path]:
    """Model card into the model directory, dataset card next to the data, as given."""
    written = []
    if data_dir is not None:
        written.append(write_dataset_card(data_dir, result, name=f"{model_name} training data"))
    if model_dir is not None:
        written.append(write_model_card(model_dir, result, model_name=model_name,
                                        base_model=base_model, license=policy.license,
                                        training=training, eval_results=eval_results))
    return written


def record_check(path: Path, result: CheckResult, records: Path | None = None) -> None:
    """Keep the gate's decision (and any accepted risk) beside a standalone training run, with
    the records it judged (path and SHA-256), so `seed push` can judge them again."""
    named = {} if records is None else {"records": str(records.resolve()),
                                        "records_sha256": hash_path(records)}
    write_json_atomic(path, {**result.to_dict(), **named})
