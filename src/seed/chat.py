"""`seed chat`: a terminal conversation with a model directory; replies stream as they are made.

Lines typed are user turns; `/reset` starts over and `/exit` (or end of input) quits. It reads
standard input line by line, so it works the same at a terminal and in a pipe.
"""

from __future__ import annotations

import sys
from pathlib import Path

from seed.endpoints.local import LocalModel


def chat_loop(model_dir: Path, system: str | None = None, max_new_tokens: int = 256,
              temperature: float = 0.0) -> None:
    """Run the chat until `/exit` or end of input."""
    model = LocalModel(model_dir)
    start = [{"role": "system", "content": system}] if system else []
    history = list(start)
    interactive = sys.stdin.isatty()
    print(f"chatting with {model.path} (/reset to start over, /exit to quit)", flush=True)
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
        reply = []
        for piece in model.stream(history, max_new_tokens=max_new_tokens, temperature=temperature):
            reply.append(piece)
            print(piece, end="", flush=True)
        print(flush=True)
        history.append({"role": "assistant", "content": "".join(reply).strip()})
