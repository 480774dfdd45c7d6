"""Chunked vs plain SFT cross-entropy: peak memory (RSS) and step time on one tiny Llama, CPU.

Each variant runs in its own process (peak RSS is per process): a 2-layer, d=128 Llama with a
32k vocabulary (where the logits dominate memory), 8 rows x 512 tokens, forward + backward of the
SFT loss, 3 steps after one warm-up. Prints both and the ratios, then
`RESULT rss_ratio=R time_ratio=T` (chunked / plain; below 1 is better).
Run: PYTHONPATH=src .venv/bin/python benchmarks/chunked_loss.py
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time


def _run(chunk: int) -> dict[str, float]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from seed.train.losses import chunked_sft_loss, sft_loss

    torch.set_num_threads(2)
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32000, hidden_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, intermediate_size=256,
                                         max_position_embeddings=512))
    ids = torch.randint(0, 32000, (8, 512))
    mask = torch.ones_like(ids)
    times = []
    for i in range(4):
        t0 = time.perf_counter()
        if chunk:
            out = model(input_ids=ids, output_hidden_states=True,
                        logits_to_keep=torch.zeros(0).long())
            loss, _ = chunked_sft_loss(out.hidden_states[-1], model.get_output_embeddings(),
                                       ids, mask, chunk)
        else:
            loss, _ = sft_loss(model(input_ids=ids).logits, ids, mask)
        loss.backward()
        model.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t0)
    return {"rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "step_s": sum(times) / len(times), "loss": float(loss)}


def main() -> None:
    results = {}
    for name, chunk in (("plain", 0), ("chunked", 1024)):
        out = subprocess.run([sys.executable, __file__, str(chunk)], capture_output=True,
                             text=True, check=True).stdout
        results[name] = json.loads(out.strip().splitlines()[-1])
        print(name, results[name])
    rss = results["chunked"]["rss_mib"] / results["plain"]["rss_mib"]
    t = results["chunked"]["step_s"] / results["plain"]["step_s"]
    print(f"RESULT rss_ratio={rss:.3f} time_ratio={t:.3f}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        print(json.dumps(_run(int(sys.argv[1]))))
    else:
        main()
