"""lm-evaluation-harness (`lm_eval`, its real CLI) against a real `seed serve` of a tiny model.

The tasks and their data are in tests/data/lm_eval (local JSON, loaded offline; nothing is
downloaded): `seed_qa` is a generate_until task, `seed_choice` a multiple_choice one. The harness
tokenizes with the served model's own directory. Its generations must be what Seed answers the
same request directly, and its multiple-choice accuracy what the model's logits give in process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from helpers.cli import ROOT
from helpers.serve import seed_env

TASKS = ROOT / "tests" / "data" / "lm_eval"
UNTIL = ["\n\n", "Question:", "?", "."]  # seed_qa.yaml's generation_kwargs
MAX_GEN = 8

pytestmark = pytest.mark.slow  # two harness runs in subprocesses: about a minute


@pytest.fixture(scope="module")
def model_dir(tiny_chat_model):
    return tiny_chat_model


@pytest.fixture(scope="module")
def url(tiny_server):
    return tiny_server


@pytest.fixture(scope="module")
def runs(url, model_dir, tmp_path_factory):
    """Both harness runs, started together: local-completions on both tasks and
    local-chat-completions with the chat template on seed_qa; each run's output directory."""
    out = tmp_path_factory.mktemp("lm_eval_out")
    jobs = {
        "completions": _start_lm_eval("local-completions", f"{url}/v1/completions", model_dir,
                                      "seed_qa,seed_choice", out / "completions", out),
        "chat": _start_lm_eval("local-chat-completions", f"{url}/v1/chat/completions", model_dir,
                               "seed_qa", out / "chat", out, "--apply_chat_template"),
    }
    for name, proc in jobs.items():
        output, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"lm_eval {name} failed:\n{output[-4000:]}"
    return {name: out / name for name in jobs}


def _start_lm_eval(model: str, base_url: str, model_dir: Path, tasks: str, out: Path,
                   home: Path, *extra: str) -> subprocess.Popen:
    args = (f"model=tiny,base_url={base_url},tokenizer_backend=huggingface,"
            f"tokenizer={model_dir},max_length=256,max_retries=1")
    env = {**seed_env(), "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(home / "hf")}
    return subprocess.Popen(
        [sys.executable, "-m", "lm_eval", "run", "--model", model, "--model_args", args,
         "--tasks", tasks, "--include_path", str(TASKS), "--output_path", str(out),
         "--log_samples", *extra],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _results(out: Path) -> dict:
    [path] = out.glob("*/results_*.json")
    return json.loads(path.read_text())["results"]


def _samples(out: Path, task: str) -> list[dict]:
    [path] = out.glob(f"*/samples_{task}_*.jsonl")
    rows = [json.loads(line) for line in path.read_text().splitlines() if line]
    return sorted(rows, key=lambda r: r["doc_id"])


def test_generate_until_through_completions_is_seeds_own_answer(runs, url, model_dir):
    samples = _samples(runs["completions"], "seed_qa")
    assert len(samples) == 6
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    for s in samples:
        context = s["arguments"]["gen_args_0"]["arg_0"]
        direct = httpx.post(url + "/v1/completions", timeout=60, json={
            "model": "tiny", "prompt": tok(context, add_special_tokens=False)["input_ids"],
            "max_tokens": MAX_GEN, "temperature": 0, "stop": [*UNTIL, tok.eos_token]}).json()
        [answer] = s["resps"][0]
        assert answer == direct["choices"][0]["text"]
        assert not any(stop in answer for stop in UNTIL)
    exact = sum(s["filtered_resps"][0] == s["target"] for s in samples) / len(samples)
    assert _results(runs["completions"])["seed_qa"]["exact_match,none"] == exact


def test_generate_until_through_chat_with_the_template_is_seeds_own_answer(runs, url):
    samples = _samples(runs["chat"], "seed_qa")
    assert len(samples) == 6
    for s in samples:
        [messages] = s["arguments"]["gen_args_0"]["arg_0"]
        direct = httpx.post(url + "/v1/chat/completions", timeout=60, json={
            "model": "tiny", "messages": json.loads(messages), "max_tokens": MAX_GEN,
            "temperature": 0, "stop": UNTIL}).json()
        [answer] = s["resps"][0]
        assert answer == direct["choices"][0]["message"]["content"]
    exact = sum(s["filtered_resps"][0] == s["target"] for s in samples) / len(samples)
    assert _results(runs["chat"])["seed_qa"]["exact_match,none"] == exact


def test_multiple_choice_accuracy_is_the_models_own(runs, model_dir):
    """Each choice's log-likelihood as lm-eval scores it (the continuation's tokens after the
    context, trailing spaces moved to the continuation), from the model's logits in process."""
    samples = _samples(runs["completions"], "seed_choice")
    assert len(samples) == 6
    tok = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32).eval()
    acc = acc_norm = 0
    for s in samples:
        doc = s["doc"]
        context = f"Question: {doc['question']}\nAnswer:"
        lls = [_loglikelihood(model, tok, context, " " + choice) for choice in doc["choices"]]
        served = [float(resp[0][0]) for resp in s["resps"]]
        assert served == pytest.approx(lls, abs=1e-3)
        acc += _argmax(lls) == doc["label"]
        norm = [ll / len(choice) for ll, choice in zip(lls, doc["choices"], strict=True)]
        acc_norm += _argmax(norm) == doc["label"]
    results = _results(runs["completions"])["seed_choice"]
    assert results["acc,none"] == acc / len(samples)
    assert results["acc_norm,none"] == acc_norm / len(samples)


def _loglikelihood(model, tok, context: str, continuation: str) -> float:
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    ctx = len(tok(context, add_special_tokens=False)["input_ids"])
    with torch.no_grad():
        logits = model(torch.tensor([whole])).logits[0].float()
    logprobs = torch.log_softmax(logits, dim=-1)
    return sum(logprobs[i - 1, whole[i]].item() for i in range(ctx, len(whole)))


def _argmax(values: list[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)
