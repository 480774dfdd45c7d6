"""trackio beside Seed's pinned venv: install it, then run the trackio test of
tests/test_train_trackers.py (a tiny training whose trackio project must hold every metric of
metrics.jsonl).

Why a script and not `make test`: trackio 0.43.0 declares pillow<13 and constraints.txt pins
pillow 13.0.0, so pip refuses to install it into the venv. This script installs trackio and the
dependencies the venv lacks (`--no-deps`, into a folder of their own, the venv untouched) and
puts that folder on PYTHONPATH, so trackio runs on the venv's pillow 13 (the cap is declared,
not needed, as the test shows). It reports the install's seconds and size.

    .venv/bin/python benchmarks/trackers_trackio.py
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# trackio and what it needs beyond the venv (pip's choice for trackio 0.43.0 on 2026-12-02).
PACKAGES = ["trackio==0.43.0", "gradio_client==2.7.2", "orjson==3.13.0", "Brotli==1.2.1"]


def size_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1e6


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="seed-trackio-") as tmp:
        target = Path(tmp) / "site"
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps",
                        "--disable-pip-version-check", "--target", str(target), *PACKAGES],
                       check=True)
        install_s = time.perf_counter() - t0
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            [str(target), *filter(None, [os.environ.get("PYTHONPATH")])])}
        t0 = time.perf_counter()
        test = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:randomly",
                               "tests/test_train_trackers.py", "-k", "trackio", "-rs"],
                              cwd=ROOT, env=env, capture_output=True, text=True)
        test_s = time.perf_counter() - t0
        print(test.stdout[-2000:])
        passed = test.returncode == 0 and " passed" in test.stdout and "skipped" not in test.stdout
        print(f"trackio install: {install_s:.1f} s, {size_mb(target):.1f} MB "
              f"({len(PACKAGES)} packages); test {test_s:.1f} s")
        print(f"RESULT trackio_test={'passed' if passed else 'failed'} "
              f"install_s={install_s:.1f} install_mb={size_mb(target):.1f} test_s={test_s:.1f}")
        if not passed:
            sys.exit(1)


if __name__ == "__main__":
    main()
