"""`seed chat MODEL_DIR`: the reply streams token by token and the history carries over."""


import torch

from helpers.cli import run_cli
from seed.endpoints.local import LocalModel


def test_the_reply_streams_in_pieces_that_join_to_the_batched_answer(tiny_model_dir):
    # A random model, sampled (greedy decoding of random weights repeats one special token).
    model = LocalModel(tiny_model_dir)
    chat = [{"role": "user", "content": "Calculate 12 + 34."}]
    torch.manual_seed(0)
    pieces = list(model.stream(chat, max_new_tokens=12, temperature=1.0))
    torch.manual_seed(0)
    whole = model.generate([chat], max_new_tokens=12, temperature=1.0)[0]
    assert len([p for p in pieces if p]) > 1  # streamed, not one block
    assert "".join(pieces).strip() == whole


def test_seed_chat_answers_each_line_and_resets(tiny_model_dir):
    proc = run_cli("chat", tiny_model_dir, "--max-new-tokens", "6",
                   input="hello\n/reset\nCalculate 1 + 2.\n")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0].startswith(f"chatting with {tiny_model_dir}")
    assert sum(line.startswith("seed> ") for line in lines) == 2
    assert "(new conversation)" in lines
