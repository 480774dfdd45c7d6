"""Helpers the tests share: real components started or built locally, never stand-ins.

- cli.py: the `seed` command in a subprocess, offline (`run_cli`, `start_cli`, `torchrun`).
- models.py: the one tiny-model builder (`tiny_model`), random weights, nothing downloaded.
- recipes.py: the one recipe writer (`write_recipe`) and the recipes tests start from.
- servers.py: free ports, waiting for a server, the fault server's client (`fault_server`).
- fault_server.py: a local OpenAI-compatible server that injects faults (run as a script).
- judge_server.py: a rule-based judge whose verdicts can be worked out by hand.
- scripted_chat.py: a server in a test thread streaming scripted reasoning and tool-call replies.
- serve.py: `seed serve` on a free port, server-sent events, a load test.
- training.py: chats, records with teacher logprobs, a run's metrics.

Tests import them as `from helpers.cli import run_cli`: pytest puts tests/ on sys.path (a
rootdir conftest.py, no __init__.py in tests/), and the benchmarks that use them add it there.
"""
