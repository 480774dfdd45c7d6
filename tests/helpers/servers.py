"""Real local servers for tests: a free port, waiting until a server answers, and the fault server
(helpers/fault_server.py) in a subprocess with a client that sets its faults and reads its log.

What a server should answer is for each test to assert; `seed serve` itself is in helpers.serve.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

SERVER = Path(__file__).with_name("fault_server.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(proc: subprocess.Popen, url: str, timeout: float, what: str = "the server"
                  ) -> None:
    """Poll GET `url` until it answers 2xx; RuntimeError, with the process's captured output, if
    it exits first or `timeout` seconds pass."""
    deadline = time.monotonic() + timeout
    # One client for all the polls: httpx.get builds a client (and its TLS context) per call,
    # ~55 ms of CPU each, a quarter of a core taken from the server it waits for.
    with httpx.Client(timeout=1.0) as client:
        while not _answers(client, proc, url, what):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what} did not answer {url} within {timeout:.0f} s")
            time.sleep(0.2)


def _answers(client: httpx.Client, proc: subprocess.Popen, url: str, what: str) -> bool:
    """Whether GET `url` answers 2xx now; RuntimeError if the process has exited."""
    if proc.poll() is not None:
        stream = proc.stdout or proc.stderr
        output = stream.read()[-4000:] if stream else ""
        raise RuntimeError(f"{what} exited before it answered:\n{output}")
    try:
        return client.get(url).is_success
    except httpx.HTTPError:
        return False


@dataclass
class FaultServer:
    base_url: str
    log: Path

    def faults(self, faults: list[str], match: str = "") -> None:
        root = self.base_url.removesuffix("/v1")
        spec = {"match": match, "faults": faults}
        httpx.post(f"{root}/_control/faults", json=spec).raise_for_status()

    def requests(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines() if line.strip()]


@contextmanager
def fault_server(tmp: Path, latency: float = 0.0, key: str | None = None,
                 model: str = "fault-model") -> Iterator[FaultServer]:
    port = free_port()
    log = tmp / f"server-{port}.jsonl"
    env = {k: v for k, v in os.environ.items() if k != "FAULT_SERVER_KEY"}
    if key:
        env["FAULT_SERVER_KEY"] = key
    proc = subprocess.Popen([sys.executable, str(SERVER), "--port", str(port), "--latency",
                             str(latency), "--log", str(log), "--model", model], env=env)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_up(proc, f"{base}/models", 30, "the fault server")
        yield FaultServer(base, log)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
