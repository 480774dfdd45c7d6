"""`seed chat`: a terminal conversation with a model directory or a server; replies stream.

Lines typed are user turns; `/reset` starts over and `/exit` (or end of input) quits. It reads
standard input line by line, so it works the same at a terminal and in a pipe. Where the reply comes
from is a function of the history that yields text pieces: the local model here, a server in
`seed.serve.client`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path

Reply = Callable[[list[dict[str, str]]], Iterator[str]]


def repl(banner: str, reply: Reply, system: str | None = None) -> None:
    """Read user turns, stream each reply to stdout, and keep the history until `/exit`."""
    start = [{"role": "system", "content": system}] if system else []
    history = list(start)
    interactive = sys.stdin.isatty()
    print(f"{banner} (/reset to start over, /exit to quit)", flush=True)
    while True:
        if interactive:
            print("you> ", end="", flush=True)
        line = sys.stdin.readline()
        if not line or line.strip() == "/exit":
            break
        text = line.strip()
        if not text:
            continue
        if text == "/reset":
            history = list(start)
            print("(new conversation)", flush=True)
            continue
        history.append({"role": "user", "content": text})
        print("seed> ", end="", flush=True)
        pieces = []
        for piece in reply(history):
            pieces.append(piece)
            print(piece, end="", flush=True)
        print(flush=True)
        history.append({"role": "assistant", "content": "".join(pieces).strip()})


def chat_loop(model_dir: Path, system: str | None = None, max_new_tokens: int = 256,
              temperature: float = 0.0) -> None:
    """Chat with a model directory loaded in process."""
    from seed.endpoints.local import LocalModel  # torch loads only for a local model

    model = LocalModel(model_dir)
    repl(f"chatting with {model.path}",
         lambda history: model.stream(history, max_new_tokens=max_new_tokens,
                                      temperature=temperature),
         system)
