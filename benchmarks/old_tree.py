"""An older commit's `src/`, unpacked beside this tree, for before/after benchmarks (ABBA)."""

from __future__ import annotations

import io
import subprocess
import tarfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def unpack_src(ref: str, into: Path) -> Path:
    """`src/` of commit `ref`, unpacked under `into`; run it with PYTHONPATH set to the result."""
    blob = subprocess.run(["git", "-C", str(ROOT), "archive", ref, "src"], check=True,
                          capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(blob)) as tar:
        tar.extractall(into, filter="data")
    return into / "src"
