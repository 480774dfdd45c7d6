"""`seed serve`: build the backend (a model directory or an upstream URL) and run uvicorn on it.

A model directory is served by two processes: this one (HTTP, tokenization, response chunks) and
the engine process it spawns (`worker.py`); this module makes sure the second never outlives it.
"""

from __future__ import annotations

from pathlib import Path

from seed.errors import UserError
from seed.serve.auth import load_keys


def run_server(model_dir: Path | None, *, upstream: str | None = None, host: str = "127.0.0.1",
               port: int = 8000, api_key: str | None = None, keys_file: Path | None = None,
               model_name: str | None = None, max_running: int = 32, max_queue: int = 256,
               max_prefill_tokens: int = 2048, usage_log: Path | None = None,
               threads: int | None = None) -> None:
    """Serve until interrupted. Binds 127.0.0.1 unless `host` says otherwise."""
    import uvicorn

    from seed.serve.app import create_app

    keys = load_keys(api_key, keys_file)
    if (model_dir is None) == (upstream is None):
        raise UserError("give either a model directory or --upstream URL (one of them)")
    if upstream is not None:
        from seed.serve.upstream import UpstreamBackend

        backend = UpstreamBackend(upstream)
    else:
        from seed.serve.backend import LocalBackend

        backend = LocalBackend(model_dir, model_name=model_name, max_running=max_running,
                               max_queue=max_queue, max_prefill_tokens=max_prefill_tokens,
                               threads=threads)
    try:  # a model backend owns an engine process: stopped however uvicorn ends
        app = create_app(backend, keys=keys, usage_log=usage_log)
        print(f"seed serve: {backend.model_name} on http://{host}:{port} "
              f"({'keys required' if keys else 'no keys'})", flush=True)
        # A long keep-alive: clients (openai, httpx) reuse idle connections, and one the server
        # closes just as a request goes out is a failed request for the user.
        uvicorn.run(app, host=host, port=port, log_level="warning", timeout_graceful_shutdown=5,
                    timeout_keep_alive=75, backlog=4096)
    finally:
        backend.stop()
