"""The `seed` command as a user runs it: `python -m seed ...` in a subprocess, offline.

The child finds the package through PYTHONPATH=src (it is not installed) and never reaches a model
hub (HF_HUB_OFFLINE=1). This module starts the command and checks the one shape every user error
has (`assert_one_line_error`); what else it should print or write is for each test to assert.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def cli_env(*, inherit: bool = True, **extra: str) -> dict[str, str]:
    """This process's environment, or a bare one (PATH=/usr/bin:/bin and nothing else), with
    PYTHONPATH=src, HF_HUB_OFFLINE=1 and `extra`."""
    base = dict(os.environ) if inherit else {"PATH": "/usr/bin:/bin"}
    return {**base, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1", **extra}


def torchrun(processes: int) -> list[str]:
    """The launcher for `processes` ranks on this machine (torch's `torchrun`)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(processes)]


def _command(args: Sequence[str | Path], launcher: Sequence[str]) -> list[str]:
    return [*launcher, "-m", "seed", *map(str, args)]


def run_cli(*args: str | Path, cwd: Path = ROOT, env: Mapping[str, str] | None = None,
            input: str | None = None, timeout: float = 300,
            launcher: Sequence[str] = (sys.executable,)) -> subprocess.CompletedProcess[str]:
    """`seed ARGS` run to the end, its output captured as text; `env` is the whole environment."""
    return subprocess.run(_command(args, launcher), cwd=cwd, env=env or cli_env(), input=input,
                          capture_output=True, text=True, timeout=timeout)


def start_cli(*args: str | Path, cwd: Path = ROOT, env: Mapping[str, str] | None = None,
              **popen: Any) -> subprocess.Popen:
    """`seed ARGS` started and left running; `popen` is passed on (stdout, stderr, text)."""
    return subprocess.Popen(_command(args, (sys.executable,)), cwd=cwd, env=env or cli_env(),
                            **popen)


def assert_one_line_error(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    """`proc` failed as a user error should: exit 2, one stderr line "error: ..." holding every
    needle, no traceback."""
    assert proc.returncode == 2, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr + proc.stdout
    for needle in needles:
        assert needle in lines[0], lines[0]
