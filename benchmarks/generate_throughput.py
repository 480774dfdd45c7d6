"""Generation throughput and memory: `seed generate` vs distilabel against the same local server.

The server (a bare asyncio HTTP/1.1 server, run by this script in a subprocess) answers every chat
request after a fixed latency (200 ms), so the best any client can do at concurrency C is
C / 0.2 requests/s. Both clients are timed by the server itself, from the first request it received
to the last answer it sent, so neither tool's start-up counts and both are measured the same way.

- seed: `python -m seed generate` (the full product: cache, records, provenance) at --concurrency C.
- distilabel: a Pipeline of LoadDataFromDicts >> TextGeneration(OpenAILLM), input_batch_size = C
  (distilabel sends one batch's requests concurrently), no cache. It runs in its own venv
  (default /tmp/seed-bench-venv, created with pip if missing) so it never touches Seed's pins.
- memory: peak RSS of `seed generate` answering 100,000 prompts (server latency 10 ms).

Run: `.venv/bin/python benchmarks/generate_throughput.py [--n 2000] [--rss-n 100000]`
Ends with `RESULT frac_limit_c32=F frac_limit_c64=F vs_distilabel_c64=R rss_mb_100k=M`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
DISTILABEL_VENV = Path("/tmp/seed-bench-venv")

STATS = {"count": 0, "first": None, "last": None}
LATENCY = 0.2


def _response(status: int, obj: object) -> bytes:
    body = json.dumps(obj).encode()
    head = (f"HTTP/1.1 {status} {'OK' if status == 200 else 'Not Found'}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n")
    return head.encode() + body


def _answer(path: str, body: bytes) -> bytes:
    if path.endswith("/chat/completions"):
        req = json.loads(body)
        user = req["messages"][-1]["content"]
        STATS["count"] += 1
        STATS["last"] = time.monotonic()
        return _response(200, {
            "id": "b", "object": "chat.completion", "created": 0, "model": req["model"],
            "system_fingerprint": "fp_bench",
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": f"answer to {user}"}}],
            "usage": {"prompt_tokens": 8, "completion_tokens": 4, "total_tokens": 12}})
    if path.endswith("/models"):
        return _response(200, {"object": "list", "data": [{"id": "bench-model"}]})
    if path == "/_stats":
        return _response(200, STATS)
    if path == "/_reset":
        STATS.update(count=0, first=None, last=None)
        return _response(200, STATS)
    return _response(404, {"error": {"message": "not found"}})


class _Conn(asyncio.Protocol):
    """HTTP/1.1 keep-alive, Content-Length bodies only: all an OpenAI client sends.

    A few lines of asyncio instead of a framework, so the server's own CPU cost (on the same
    cores as the clients) stays far below the clients' and does not cap what they can reach.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        self.buf = b""

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while (end := self.buf.find(b"\r\n\r\n")) >= 0:
            head = self.buf[:end].decode("latin-1").split("\r\n")
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(":")
                if name.strip().lower() == "content-length":
                    length = int(value)
            if len(self.buf) < end + 4 + length:
                return
            body = self.buf[end + 4:end + 4 + length]
            self.buf = self.buf[end + 4 + length:]
            path = head[0].split(" ")[1]
            if path.endswith("/chat/completions"):
                if STATS["first"] is None:
                    STATS["first"] = time.monotonic()
                asyncio.get_running_loop().call_later(LATENCY, self._reply, path, body)
            else:
                self._reply(path, body)

    def _reply(self, path: str, body: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(_answer(path, body))


def serve(port: int, latency: float) -> None:
    global LATENCY
    LATENCY = latency

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Conn, "127.0.0.1", port,
                                                                backlog=4096)
        await server.serve_forever()

    asyncio.run(main())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, latency: float) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen([sys.executable, __file__, "--serve", str(self.port),
                                      "--latency", str(latency)])
        self.root = f"http://127.0.0.1:{self.port}"
        for _ in range(200):
            try:
                httpx.get(f"{self.root}/_stats", timeout=1)
                return
            except httpx.HTTPError:
                time.sleep(0.1)
        raise RuntimeError("benchmark server did not start")

    def reset(self) -> None:
        httpx.post(f"{self.root}/_reset")

    def rate(self) -> tuple[int, float]:
        s = httpx.get(f"{self.root}/_stats").json()
        return s["count"], s["count"] / (s["last"] - s["first"])

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def write_inputs(tmp: Path, n: int, base_url: str, concurrency: int) -> Path:
    prompts = tmp / f"prompts-{n}.jsonl"
    if not prompts.exists():
        prompts.write_text("".join(json.dumps({"prompt": f"question {i}"}) + "\n"
                                   for i in range(n)))
    recipe = tmp / f"recipe-{n}-{concurrency}.toml"
    recipe.write_text(f"""name = "bench"
[generate]
params = {{max_tokens = 16}}
[[generate.prompts]]
path = "{prompts}"
[generate.limits]
concurrency = {concurrency}
[generate.teacher]
kind = "openai"
base_url = "{base_url}/v1"
model = "bench-model"
""")
    return recipe


WRAPPER = ("import resource, subprocess, sys; "
           "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE); "
           "u = resource.getrusage(resource.RUSAGE_CHILDREN); "
           "sys.stderr.write(r.stderr.decode()[-3000:]); "
           "print(u.ru_maxrss, u.ru_utime + u.ru_stime, r.returncode)")


def measured(cmd: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float, str]:
    """Run a command; (peak RSS MB, CPU seconds of it and its children, stderr tail)."""
    res = subprocess.run([sys.executable, "-c", WRAPPER, *cmd], env=env, cwd=cwd,
                         capture_output=True, text=True, check=True)
    rss_kb, cpu, code = res.stdout.split()
    if int(code) != 0:
        raise RuntimeError(f"{cmd[:3]} failed: {res.stderr}")
    return int(rss_kb) / 1024, float(cpu), res.stderr


def run_seed(tmp: Path, server: Server, n: int, c: int) -> tuple[int, float, float, float]:
    """(requests the server answered, their rate, peak RSS MB, CPU ms per request)."""
    recipe = write_inputs(tmp, n, server.root, c)
    out = tmp / f"seed-out-{n}-{c}"
    server.reset()
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    rss, cpu, _ = measured([sys.executable, "-m", "seed", "generate", str(recipe), "--out",
                            str(out)], env, ROOT)
    count, rate = server.rate()
    return count, rate, rss, cpu / count * 1000


DISTILABEL_SCRIPT = """
import sys, tempfile
from distilabel.models import OpenAILLM
from distilabel.pipeline import Pipeline
from distilabel.steps import LoadDataFromDicts
from distilabel.steps.tasks import TextGeneration

base, n, c = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with Pipeline(name="bench", cache_dir=tempfile.mkdtemp()) as pipeline:
    load = LoadDataFromDicts(data=[{"instruction": f"question {i}"} for i in range(n)],
                             batch_size=c)
    gen = TextGeneration(llm=OpenAILLM(model="bench-model", base_url=base, api_key="none",
                                       generation_kwargs={"max_new_tokens": 16}),
                         input_batch_size=c)
    load >> gen

if __name__ == "__main__":
    ds = pipeline.run(use_cache=False)
    print("ROWS", len(ds["default"]["train"]))
"""


def distilabel_python(given: str | None) -> str:
    if given:
        return given
    py = DISTILABEL_VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(DISTILABEL_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", "distilabel==1.5.3", "requests",
                        "openai"], check=True)
    return str(py)


def run_distilabel(tmp: Path, server: Server, py: str, n: int, c: int
                   ) -> tuple[int, float, float]:
    """(requests the server answered, their rate, CPU ms per request)."""
    script = tmp / "distilabel_bench.py"
    script.write_text(DISTILABEL_SCRIPT)
    server.reset()
    env = {**os.environ, "DISTILABEL_LOG_LEVEL": "WARNING", "HOME": str(tmp)}
    env.pop("PYTHONPATH", None)
    _, cpu, _ = measured([py, str(script), f"{server.root}/v1", str(n), str(c)], env, tmp)
    count, rate = server.rate()
    if count != n:
        raise RuntimeError(f"distilabel sent {count} requests for {n} prompts")
    return count, rate, cpu / count * 1000


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--serve", type=int)
    ap.add_argument("--latency", type=float, default=0.2)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--rss-n", type=int, default=100_000)
    ap.add_argument("--distilabel-python", default=None)
    args = ap.parse_args()
    if args.serve:
        serve(args.serve, args.latency)
        return
    py = distilabel_python(args.distilabel_python)
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        server = Server(args.latency)
        try:
            for c in (32, 64):
                limit = c / args.latency
                count, rate, _, cpu = run_seed(tmp, server, args.n, c)
                assert count == args.n, f"seed sent {count} requests for {args.n} prompts"
                _, drate, dcpu = run_distilabel(tmp, server, py, args.n, c)
                results[f"frac_limit_c{c}"] = rate / limit
                results[f"vs_distilabel_c{c}"] = rate / drate
                print(f"c={c}: limit {limit:.0f} req/s | seed {rate:.1f} req/s "
                      f"({rate / limit:.1%} of limit, {cpu:.2f} CPU ms/request) | distilabel "
                      f"{drate:.1f} req/s ({drate / limit:.1%}, {dcpu:.2f} CPU ms/request) | "
                      f"seed/distilabel {rate / drate:.2f}x", flush=True)
        finally:
            server.close()
        if args.rss_n:
            fast = Server(0.01)
            try:
                count, rate, rss, cpu = run_seed(tmp, fast, args.rss_n, 64)
            finally:
                fast.close()
            assert count == args.rss_n
            results["rss_mb_100k"] = rss
            print(f"{args.rss_n} prompts at concurrency 64: peak RSS {rss:.0f} MB, "
                  f"{rate:.0f} req/s, {cpu:.2f} CPU ms/request", flush=True)
    print("RESULT " + " ".join(f"{k}={v:.3f}" if k != "rss_mb_100k" else f"{k}={v:.0f}"
                               for k, v in results.items()
                               if k in ("frac_limit_c32", "frac_limit_c64", "vs_distilabel_c64",
                                        "rss_mb_100k")))


if __name__ == "__main__":
    main()
