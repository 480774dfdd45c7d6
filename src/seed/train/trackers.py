"""Experiment trackers (`train.report_to`): TensorBoard, trackio, Weights & Biases, MLflow.

One adapter per library behind one interface (`start(run_name, config)`, `log(metrics, step)`,
`log_summary(summary)`, `finish()`), each library imported only when the recipe names it; one
that is not installed is a UserError naming the extra (`pip install 'seed[trackers]'`). The loop
logs exactly the lines of `metrics.jsonl` (same keys, same steps) on the main process only, with
the training config and what the caller adds (the recipe, the terms gate's decision) as the run's
config; `seed run` reopens the same runs after its eval stage to add the eval results
(`report_summary`). Where each run lives:
- tensorboard: event files in `<train out>/tensorboard/`;
- trackio: its own local store (a SQLite file per project under TRACKIO_DIR, by default
  `~/.cache/huggingface/trackio`), project `seed`;
- wandb: `<train out>/wandb/`, online or offline as WANDB_MODE says, project `seed`;
- mlflow: MLFLOW_TRACKING_URI, or the file store `<train out>/mlruns`, experiment `seed`.
The ids needed to reopen a run (wandb, mlflow) are kept in `<train out>/trackers.json`.

Nothing secret is logged: configs carry the names of API-key environment variables, never values,
and this module adds no environment to what it logs. It knows nothing about what the metrics mean.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

from seed.errors import UserError
from seed.files import write_json_atomic
from seed.recipe import TrainConfig

TrackerName = Literal["tensorboard", "trackio", "wandb", "mlflow"]
PROJECT = "seed"
IDS = "trackers.json"


class Tracker(Protocol):
    """What the loop and `seed run` call; every adapter implements all four."""

    def start(self, run_name: str, config: Mapping[str, Any]) -> None: ...

    def log(self, metrics: Mapping[str, float], step: int) -> None: ...

    def log_summary(self, summary: Mapping[str, Any]) -> None: ...

    def finish(self) -> None: ...


def _require(name: str) -> Any:
    """Import tracker `name`'s library, or say which extra installs it."""
    import importlib

    try:
        return importlib.import_module({"tensorboard": "torch.utils.tensorboard"}.get(name, name))
    except ImportError:
        raise UserError(f"train.report_to names {name!r}, but the {name} package is not "
                        "installed; pip install 'seed[trackers]'") from None


def check_installed(names: Iterable[TrackerName]) -> None:
    """Every named tracker's library imports (a UserError naming the extra if not), checked
    before a run writes anything."""
    for name in names:
        _require(name)


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as one level of `a.b.c` keys (the form MLflow params and TensorBoard want);
    lists become JSON text."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{name}."))
        elif isinstance(value, list | tuple):
            out[name] = json.dumps(value, default=str)
        else:
            out[name] = value
    return out


def _numbers(summary: Mapping[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in flatten(summary).items()
            if isinstance(v, int | float) and not isinstance(v, bool)}


class TensorBoard:
    """Scalars per metric and step; the config and the summary as JSON text."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir, self.step = log_dir, 0
        self.writer: Any = None

    def start(self, run_name: str, config: Mapping[str, Any]) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.log_dir))
        if config:
            self.writer.add_text("config", _markdown_json(config))

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        assert self.writer is not None
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        self.step = step

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        assert self.writer is not None
        self.writer.add_text("summary", _markdown_json(summary))
        for key, value in _numbers(summary).items():
            self.writer.add_scalar(f"summary/{key}", value, self.step)

    def finish(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _markdown_json(data: Mapping[str, Any]) -> str:
    # TensorBoard renders text as markdown: indent four spaces for a code block.
    text = json.dumps(data, indent=2, default=str, sort_keys=True)
    return "\n".join("    " + line for line in text.splitlines())


class Trackio:
    """A trackio run in the local store; the summary goes into the run's config (trackio keeps
    no separate summary) and its numbers are logged as `summary/...` metrics."""

    def __init__(self) -> None:
        self.run: Any = None
        self.lib = _require("trackio")
        self.step = 0

    def start(self, run_name: str, config: Mapping[str, Any]) -> None:
        self.run = self.lib.init(project=PROJECT, name=run_name, config=dict(config),
                                 resume="allow")

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.lib.log(dict(metrics), step=step)
        self.step = step

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        numbers = {f"summary/{k}": v for k, v in _numbers(summary).items()}
        if numbers:
            self.lib.log(numbers, step=self.step)

    def finish(self) -> None:
        if self.run is not None:
            self.lib.finish()
            self.run = None


class Wandb:
    """A W&B run under `<out>/wandb` (WANDB_MODE=offline keeps it there); the summary is the
    run's summary. Reopened by its id."""

    def __init__(self, out_dir: Path, run_id: str | None) -> None:
        self.lib, self.out_dir, self.run_id = _require("wandb"), out_dir, run_id
        self.run: Any = None

    def start(self, run_name: str, config: Mapping[str, Any]) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.run = self.lib.init(project=PROJECT, name=run_name, config=dict(config) or None,
                                 dir=str(self.out_dir), id=self.run_id, resume="allow")
        self.run_id = self.run.id

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        self.run.log(dict(metrics), step=step)

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        self.run.summary.update(flatten(summary))

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None


class MLflow:
    """An MLflow run: the config as params (flattened), the metrics per step, the summary as
    metrics and as `summary.json`. Reopened by its id."""

    def __init__(self, out_dir: Path, run_id: str | None) -> None:
        import os

        self.lib = _require("mlflow")
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or (out_dir / "mlruns").resolve().as_uri()
        self.client: Any = None
        self.run_id = run_id

    def start(self, run_name: str, config: Mapping[str, Any]) -> None:
        self.client = self.lib.tracking.MlflowClient(self.uri)
        if self.run_id is None:
            exp = self.client.get_experiment_by_name(PROJECT)
            exp_id = exp.experiment_id if exp else self.client.create_experiment(PROJECT)
            self.run_id = self.client.create_run(exp_id, run_name=run_name).info.run_id
            for key, value in flatten(config).items():
                self.client.log_param(self.run_id, key, str(value)[:6000])
        else:
            self.client.update_run(self.run_id, status="RUNNING")

    def log(self, metrics: Mapping[str, float], step: int) -> None:
        for key, value in metrics.items():
            self.client.log_metric(self.run_id, key, value, step=step)

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        for key, value in _numbers(summary).items():
            self.client.log_metric(self.run_id, f"summary/{key}", value)
        self.client.log_dict(self.run_id, dict(summary), "summary.json")

    def finish(self) -> None:
        if self.client is not None:
            self.client.set_terminated(self.run_id)
            self.client = None


class Trackers:
    """The trackers a recipe names, called together; `metrics` lines go to every one."""

    def __init__(self, names: Iterable[TrackerName], out_dir: Path) -> None:
        self.out_dir = out_dir
        ids = _read_ids(out_dir / IDS)
        self.named: dict[str, Tracker] = {}
        for name in dict.fromkeys(names):
            if name == "tensorboard":
                _require(name)
                self.named[name] = TensorBoard(out_dir / "tensorboard")
            elif name == "trackio":
                self.named[name] = Trackio()
            elif name == "wandb":
                self.named[name] = Wandb(out_dir, ids.get("wandb"))
            else:
                self.named[name] = MLflow(out_dir, ids.get("mlflow"))

    def start(self, run_name: str, config: Mapping[str, Any]) -> None:
        for tracker in self.named.values():
            tracker.start(run_name, config)
        ids = {n: getattr(t, "run_id", None) for n, t in self.named.items()}
        if any(ids.values()):
            write_json_atomic(self.out_dir / IDS, {n: i for n, i in ids.items() if i})

    def log(self, line: Mapping[str, Any]) -> None:
        """One `metrics.jsonl` line: its `step`, and every other key as a metric."""
        metrics = {k: float(v) for k, v in line.items() if k != "step"}
        for tracker in self.named.values():
            tracker.log(metrics, int(line["step"]))

    def log_summary(self, summary: Mapping[str, Any]) -> None:
        for tracker in self.named.values():
            tracker.log_summary(summary)

    def finish(self) -> None:
        for tracker in self.named.values():
            tracker.finish()


def _read_ids(path: Path) -> dict[str, str]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if isinstance(v, str)} if isinstance(data, dict) else {}


@dataclass
class Report:
    """How a training run is reported: its name in the trackers and what its config shows
    beside the train config (`seed run` adds the recipe and the terms gate's decision)."""

    run_name: str
    config: dict[str, Any] = field(default_factory=dict)


def start_trackers(config: TrainConfig, out_dir: Path, report: Report | None = None
                   ) -> Trackers | None:
    """The loop's trackers (main process only), started with the train config; None when
    `train.report_to` is empty."""
    report = report or Report(out_dir.name)
    return open_trackers(config.report_to, out_dir, report.run_name,
                         {"train": config.model_dump(mode="json"), **report.config})


def open_trackers(names: Iterable[TrackerName], out_dir: Path, run_name: str,
                  config: Mapping[str, Any]) -> Trackers | None:
    """The recipe's trackers, started; None when it names none."""
    names = list(names)
    if not names:
        return None
    trackers = Trackers(names, out_dir)
    trackers.start(run_name, config)
    return trackers


def report_summary(names: Iterable[TrackerName], out_dir: Path, run_name: str,
                   summary: Mapping[str, Any], step: int | None = None) -> None:
    """Reopen the runs a training in `out_dir` logged to and add `summary` (eval results)."""
    trackers = open_trackers(names, out_dir, run_name, {})
    if trackers is None:
        return
    try:
        if step is not None:
            for tracker in trackers.named.values():
                if isinstance(tracker, TensorBoard | Trackio):
                    tracker.step = step
        trackers.log_summary(summary)
    finally:
        trackers.finish()
