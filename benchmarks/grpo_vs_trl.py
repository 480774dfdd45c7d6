"""GRPO speed and reward: Seed's `train.mode = "grpo"` against TRL's `GRPOTrainer`, same setup.

Both sides start from the same model directory (a `nano` SFT student of the quickstart's size,
digits tokenizer, trained here by `seed train` on reasoning-gym's basic_arithmetic with "+" and
"-", where SFT alone stops short), train on the same prompts (that run's training records), with
the same reward (`exact_match` below: 1 when the task's own scorer gives the reply full marks, else
0), the same group size, prompts per step, completion tokens, temperature, top-p, learning rate
(constant, no warmup), AdamW betas, weight decay, gradient clip, clip range, KL beta (0: no
reference model on either side), loss normalisation (DAPO's token mean, TRL's default: Seed
takes it over the groups whose rewards differ, TRL over all) and number of steps, one optimizer
step per rollout batch, float32 on one CPU thread each.

- seed: `python -m seed train PROMPTS --recipe grpo.toml` (the full product: terms gate, records,
  checkpoints, metrics.jsonl); rollouts by Seed's serving engine in process.
- trl: `GRPOTrainer` with its default generation (`model.generate`, no vLLM), in its own venv
  (default /tmp/seed-bench-trl-venv, created with pip if missing: trl==1.16.0 with the torch,
  transformers, accelerate, datasets and reasoning-gym versions Seed pins), so it never touches
  Seed's environment. This script runs itself there with `--trl-side`.

Speed is steps / the seconds the steps took (Seed: metrics.jsonl's `elapsed_s`, the sum of its step
times; TRL: the sum of on_step_begin -> on_step_end, which holds generation, scoring, the loss and
the optimizer step); neither side's start-up or logging counts. The reward's own start-up
(reasoning-gym's import, 1-2 s) happens when this module is imported, before either side's first
step, so it lands in neither side's step time. Process wall times, and each
side's median rollout (generation + reward) and update seconds, are printed too.
Reward after N steps is each final model's exact-match reward on the same held-out prompts, graded
by `seed eval` (greedy), averaged over the seeds; the reward during the last steps of training
(sampled) is printed beside it. "Within noise": the difference of the two sides' mean held-out
rewards lies inside its 95% interval under the seed-to-seed spread (Welch: |diff| <= 1.96 x
sqrt(sd_seed^2 / n + sd_trl^2 / n)), each side's variance at least the binomial one of its mean
over the held-out prompts (seeds that happen to agree closely prove nothing finer). Seeds run
ABBA (Seed first, then TRL first) on a shared machine.

Run: `.venv/bin/python benchmarks/grpo_vs_trl.py [--steps 60] [--seeds 0 1 2 3]`
Ends with `RESULT vs_trl_grpo=R reward_seed=S reward_trl=T` (R: Seed's steps/s over TRL's).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import statistics
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TRL_VENV = Path("/tmp/seed-bench-trl-venv")
TRL_PINS = ["trl==1.16.0", "torch==2.13.0", "transformers==5.23.0", "accelerate==1.15.0",
            "datasets==5.2.0", "reasoning_gym==0.1.25"]

GENERATE = """[generate]
num_records = 20000
eval_prompts = 200

[generate.teacher]
kind = "tasks"

[[generate.teacher.tasks]]
name = "basic_arithmetic"

[generate.teacher.tasks.config]
min_terms = 2
max_terms = 2
min_digits = 2
max_digits = 2
operators = ["+", "-"]
allow_parentheses = false
allow_negation = false
"""

SFT_RECIPE = f"""name = "grpo-vs-trl-sft"
seed = 1234

{GENERATE}
[train]
epochs = 6.0
seq_len = 128
batch_size = 8
lr = 3e-3
warmup_steps = 100
threads = 1

[train.student]
size = "nano"

[train.tokenizer]
kind = "digits"

[eval]
max_new_tokens = 8
"""


# ---- the reward both sides call -------------------------------------------------------------

def exact_match(completion: str, entry: dict[str, Any], task: str,
                config: dict[str, Any]) -> float:
    """1.0 when reasoning-gym's scorer for `task` gives `completion` full marks on `entry`."""
    return 1.0 if scorer(task, config).score_answer(completion, entry) == 1.0 else 0.0


def scorer(task: str, config: dict[str, Any]) -> Any:
    """reasoning-gym's dataset for `task` and `config`, built once (it holds the scorer)."""
    import reasoning_gym

    key = (task, json.dumps(config, sort_keys=True))
    if key not in _scorers:
        _scorers[key] = reasoning_gym.create_dataset(task, size=1, seed=0, **config)
    return _scorers[key]


_scorers: dict[tuple[str, str], Any] = {}
# The reward's one-time start-up, reasoning-gym's import (1-2 s) and the scorer, happens when the
# reward is loaded, on both sides (Seed imports this module before its first step, TRL's side
# runs it): start-up, which neither side's step time counts, not a step.
_TASK = tomllib.loads(GENERATE)["generate"]["teacher"]["tasks"][0]
scorer(_TASK["name"], _TASK["config"])


def seed_reward(record: Any, text: str) -> float:
    """`train.grpo.reward = "grpo_vs_trl:seed_reward"`: Seed calls it with (record, completion)."""
    source = record.provenance.source
    return exact_match(text, record.meta["entry"], source.name, source.config)


def trl_reward(prompts: list[Any], completions: list[Any], entry: list[str], task: list[str],
               config: list[str], **_: Any) -> list[float]:
    """TRL's reward-function shape: lists over the batch, dataset columns as keyword lists."""
    return [exact_match(c[0]["content"] if isinstance(c, list) else c, json.loads(e), t,
                        json.loads(k))
            for c, e, t, k in zip(completions, entry, task, config, strict=True)]


# ---- the shared setup -----------------------------------------------------------------------

def env(extra_path: str | None = None) -> dict[str, str]:
    out = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
           "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    out.pop("PYTHONPATH", None)
    if extra_path:
        out["PYTHONPATH"] = extra_path
    return out


def seed_cli(*args: str, log: Path) -> float:
    """Run `python -m seed ARGS` with Seed's interpreter; its wall seconds. Output goes to `log`."""
    start = time.perf_counter()
    with log.open("w") as f:
        done = subprocess.run([sys.executable, "-m", "seed", *args], cwd=ROOT, stdout=f,
                              stderr=subprocess.STDOUT,
                              env=env(f"{ROOT / 'src'}:{ROOT / 'benchmarks'}"))
    if done.returncode:
        raise RuntimeError(f"seed {args[0]} failed; see {log}:\n{log.read_text()[-2000:]}")
    return time.perf_counter() - start


def start_model(work: Path) -> tuple[Path, Path, Path]:
    """(the SFT student's model dir, its train records, the held-out prompts), built once."""
    key = hashlib.sha256(SFT_RECIPE.encode()).hexdigest()[:12]
    base = work / f"sft-{key}"
    model = base / "train" / "model"
    if not (model / "model.safetensors").exists():
        base.mkdir(parents=True, exist_ok=True)
        (base / "sft.toml").write_text(SFT_RECIPE)
        seed_cli("generate", str(base / "sft.toml"), "--out", str(base / "data"),
                 log=base / "generate.log")
        seed_cli("train", str(base / "data" / "train.jsonl"), "--recipe", str(base / "sft.toml"),
                 "--out", str(base / "train"), log=base / "train.log")
    return model, base / "data" / "train.jsonl", base / "data" / "eval.jsonl"


def grpo_prompts(train: Path, out: Path, n: int) -> Path:
    """The first `n` training records: the prompts both sides draw from."""
    if not out.exists():
        with train.open() as f:
            out.write_text("".join(line for _, line in zip(range(n), f, strict=False)))
    return out


def held_out_reward(model: Path, eval_records: Path, recipe: Path, out: Path) -> float:
    """The model's exact-match reward on the held-out prompts (greedy), graded by `seed eval`
    (a reply is correct when the task's scorer gives it 1.0: `exact_match`'s rule)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    seed_cli("eval", str(model), str(eval_records), "--recipe", str(recipe), "--out", str(out),
             log=out.with_suffix(".log"))
    return float(json.loads((out / "results.json").read_text())["accuracy"])


def grpo_recipe(model: Path, a: argparse.Namespace) -> str:
    return f"""name = "grpo-vs-trl"

{GENERATE}
[train]
mode = "grpo"
max_steps = {a.steps}
seq_len = 64
batch_size = {a.group * a.prompts_per_step}
lr = {a.lr}
warmup_steps = 0
min_lr_ratio = 1.0
weight_decay = 0.0
grad_clip = 1.0
log_every = 1
checkpoint_every = {a.steps + 1}
threads = 1

[train.student]
checkpoint = "{model}"

[train.grpo]
group = {a.group}
prompts_per_step = {a.prompts_per_step}
max_new_tokens = {a.max_new_tokens}
temperature = {a.temperature}
top_p = 1.0
beta = 0.0
clip = 0.2
reward = "grpo_vs_trl:seed_reward"
scale_rewards = true
normalise = "token"

[eval]
max_new_tokens = {a.max_new_tokens}
"""


# ---- one run of each side -------------------------------------------------------------------

def run_seed(model: Path, prompts: Path, out: Path, seed: int, a: argparse.Namespace
             ) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    recipe = out / "grpo.toml"
    recipe.write_text(grpo_recipe(model, a))
    wall = seed_cli("train", str(prompts), "--recipe", str(recipe), "--out", str(out / "train"),
                    "--seed", str(seed), log=out / "train.log")
    lines = [json.loads(line) for line in (out / "train" / "metrics.jsonl").open()]
    steps = [x for x in lines if "reward" in x]
    if len(steps) != a.steps:
        raise RuntimeError(f"seed logged {len(steps)} GRPO steps, not {a.steps}; see {out}")
    return {"steps_s": steps[-1]["elapsed_s"], "first_s": steps[0]["elapsed_s"], "wall_s": wall,
            "rewards": [x["reward"] for x in steps], "model": out / "train" / "model",
            "rollout_s": statistics.median(x["rollout_s"] for x in steps),
            "update_s": statistics.median(x["update_s"] for x in steps),
            "recipe": recipe}


def run_trl(py: str, model: Path, prompts: Path, out: Path, seed: int, a: argparse.Namespace
            ) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    cmd = [py, str(Path(__file__).resolve()), "--trl-side", "--model", str(model),
           "--prompts", str(prompts), "--out", str(out), "--seed", str(seed),
           *(f"--{k.replace('_', '-')}={getattr(a, k)}"
             for k in ("steps", "group", "prompts_per_step", "max_new_tokens", "temperature",
                       "lr"))]
    start = time.perf_counter()
    with (out / "trl.log").open("w") as f:
        done = subprocess.run(cmd, cwd=out, stdout=f, stderr=subprocess.STDOUT,
                              env={**env(), "HOME": str(out)})
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(f"TRL failed; see {out / 'trl.log'}:\n"
                           f"{(out / 'trl.log').read_text()[-3000:]}")
    res = json.loads((out / "trl_result.json").read_text())
    return {"steps_s": sum(res["step_s"]), "first_s": res["step_s"][0], "wall_s": wall,
            "rewards": res["rewards"], "rollout_s": statistics.median(res["rollout_s"]),
            "update_s": statistics.median(t - r for t, r in zip(res["step_s"], res["rollout_s"],
                                                                 strict=True)),
            "model": out / "model"}


def trl_side(a: argparse.Namespace) -> None:
    """Runs in TRL's venv: GRPOTrainer on the same model, prompts and reward; times each step."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(1)
    rows = []
    for line in Path(a.prompts).read_text().splitlines():
        r = json.loads(line)
        user = [m for m in r["messages"] if m["role"] != "assistant"]
        src = r["provenance"]["source"]
        rows.append({"prompt": user, "entry": json.dumps(r["meta"]["entry"]),
                     "task": src["name"], "config": json.dumps(src["config"])})
    out = Path(a.out)
    config = GRPOConfig(
        output_dir=str(out / "trainer"), seed=a.seed, data_seed=a.seed, max_steps=a.steps,
        per_device_train_batch_size=a.group * a.prompts_per_step, gradient_accumulation_steps=1,
        num_generations=a.group, max_completion_length=a.max_new_tokens,
        temperature=a.temperature, top_p=1.0, top_k=0, learning_rate=a.lr,
        lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, adam_beta1=0.9,
        adam_beta2=0.95, adam_epsilon=1e-8, max_grad_norm=1.0, beta=0.0, epsilon=0.2,
        num_iterations=1, loss_type="dapo", scale_rewards="group", use_cpu=True, bf16=False,
        gradient_checkpointing=False, logging_steps=1, save_strategy="no", report_to="none",
        disable_tqdm=True, dataloader_num_workers=0)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(a.model)

    class StepTimes(TrainerCallback):  # type: ignore[misc]
        def __init__(self) -> None:
            self.times: list[float] = []
            self.begin = 0.0

        def on_step_begin(self, *_: Any, **__: Any) -> None:
            self.begin = time.perf_counter()

        def on_step_end(self, *_: Any, **__: Any) -> None:
            self.times.append(time.perf_counter() - self.begin)

    times = StepTimes()
    trainer = GRPOTrainer(model=model, reward_funcs=trl_reward, args=config,
                          train_dataset=Dataset.from_list(rows), processing_class=tokenizer,
                          callbacks=[times])
    rollout_s: list[float] = []
    generate_and_score = trainer._generate_and_score_completions

    def timed_rollout(*args: Any, **kwargs: Any) -> Any:  # generation, reward and advantages
        start = time.perf_counter()
        out = generate_and_score(*args, **kwargs)
        rollout_s.append(time.perf_counter() - start)
        return out

    trainer._generate_and_score_completions = timed_rollout
    trainer.train()
    trainer.save_model(str(out / "model"))
    rewards = [x["reward"] for x in trainer.state.log_history if "reward" in x]
    (out / "trl_result.json").write_text(json.dumps({"step_s": times.times, "rewards": rewards,
                                                     "rollout_s": rollout_s}))


# ---- the comparison -------------------------------------------------------------------------

def trl_python(given: str | None) -> str:
    if given:
        return given
    py = TRL_VENV / "bin" / "python"
    if not py.exists():
        subprocess.run([sys.executable, "-m", "venv", str(TRL_VENV)], check=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *TRL_PINS], check=True)
    return str(py)


def within_noise(seed: list[float], trl: list[float], n_eval: int) -> tuple[bool, float]:
    """Whether the mean rewards differ by less than their 95% interval; the interval's half-width.

    The spread is the seeds' (Welch), or, where the seeds agree more closely than the held-out
    set can tell, the binomial spread of a mean over `n_eval` prompts."""
    def var_of_mean(xs: list[float]) -> float:
        m = statistics.fmean(xs)
        seeds = statistics.variance(xs) if len(xs) > 1 else 0.0
        return max(seeds, m * (1 - m) / n_eval) / len(xs)

    half = 1.96 * math.sqrt(var_of_mean(seed) + var_of_mean(trl))
    return abs(statistics.fmean(seed) - statistics.fmean(trl)) <= half, half


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trl-side", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--prompts", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--group", type=int, default=8)
    ap.add_argument("--prompts-per-step", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=8)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=3e-5)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--n-prompts", type=int, default=4000, help="training records drawn from")
    ap.add_argument("--work", type=Path, default=Path("/tmp/seed-bench-grpo-vs-trl"))
    ap.add_argument("--trl-python", default=None)
    a = ap.parse_args()
    if a.trl_side:
        trl_side(a)
        return
    py = trl_python(a.trl_python)
    model, train, eval_records = start_model(a.work)
    prompts = grpo_prompts(train, model.parents[1] / f"prompts-{a.n_prompts}.jsonl", a.n_prompts)
    run_dir = a.work / time.strftime("run-%Y%m%d-%H%M%S")
    n_eval = sum(1 for _ in eval_records.open())
    print(f"start: {model} | {a.steps} steps x {a.prompts_per_step} prompts x {a.group} "
          f"completions, {a.max_new_tokens} tokens, T={a.temperature}, lr={a.lr} | "
          f"load {os.getloadavg()[0]:.2f}", flush=True)
    sft_recipe = model.parents[1] / "sft.toml"
    sft = held_out_reward(model, eval_records, sft_recipe, run_dir / "eval-sft")
    print(f"SFT student: held-out reward {sft:.3f}", flush=True)
    results: dict[str, list[dict[str, Any]]] = {"seed": [], "trl": []}
    for i, s in enumerate(a.seeds):
        order = ("seed", "trl") if i % 2 == 0 else ("trl", "seed")
        for side in order:
            out = run_dir / f"{side}-{s}"
            r = (run_seed(model, prompts, out, s, a) if side == "seed"
                 else run_trl(py, model, prompts, out, s, a))
            r["held_out"] = held_out_reward(r["model"], eval_records, sft_recipe,
                                            out / "eval")
            results[side].append(r)
            print(f"seed {s} {side:>4}: {a.steps / r['steps_s']:.2f} steps/s "
                  f"({r['steps_s']:.1f} s in steps, the first {r['first_s']:.2f} s; "
                  f"{r['wall_s']:.1f} s process; median rollout {r['rollout_s']:.3f} s, update "
                  f"{r['update_s']:.3f} s) | train "
                  f"reward first 5 {statistics.fmean(r['rewards'][:5]):.3f} last 5 "
                  f"{statistics.fmean(r['rewards'][-5:]):.3f} | held-out {r['held_out']:.3f} | "
                  f"load {os.getloadavg()[0]:.2f}", flush=True)
    rate = {k: a.steps * len(v) / sum(r["steps_s"] for r in v) for k, v in results.items()}
    steady = {k: (a.steps - 1) * len(v) / sum(r["steps_s"] - r["first_s"] for r in v)
              for k, v in results.items()}
    held = {k: [r["held_out"] for r in v] for k, v in results.items()}
    ok, half = within_noise(held["seed"], held["trl"], n_eval)
    pairs = [t["steps_s"] / s["steps_s"] for s, t in zip(results["seed"], results["trl"],
                                                          strict=True)]
    print(f"steps/s: seed {rate['seed']:.2f}, trl {rate['trl']:.2f} "
          f"({rate['seed'] / rate['trl']:.2f}x; per seed {', '.join(f'{p:.2f}x' for p in pairs)})"
          f"; after the first step: seed {steady['seed']:.2f}, trl {steady['trl']:.2f}, "
          f"{steady['seed'] / steady['trl']:.2f}x | held-out reward: SFT {sft:.3f}, "
          f"seed {statistics.fmean(held['seed']):.3f} {held['seed']}, trl "
          f"{statistics.fmean(held['trl']):.3f} {held['trl']}; difference "
          f"{statistics.fmean(held['seed']) - statistics.fmean(held['trl']):+.3f}, 95% "
          f"half-width {half:.3f}: {'within' if ok else 'NOT within'} noise", flush=True)
    print(f"RESULT vs_trl_grpo={rate['seed'] / rate['trl']:.2f} "
          f"reward_seed={statistics.fmean(held['seed']):.3f} "
          f"reward_trl={statistics.fmean(held['trl']):.3f}")


if __name__ == "__main__":
    main()
