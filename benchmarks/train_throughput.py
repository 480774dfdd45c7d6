"""Seed's trainer vs TRL's SFTTrainer: the same student, data and hyperparameters, in one run.

Data: real chats, the 805 AlpacaEval instructions with GPT-4-Turbo's answers (the reference data in
../shared/data/alpaca_eval), 741 to train on and 64 held out. Student: a ~3M-parameter Llama
(Seed's `small` size) with a 4k BPE tokenizer trained on the training chats, saved once and loaded
by both trainers. Both pack chats into rows of `--seq-len` tokens with position ids restarting per
chat (TRL: `packing=True`, best-fit-decreasing, padding-free), take the loss on assistant tokens
only (TRL: prompt/completion data with `completion_only_loss=True`), and run the same steps,
rows per step, AdamW (betas 0.9/0.95, weight decay 0.1), warmup + cosine to zero, clipping at 1.0.

tokens/s counts real (non-padding) tokens over the training loop's own time (Seed: the summed step
times; TRL: `train_runtime`), summed over two runs of each in the order Seed, TRL, TRL, Seed, so a
steady drift in the shared machine's load does not favour either. The final loss of each is
measured here, the same way for both: mean cross-entropy per assistant token on the 64 held-out
chats. TRL runs in a subprocess with the
packages in `--trl-path` (installed there with `pip install --target`, so Seed's pinned venv never
depends on TRL). On a CUDA machine the same script is meant for ~125M / ~1B configs in bf16 at
2048 tokens (`--size`), with MFU; those figures are not measured yet.

    HF_HUB_OFFLINE=1 PYTHONPATH=src .venv/bin/python benchmarks/train_throughput.py
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "alpaca_eval" / "annotations" / "gpt4_1106_preview.json.gz"


def chats() -> list[list[dict[str, str]]]:
    with gzip.open(DATA) as f:
        items = json.load(f)
    return [[{"role": "user", "content": it["instruction"]},
             {"role": "assistant", "content": it["output_1"]}] for it in items]


def hyper(args: argparse.Namespace) -> dict:
    return {"seq_len": args.seq_len, "batch_size": args.batch_size, "grad_accum": 1,
            "max_steps": args.steps, "lr": args.lr, "warmup_steps": args.warmup,
            "min_lr_ratio": 0.0, "weight_decay": 0.1, "grad_clip": 1.0,
            "checkpoint_every": 10**6, "log_every": 1, "threads": args.threads}


def run_trl(args: argparse.Namespace) -> None:
    """The TRL side, in its own process: train, then write tokens, seconds and losses as JSON."""
    import torch
    from datasets import Dataset, disable_progress_bars
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    disable_progress_bars()
    work = Path(args.work)
    h = hyper(args)
    torch.set_num_threads(h["threads"])
    train = json.loads((work / "train_chats.json").read_text())
    data = Dataset.from_list([{"prompt": c[:-1], "completion": c[-1:]} for c in train])
    tok = AutoTokenizer.from_pretrained(work / "initial")
    model = AutoModelForCausalLM.from_pretrained(work / "initial")
    config = SFTConfig(
        output_dir=str(work / f"trl{args.run}"), max_length=h["seq_len"], packing=True,
        completion_only_loss=True, per_device_train_batch_size=h["batch_size"],
        gradient_accumulation_steps=1, max_steps=h["max_steps"], learning_rate=h["lr"],
        lr_scheduler_type="cosine", warmup_steps=h["warmup_steps"], weight_decay=0.1,
        adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, max_grad_norm=1.0, logging_steps=1,
        save_strategy="no", report_to=[], use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0, seed=0, bf16=False, disable_tqdm=True)
    trainer = SFTTrainer(model=model, args=config, train_dataset=data, processing_class=tok)
    out = trainer.train()
    logs = [r for r in trainer.state.log_history if "loss" in r]
    tokens = int(trainer.state.num_input_tokens_seen) or int(logs[-1].get("num_tokens", 0))
    trainer.save_model(str(work / f"trl{args.run}" / "model"))
    tok.save_pretrained(work / f"trl{args.run}" / "model")
    (work / f"trl{args.run}.json").write_text(json.dumps({
        "seconds": out.metrics["train_runtime"], "tokens": tokens,
        "losses": [r["loss"] for r in logs]}))


def held_out_loss(model_dir: Path, held: list[list[dict[str, str]]], seq_len: int) -> float:
    """Mean cross-entropy per assistant token on the held-out chats, one chat per row."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from seed.train.data import render
    from seed.train.losses import sft_loss

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for ex in render(tok, held):
            ids = torch.tensor([ex.ids[:seq_len]])
            loss, n = sft_loss(model(input_ids=ids).logits, ids, torch.tensor([ex.mask[:seq_len]]))
            total, count = total + float(loss), count + n
    return total / count


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=6)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", default="small")
    p.add_argument("--work", default=str(ROOT / "runs" / "bench_train_throughput"))
    p.add_argument("--trl-path", default=str(ROOT / ".venv-trl"))
    p.add_argument("--trl-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--run", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.trl_worker:
        run_trl(args)
        return
    if not DATA.is_file():
        sys.exit(f"{DATA}: the reference data is missing; see ../shared/data/README.md")
    if not (Path(args.trl_path) / "trl").is_dir():
        sys.exit(f"{args.trl_path}: TRL is not installed there; run: .venv/bin/pip install "
                 f"--no-deps --target {args.trl_path} trl==1.16.0 datasets==5.2.0 dill==0.4.1 "
                 "multiprocess==0.70.19 pandas==3.1.1 pyarrow==26.0.1 xxhash==4.1.0")

    import shutil

    import torch
    from rich.console import Console

    from seed.recipe import TrainConfig
    from seed.records import Record, write_records
    from seed.train import train_student
    from seed.train.models import build_student, count_params, student_config
    from seed.train.tokenizer import train_tokenizer

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    all_chats = chats()
    train, held = all_chats[:-64], all_chats[-64:]
    (work / "train_chats.json").write_text(json.dumps(train))
    write_records(work / "train.jsonl", [Record.new(c) for c in train])
    tok = train_tokenizer((m["content"] for c in train for m in c), "bpe", 4096)
    model = build_student(student_config(args.size, len(tok), args.seq_len, tok.pad_token_id,
                                         tok.eos_token_id), seed=0)
    model.save_pretrained(work / "initial")
    tok.save_pretrained(work / "initial")
    params = count_params(model)

    h = hyper(args)
    config = TrainConfig.model_validate({**h, "student": {"checkpoint": str(work / "initial")}})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([args.trl_path, str(ROOT / "src")]),
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}

    def run_seed(i: int) -> dict:
        return train_student(work / "train.jsonl", work / f"seed{i}", config, seed=0,
                             console=Console(quiet=True))

    def run_trl_subprocess(i: int) -> dict:
        cmd = [sys.executable, __file__, "--trl-worker", "--work", str(work), f"--run={i}",
               *[f"--{k}={v}" for k, v in (("steps", args.steps), ("seq-len", args.seq_len),
                                           ("batch-size", args.batch_size), ("lr", args.lr),
                                           ("warmup", args.warmup), ("threads", args.threads))]]
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        return json.loads((work / f"trl{i}.json").read_text())

    # A B B A: the shared machine's load drifts, and this order cancels a steady drift.
    runs = {"seed": [], "trl": []}
    for side, i in (("seed", 0), ("trl", 0), ("trl", 1), ("seed", 1)):
        runs[side].append(run_seed(i) if side == "seed" else run_trl_subprocess(i))
    seed = {"tokens": sum(r["tokens"] for r in runs["seed"]),
            "seconds": sum(r["seconds"] for r in runs["seed"]),
            "final_loss": runs["seed"][0]["final_loss"]}
    trl = {"tokens": sum(r["tokens"] for r in runs["trl"]),
           "seconds": sum(r["seconds"] for r in runs["trl"]),
           "losses": runs["trl"][0]["losses"]}
    for side in ("seed", "trl"):
        print(side, "runs:", ", ".join(f"{r['tokens'] / r['seconds']:.0f} tok/s"
                                        for r in runs[side]))

    seed_tps = seed["tokens"] / seed["seconds"]
    trl_tps = trl["tokens"] / trl["seconds"]
    seed_loss = held_out_loss(work / "seed0" / "model", held, args.seq_len)
    trl_loss = held_out_loss(work / "trl0" / "model", held, args.seq_len)
    delta = 100 * (seed_loss - trl_loss) / trl_loss
    print(f"student: {params:,} parameters ({args.size}), vocabulary {len(tok)}, "
          f"{len(train)} training chats, {args.steps} steps of {args.batch_size} x "
          f"{args.seq_len} tokens, {torch.get_num_threads()} threads")
    print(f"{'':8}{'tokens':>10}{'loop s':>9}{'tok/s':>9}{'held-out loss':>15}  (2 runs each)")
    print(f"{'seed':8}{seed['tokens']:>10}{seed['seconds']:>9.1f}{seed_tps:>9.0f}"
          f"{seed_loss:>15.4f}")
    print(f"{'trl':8}{trl['tokens']:>10}{trl['seconds']:>9.1f}{trl_tps:>9.0f}{trl_loss:>15.4f}")
    print(f"last train loss: seed {seed['final_loss']:.4f}, trl {trl['losses'][-1]:.4f}")
    if not torch.cuda.is_available():
        print("GPU (125M / 1B, bf16, seq 2048, MFU): not measured, no CUDA device here")
    print(f"RESULT vs_trl_cpu={seed_tps / trl_tps:.2f} loss_delta_pct={delta:.2f}")


if __name__ == "__main__":
    main()
