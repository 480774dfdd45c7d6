"""The GGUF claim: a quickstart student exported with `seed export gguf` runs in llama.cpp and
gives the same greedy answers as transformers on the held-out prompts, so the same accuracy.

Not in CI: llama.cpp comes from `llama-cpp-python`'s PyPI source distribution, which pip builds
with cmake into a venv of its own (`--venv`, made on first use; 10-30 minutes on 2 shared cores).
Steps: `seed run recipes/quickstart.toml` in `--work` (a rerun skips the finished stages), export
the student as f32 (exact weights, so greedy decoding can agree token for token; `--dtype f16` or
`q8_0` to measure those), then per
held-out prompt: the chat template rendered by transformers, tokenized by `tokenizers` and by
llama.cpp (`special=True`, no bos) and compared first, since tokenization is where mismatches come
from; then greedy decoding from the same prompt ids for `eval.max_new_tokens`, stopping at eos,
in transformers (one prompt at a time, no padding) and in llama.cpp (argmax of its logits). Both
answers are decoded by the same tokenizer and graded by the task's verifier, as `seed eval`
grades.

    HF_HUB_OFFLINE=1 PYTHONPATH=src .venv/bin/python benchmarks/gguf_llama_cpp.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
# The llama.cpp side, run with the benchmark venv's interpreter (which has llama_cpp and numpy,
# not Seed): reads {"gguf", "texts", "ids", "max_tokens", "eos"} on stdin, prints per prompt its
# llama.cpp tokenization of the text, the greedy continuation of the ids, and its first logits.
CHILD = r"""
import json, sys
import numpy as np
from llama_cpp import Llama
job = json.load(sys.stdin)
# logits_all: llama-cpp-python 0.3.36 keeps the last row of a multi-token eval only with it
llm = Llama(job["gguf"], n_ctx=job["n_ctx"], n_threads=2, n_batch=256, verbose=False,
            logits_all=True)
out = []
for text, ids in zip(job["texts"], job["ids"]):
    tokens = llm.tokenize(text.encode(), add_bos=False, special=True)
    llm.reset()
    llm.eval(ids)
    first = [float(x) for x in llm.scores[llm.n_tokens - 1]]
    answer = []
    for _ in range(job["max_tokens"]):
        nxt = int(np.argmax(llm.scores[llm.n_tokens - 1]))
        if nxt == job["eos"]:
            break
        answer.append(nxt)
        llm.eval([nxt])
    out.append({"tokens": tokens, "answer": answer, "first_logits": first})
print(json.dumps(out))
"""


def ensure_venv(venv: Path) -> Path:
    """The venv's python with llama_cpp importable; builds llama-cpp-python from source once."""
    python = venv / "bin" / "python"
    if python.exists() and subprocess.run([python, "-c", "import llama_cpp"],
                                          capture_output=True).returncode == 0:
        return python
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    print(f"building {LLAMA_CPP_PYTHON} from its source distribution into {venv} (minutes)",
          flush=True)
    env = {**os.environ, "CMAKE_BUILD_PARALLEL_LEVEL": "2",
           "CMAKE_ARGS": "-DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF "
                         "-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DGGML_OPENMP=OFF"}
    subprocess.run([python, "-m", "pip", "install", "--quiet", "--no-binary", "llama-cpp-python",
                    LLAMA_CPP_PYTHON, "numpy"], env=env, check=True)
    return python


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--recipe", type=Path, default=ROOT / "recipes" / "quickstart.toml")
    parser.add_argument("--work", type=Path, default=Path("/tmp/seed-gguf-bench/work"),
                        help="where the quickstart runs (reused: finished stages are skipped)")
    parser.add_argument("--venv", type=Path, default=Path("/tmp/seed-gguf-bench/venv"))
    parser.add_argument("--max-prompts", type=int, default=None)
    parser.add_argument("--dtype", default="f32", help="f32 (exact weights), f16 or q8_0")
    args = parser.parse_args()
    python = ensure_venv(args.venv)

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": str(ROOT / "src")}
    args.work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "seed", "run", str(args.recipe.resolve())],
                   cwd=args.work, env=env, check=True)
    run_dir = next((args.work / "runs").iterdir())
    run_s = time.perf_counter() - t0
    gguf = run_dir / "train" / f"student-{args.dtype}.gguf"
    subprocess.run([sys.executable, "-m", "seed", "export", "gguf", str(run_dir), "--dtype",
                    args.dtype, "--out", str(gguf)], env=env, check=True)

    import torch
    from gguf import GGUFReader
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from seed.endpoints.tasks import score
    from seed.recipe import load_recipe
    from seed.records import read_records

    recipe, _ = load_recipe(args.recipe)
    max_tokens = recipe.eval.max_new_tokens
    model_dir = run_dir / "train" / "model"
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    records = list(read_records(run_dir / "data" / "eval.jsonl"))[:args.max_prompts]
    prompts = [[m for m in r.chat() if m["role"] != "assistant"] for r in records]
    texts = [tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
             for p in prompts]
    ids = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]

    t1 = time.perf_counter()
    hf_answers, hf_first = [], []
    with torch.inference_mode():
        for prompt in ids:
            x = torch.tensor([prompt])
            hf_first.append(model(input_ids=x).logits[0, -1].float())
            gen = model.generate(input_ids=x, attention_mask=torch.ones_like(x),
                                 max_new_tokens=max_tokens, do_sample=False, temperature=None,
                                 top_p=None, top_k=None, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)[0, len(prompt):].tolist()
            eos = tok.eos_token_id
            hf_answers.append(gen[:gen.index(eos)] if eos in gen else gen)
    hf_s = time.perf_counter() - t1

    job = {"gguf": str(gguf), "texts": texts, "ids": ids, "max_tokens": max_tokens,
           "eos": tok.eos_token_id, "n_ctx": model.config.max_position_embeddings}
    t2 = time.perf_counter()
    child = subprocess.run([python, "-c", CHILD], input=json.dumps(job), capture_output=True,
                           text=True, check=True)
    cpp_s = time.perf_counter() - t2
    cpp = json.loads(child.stdout)

    same_tokens = sum(c["tokens"] == i for c, i in zip(cpp, ids, strict=True))
    for c, i, t in zip(cpp, ids, texts, strict=True):
        if c["tokens"] != i:
            print(f"tokenization differs on {t!r}: tokenizers {i} llama.cpp {c['tokens']}")
            break
    same = sum(c["answer"] == h for c, h in zip(cpp, hf_answers, strict=True))
    logit_gap = max(float((torch.tensor(c["first_logits"]) - h).abs().max())
                    for c, h in zip(cpp, hf_first, strict=True))

    def accuracy(answers: list[list[int]]) -> float:
        texts = [tok.decode(a, skip_special_tokens=True).strip() for a in answers]
        return sum(score(r, a) == 1.0 for r, a in zip(records, texts, strict=True)) / len(records)

    acc_hf, acc_cpp = accuracy(hf_answers), accuracy([c["answer"] for c in cpp])
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    n = len(records)
    pre = GGUFReader(gguf).fields["tokenizer.ggml.pre"].contents()
    load = os.getloadavg()[0]
    print(f"student {model_dir} ({sum(p.numel() for p in model.parameters()):,} params), "
          f"GGUF {gguf.stat().st_size / 2**20:.2f} MiB {args.dtype}, tokenizer pre {pre}; "
          f"quickstart run {run_s:.0f}s")
    print(f"tokenization: llama.cpp = tokenizers on {same_tokens}/{n} held-out prompts")
    print(f"greedy answers ({max_tokens} tokens): same on {same}/{n} ({same / n:.1%}); "
          f"first-token logits differ by at most {logit_gap:.2e}")
    print(f"held-out accuracy: transformers {acc_hf:.1%}, llama.cpp {acc_cpp:.1%} "
          f"(seed eval, batched: {results['accuracy']:.1%}); "
          f"decode {hf_s:.1f}s transformers vs {cpp_s:.1f}s llama.cpp (load included); "
          f"load average {load:.1f}")
    print(f"RESULT gguf_same_answers={same / n:.3f} gguf_same_tokens={same_tokens / n:.3f} "
          f"acc_transformers={acc_hf:.3f} acc_llama_cpp={acc_cpp:.3f} "
          f"acc_seed_eval={results['accuracy']:.3f} max_logit_gap={logit_gap:.2e} n={n} "
          f"dtype={args.dtype} "
          f"load={load:.1f}")


if __name__ == "__main__":
    main()
