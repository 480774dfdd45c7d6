"""`seed serve`: build the backend (a model directory or an upstream URL) and run uvicorn on it.

Everything comes from one `ServeConfig` (seed.recipe), built by the command from a recipe's
`[serve]` table and its flags. A model directory is served by two processes: this one (HTTP,
tokenization, response chunks) and the engine process it spawns (`worker.py`) with the same
config; this module makes sure the second never outlives it. What every request must pass first
(Host, key, body size) is `guard.py`'s.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from seed.errors import UserError
from seed.protect.served import check_served_dir
from seed.protect.watermark import check_watermark_key
from seed.recipe import ServeConfig
from seed.serve.policy import KeyPolicies
from seed.serve.usage import UsageLog

if TYPE_CHECKING:
    from seed.serve.app import Backend


def run_server(config: ServeConfig) -> None:
    """Serve until interrupted. Binds 127.0.0.1 unless `config.host` says otherwise.

    Keys and the usage log are checked before a model loads, so a mistake in either is one line
    at once rather than after the load.
    """
    api_key = None if config.api_key is None else config.api_key.get_secret_value()
    keys = KeyPolicies.load(api_key, config.keys_file)
    usage_log = UsageLog.open(config.usage_log) if config.usage_log else None
    if (config.model is None) == (config.upstream is None):
        raise UserError("give either a model directory or --upstream URL (serve.model or "
                        "serve.upstream in a recipe), one of them")
    check_watermark_key(config)
    check_served_dir(config)
    backend: Backend
    if config.upstream is not None:
        from seed.serve.upstream import UpstreamBackend

        backend = UpstreamBackend(config.upstream, timeout=config.upstream_timeout)
    elif config.model is not None and (config.model / "model_index.json").is_file():
        from seed.serve.images import ImageBackend  # a diffusers pipeline directory

        backend = ImageBackend(config)
    else:
        from seed.serve.worker import EngineProcess

        # Spawned first: the engine process imports torch and loads the model while this one
        # imports the API's libraries and reads the tokenizer (~4 s less to start).
        engine = EngineProcess(config)
        try:
            from seed.serve.backend import LocalBackend
        except BaseException:
            engine.stop()
            raise
        backend = LocalBackend(config, engine)  # stops the engine if the model cannot be served
    try:  # a model backend owns an engine process: stopped however uvicorn ends
        import uvicorn

        from seed.serve.app import create_app

        app = create_app(backend, config, keys=keys, usage_log=usage_log)
        print(f"seed serve: {backend.model_name} on http://{config.host}:{config.port} "
              f"({'keys required' if keys else 'no keys'})", flush=True)
        # A long keep-alive: clients (openai, httpx) reuse idle connections, and one the server
        # closes just as a request goes out is a failed request for the user.
        uvicorn.run(app, host=config.host, port=config.port, log_level="warning",
                    timeout_graceful_shutdown=5, timeout_keep_alive=75, backlog=4096)
    finally:
        backend.stop()
