"""The training loop: one plain PyTorch loop for every mode, device and number of processes.

`train_student` reads top to bottom as its steps: open the run, read and split the records, load or
build the student, build the mode's data layout, prepare and wrap the model, make the optimizer,
resume, train (step, evaluate, log, checkpoint), finish. A mode (sft, kd, online_kd, dpo, grpo) is a
data layout and a loss (modes.py; grpo's layout also rolls each batch out from the current
weights); where the loop runs (device, processes, precision) is decided once in runtime.py and
logged. The optimizer is AdamW with warmup + cosine decay; gradients accumulate
weighted by the global batch's trainable tokens (or pairs), so any micro-batching or number of
processes gives the gradient of the whole batch; gradients are clipped.

Several processes (`torchrun` or `accelerate launch`) run DDP or FSDP2: every rank builds the same
global batch from the seed and takes its share of the rows. Only rank 0 writes files. Every
`checkpoint_every` steps a checkpoint holds model, optimizer, scheduler, RNG and counters; the data
position is the step (the data order is a pure function of the seed), so a rerun after a kill
continues the same run and ends with the same weights. This module knows nothing about where
records came from or how models are graded.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from seed.errors import UserError
from seed.files import write_json_atomic
from seed.recipe import TrainConfig
from seed.records import Record, read_records
from seed.train import checkpoints
from seed.train.data import corpus_texts
from seed.train.layout import Layout, ModeInputs, Rows, StudentKind, num_rows
from seed.train.limits import check_fits
from seed.train.lora import add_lora, merge_lora, quantized_load_kwargs, save_adapter
from seed.train.models import (
    build_student,
    count_params,
    load_student,
    student_config,
    student_shape,
)
from seed.train.modes import build_layout
from seed.train.optim import make_optimizer
from seed.train.runtime import Runtime
from seed.train.sharding import full_state, load_full_state, shard
from seed.train.speed import flops_per_token, mfu, peak_flops
from seed.train.tokenizer import load_saved_tokenizer, train_tokenizer
from seed.train.trackers import Report, Trackers, check_installed, start_trackers

if TYPE_CHECKING:  # the image student's modules import diffusers (~2 s): only when it trains
    from seed.train.diffusion import Ema

Scheduler = torch.optim.lr_scheduler.LambdaLR
EMA = "ema."  # the prefix of the EMA's weights in a checkpoint's weights file
log = logging.getLogger(__name__)


@dataclass
class Counters:
    """How far the run is: optimizer steps, tokens seen, seconds spent in steps (resumed too)."""

    step: int = 0
    tokens: int = 0
    elapsed_s: float = 0.0


def train_student(records: Path, out_dir: Path, config: TrainConfig, seed: int,
                  console: Console | None = None, report: Report | None = None
                  ) -> dict[str, Any]:
    """Train a student on `records` into `out_dir`; resume if a checkpoint is there.

    Writes initial/ (untrained), model/ (final), adapter/ (LoRA), checkpoints/, metrics.jsonl and
    summary.json, and returns the summary (steps, tokens, seconds, final_loss, params, ...).
    `train.report_to`'s trackers get the same lines, under `report`'s run name and config.
    """
    records, out_dir, console = Path(records), Path(out_dir), console or Console()
    runtime = Runtime.start(config)
    student = student_kind(config)
    student.check(config, runtime)
    check_installed(config.report_to)
    finished = open_run(records, out_dir, config, seed, runtime, student)
    if finished is not None:
        return finished
    torch.manual_seed(seed)
    train_records, held_records = split_records(records, config.eval_fraction, seed,
                                                student.read)
    model, tokenizer = student.initial(out_dir, train_records, config, seed, runtime)
    inputs = ModeInputs(train_records, str(records), tokenizer, model, config, seed, runtime)
    layout = build_layout(inputs)
    held = build_layout(replace(inputs, records=held_records)) if held_records else None
    layout.notes.update(inputs.notes)  # records left out (long traces), for the summary
    model = prepare_model(model, config, runtime)
    rows_per_step = layout.step_rows or config.batch_size * config.grad_accum * runtime.world
    total_steps = config.max_steps or max(
        1, math.ceil(config.epochs * layout.rows_per_epoch / rows_per_step))
    optimizer, scheduler = make_optimizer(model, config, total_steps)
    ema = start_ema(model, student.ema_decay(config), runtime)
    counters = resume(out_dir, model, optimizer, scheduler, ema, config, runtime, console)
    if runtime.is_main:
        console.print(describe_start(model, tokenizer, layout, config, total_steps, runtime))
    trained = wrap_model(model, config, runtime)
    batches = layout.steps(counters.step * rows_per_step, rows_per_step)
    trackers = start_trackers(config, out_dir, report) if runtime.is_main else None
    try:
        loss, eval_loss = train_steps(trained, model, layout, held, batches, optimizer,
                                      scheduler, ema, counters, total_steps, out_dir, tokenizer,
                                      student, config, runtime, console, trackers)
        summary = finish(out_dir, model, optimizer, ema, tokenizer, counters, loss, eval_loss,
                         layout, student, config, runtime)
        if trackers:
            trackers.log_summary({"train": summary})
    finally:
        if trackers:
            trackers.finish()
    return summary


def text_student() -> StudentKind:
    """A causal LM and its tokenizer (modes sft, kd, online_kd, dpo)."""
    return StudentKind(
        check=lambda config, runtime: check_fits(config, student_shape(config.student), runtime),
        read=lambda path: list(read_records(path)), initial=load_or_build_student,
        save=lambda path, model, tokenizer, config: checkpoints.save_model(path, model, tokenizer),
        saved=lambda path: (path / "config.json").is_file(), units=real_tokens,
        flops=lambda model, config: flops_per_token(model, config.seq_len))


def student_kind(config: TrainConfig) -> StudentKind:
    """What `train.mode` trains: a text-to-image pipeline for diffusion, else a causal LM."""
    if config.mode != "diffusion":
        return text_student()
    from seed.train.diffusion import image_student

    return image_student()


def start_ema(model: torch.nn.Module, decay: float, runtime: Runtime) -> Ema | None:
    """The moving average of the weights the student ships, when its kind keeps one."""
    if not decay:
        return None
    if runtime.sharded:
        raise UserError("train.distributed = 'fsdp' keeps no EMA of sharded weights; use 'ddp' "
                        "or set train.diffusion.ema_decay = 0")
    from seed.train.diffusion import Ema

    return Ema(model, decay)


def open_run(records: Path, out_dir: Path, config: TrainConfig, seed: int,
             runtime: Runtime, student: StudentKind) -> dict[str, Any] | None:
    """Clear outputs of other inputs; the summary if this run already finished, else None."""
    if runtime.is_main:
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise UserError(f"{out_dir}: cannot be made ({e.strerror}); give a directory you "
                            "can write to") from None
        checkpoints.start_fresh_if_changed(out_dir, checkpoints.fingerprint(records, config, seed))
    runtime.barrier()
    summary = out_dir / "summary.json"
    if student.saved(out_dir / "model") and summary.is_file():
        done: dict[str, Any] = json.loads(summary.read_text())
        return done
    return None


def split_records(records: Path, fraction: float, seed: int,
                  read: Callable[[Path], list[Any]] = lambda path: list(read_records(path))
                  ) -> tuple[list[Any], list[Any]]:
    """(train, held out): a seeded random `fraction` of the records, at least one, held out."""
    every = read(records)
    if not every:
        raise UserError(f"{records}: no records to train on; generate some first")
    if fraction == 0:
        return every, []
    order = torch.randperm(len(every), generator=torch.Generator().manual_seed(seed)).tolist()
    n = max(1, round(fraction * len(every)))
    if n >= len(every):
        raise UserError(f"train.eval_fraction = {fraction} leaves no record to train on; lower it")
    held = set(order[:n])
    return ([r for i, r in enumerate(every) if i not in held],
            [r for i, r in enumerate(every) if i in held])


def load_or_build_student(out_dir: Path, records: list[Record], config: TrainConfig, seed: int,
                          runtime: Runtime) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The starting student, saved once to out_dir/initial (the baseline, and DPO's reference).

    A checkpoint given in the recipe is loaded; otherwise a tokenizer is trained on the records
    and a student of `train.student.size` is built from the seed. Every rank then loads initial/,
    so all start from the same weights whether the run is new or resumed.
    """
    initial = out_dir / "initial"
    if not (initial / "config.json").is_file():
        if config.student.checkpoint:
            model = load_student(config.student.checkpoint, "train.student.checkpoint")
            tokenizer = load_saved_tokenizer(config.student.checkpoint,
                                             config.student.chat_template,
                                             "train.student.checkpoint")
        else:
            texts = (text for r in records for text in corpus_texts(r.chat(), r.tools))
            tokenizer = train_tokenizer(texts, config.tokenizer.kind, config.tokenizer.vocab_size)
            model = build_student(student_config(config.student.size, len(tokenizer),
                                                 config.seq_len, tokenizer.pad_token_id,
                                                 tokenizer.eos_token_id), seed)
        if runtime.is_main:
            checkpoints.save_model(initial, model, tokenizer)
    runtime.barrier()
    rebuild = f"delete {initial} and run again to rebuild it"
    tokenizer = load_saved_tokenizer(initial)
    model = load_student(initial, fix=rebuild,
                         **(quantized_load_kwargs(config.lora) if config.lora else {}))
    return model, tokenizer


def prepare_model(model: PreTrainedModel, config: TrainConfig,
                  runtime: Runtime) -> PreTrainedModel:
    """Adapters, activation checkpointing, the device, and sharding, as the recipe asks."""
    if config.lora:
        if runtime.sharded:
            raise UserError("train.distributed = 'fsdp' does not train LoRA adapters; use "
                            "'ddp' (the adapters are small) or drop [train.lora]")
        model = add_lora(model, config.lora)
    if config.grad_checkpointing:
        model.activation_checkpointing_enable()
        model.enable_input_require_grads()
    model = runtime.place(model)
    if runtime.sharded:
        shard(model)  # before the optimizer, which must see the sharded parameters
    return model


def resume(out_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
           scheduler: Scheduler, ema: Ema | None, config: TrainConfig,
           runtime: Runtime, console: Console) -> Counters:
    """Load the newest checkpoint that loads into model, optimizer, schedule and RNG; its counters.

    One that does not load is reported in one warning line and set aside as `step-N.corrupt`, and
    the one before it is tried; when none loads the run starts from step 0 (the set-aside ones are
    kept). Every rank reads the same files, so all pick the same checkpoint.
    """
    expected = {k: v.shape for k, v in trainable_state(model, config.lora is not None).items()}
    if ema is not None:
        expected.update({EMA + k: v.shape for k, v in ema.shadow.items()})
    counters, bad, resumed = Counters(), [], None
    for path in reversed(checkpoints.checkpoints(out_dir)):
        try:
            checkpoint = checkpoints.load_checkpoint(path, runtime.device, expected)
        except checkpoints.BadCheckpoint as e:
            bad.append((path, str(e)))
            continue
        if ema is not None:
            ema.load_state_dict({"decay": ema.decay, "updates": checkpoint.step, "shadow": {
                k[len(EMA):]: checkpoint.model.pop(k) for k in list(checkpoint.model)
                if k.startswith(EMA)}})
        load_state(checkpoint, model, optimizer, scheduler, config, runtime)
        counters, resumed = Counters(**checkpoint.counters), path
        break
    runtime.barrier()  # every rank has read the checkpoints before any is renamed
    if runtime.is_main:
        for path, why in bad:
            kept = checkpoints.set_aside(path)
            log.warning("checkpoint %s does not load (%s); kept as %s", path, why, kept.name)
        if resumed is not None:
            console.print(f"resuming from step {counters.step} ({resumed.name})")
        elif bad:
            log.warning("no checkpoint in %s loads; training starts from step 0",
                        out_dir / "checkpoints")
        checkpoints.keep_metrics_until(out_dir / "metrics.jsonl", counters.step)
    return counters


def load_state(checkpoint: checkpoints.Checkpoint, model: torch.nn.Module,
               optimizer: torch.optim.Optimizer, scheduler: Scheduler, config: TrainConfig,
               runtime: Runtime) -> None:
    """Put a checkpoint's weights, optimizer state, schedule and RNG in place."""
    if runtime.sharded:
        load_full_state(model, optimizer, checkpoint.model, checkpoint.optimizer)
    else:
        model.load_state_dict(checkpoint.model, strict=not config.lora)
        optimizer.load_state_dict(checkpoint.optimizer)
    scheduler.load_state_dict(checkpoint.scheduler)
    torch.set_rng_state(checkpoint.rng)


def wrap_model(model: torch.nn.Module, config: TrainConfig, runtime: Runtime) -> torch.nn.Module:
    """What the steps call: DDP replicas over several processes (FSDP is already in place), and
    torch.compile when asked for."""
    wrapped = model
    if runtime.world > 1 and not runtime.sharded:
        dev = runtime.device
        wrapped = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if config.compile:
        # torch.compile is typed as returning a callable; given a module it returns a module.
        wrapped = torch.compile(wrapped, dynamic=False)  # type: ignore[assignment]
    wrapped.train()
    return wrapped


def describe_start(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, layout: Layout,
                   config: TrainConfig, total_steps: int, runtime: Runtime) -> str:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return (f"student: {count_params(model):,} parameters ({trainable:,} trainable), vocabulary "
            f"{len(tokenizer)}, mode {config.mode}, {layout.rows_per_epoch:,} rows of "
            f"{layout.unit} per epoch, {total_steps} steps on {runtime.describe()}")


def accumulate_gradients(model: torch.nn.Module, layout: Layout, batch: Rows,
                         micro_batch_size: int, runtime: Runtime) -> float:
    """Backpropagate this rank's share of a global batch; the batch's loss per token (or pair).

    The share goes through in micro-batches, each adding (its summed loss) / (the global batch's
    count), so the gradient equals the whole batch's however unevenly the tokens are spread.
    """
    count = layout.count(batch)
    if count == 0:
        raise UserError(f"{layout.source}: a training batch has nothing to learn from: no "
                        "assistant turn survived rendering and truncation; check the records or "
                        "raise train.seq_len")
    share = {k: v[runtime.rank::runtime.world] for k, v in batch.items()}
    loss_sum = torch.zeros((), device=runtime.device)
    for start in range(0, num_rows(share), micro_batch_size):
        micro = {k: v[start:start + micro_batch_size].to(runtime.device, non_blocking=True)
                 for k, v in share.items()}
        with runtime.autocast():
            loss, _ = layout.loss(model, micro)
        # DDP and FSDP average gradients over ranks; scaling by world gives the global sum.
        (loss * runtime.world / count).backward()
        loss_sum += loss.detach()
    return float(runtime.sum(loss_sum)) / count


def train_step(model: torch.nn.Module, base: torch.nn.Module, layout: Layout, batch: Rows,
               optimizer: torch.optim.Optimizer, scheduler: Scheduler, ema: Ema | None,
               config: TrainConfig, runtime: Runtime) -> float:
    """One optimizer step on a global batch (gradients clipped, the EMA moved); its loss per
    token (or pair, or image)."""
    loss = accumulate_gradients(model, layout, batch, config.batch_size, runtime)
    torch.nn.utils.clip_grad_norm_(base.parameters(), config.grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    scheduler.step()
    if ema is not None:
        ema.update(base)
    return loss


@torch.no_grad()
def evaluate(model: torch.nn.Module, layout: Layout, config: TrainConfig,
             runtime: Runtime) -> float:
    """Mean loss per token (or pair) over the whole held-out split, in eval mode."""
    model.eval()
    rows = layout.epoch_rows(0)
    total, count = 0.0, 0
    for start in range(0, layout.rows_per_epoch, config.batch_size):
        micro = {k: v[start:start + config.batch_size].to(runtime.device) for k, v in rows.items()}
        with runtime.autocast():
            loss, _ = layout.loss(model, micro)
        total, count = total + float(loss), count + layout.count(micro)
    model.train()
    return total / max(count, 1)


def real_tokens(batch: Rows, pad_id: int) -> int:
    """Tokens in a batch that are not padding (what tokens/s counts)."""
    return sum(int((batch[k] != pad_id).sum())
               for k in ("input_ids", "chosen_ids", "rejected_ids") if k in batch)


def train_steps(model: torch.nn.Module, base: PreTrainedModel, layout: Layout,
                held: Layout | None, batches: Iterator[Rows], optimizer: torch.optim.Optimizer,
                scheduler: Scheduler, ema: Ema | None, counters: Counters,
                total_steps: int, out_dir: Path, tokenizer: PreTrainedTokenizerBase,
                student: StudentKind, config: TrainConfig, runtime: Runtime,
                console: Console, trackers: Trackers | None = None
                ) -> tuple[float, float | None]:
    """Steps until `total_steps`: train, evaluate, log and checkpoint on their schedules.

    Returns the last step's loss and the last held-out loss (None without a held-out split).
    """
    per_token = student.flops(base, config)
    peak = peak_flops(runtime.device, config.peak_flops)
    loss, eval_loss = float("nan"), None
    window_tokens, window_start = 0, time.perf_counter()
    metrics = (out_dir / "metrics.jsonl").open("a") if runtime.is_main else None
    bar = progress_bar(console, runtime)
    task = bar.add_task("train", total=total_steps, completed=counters.step, loss=float("nan"),
                        tps=0.0, extra="")
    try:
        with bar:
            while counters.step < total_steps:
                t0 = time.perf_counter()
                batch = next(batches)
                if layout.rollout is not None:  # rows sampled from the weights as they are now
                    batch = layout.rollout(base, batch, counters.step)
                t1 = time.perf_counter()
                loss = train_step(model, base, layout, batch, optimizer, scheduler, ema, config,
                                  runtime)
                step_log = layout.step_log() if layout.step_log is not None else {}
                if layout.rollout is not None:
                    step_log["update_s"] = time.perf_counter() - t1
                counters.step += 1
                n_tokens = student.units(batch, int(tokenizer.pad_token_id))
                counters.tokens += n_tokens
                window_tokens += n_tokens
                counters.elapsed_s += time.perf_counter() - t0
                last = counters.step == total_steps
                if held is not None and (counters.step % config.eval_every == 0 or last):
                    eval_loss = evaluate(base, held, config, runtime)
                if metrics and (counters.step % config.log_every == 0 or last):
                    now = time.perf_counter()
                    tps = window_tokens / max(now - window_start, 1e-9)
                    window_tokens, window_start = 0, now
                    line = {"step": counters.step, "loss": round(loss, 6),
                            "lr": scheduler.get_last_lr()[0], "tokens": counters.tokens,
                            "tokens_per_s": round(tps, 1),
                            "elapsed_s": round(counters.elapsed_s, 3)}
                    if per_token and (m := mfu(tps, per_token, peak, runtime.world)) is not None:
                        line["mfu"] = round(m, 4)
                    if eval_loss is not None:
                        line["eval_loss"] = round(eval_loss, 6)
                    line.update({k: round(v, 4) for k, v in step_log.items()})
                    metrics.write(json.dumps(line) + "\n")
                    metrics.flush()
                    if trackers:
                        trackers.log(line)
                    bar.update(task, completed=counters.step, loss=loss, tps=tps,
                               extra=describe_step(step_log))
                if counters.step % config.checkpoint_every == 0 and not last:
                    save_checkpoint(out_dir, base, optimizer, scheduler, ema, counters, config,
                                    runtime)
    finally:
        if metrics:
            metrics.close()
    return loss, eval_loss


def progress_bar(console: Console, runtime: Runtime) -> Progress:
    """The training bar on rank 0 (other ranks draw nothing)."""
    return Progress(
        TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[tps]:,.0f} tok/s"),
        TextColumn("{task.fields[extra]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        console=console, transient=False, disable=not runtime.is_main)


def describe_step(step_log: dict[str, float]) -> str:
    """What a mode measured in the last step, for the progress line ("" for most modes)."""
    return " ".join(f"{k} {v:.3g}" for k, v in step_log.items())


def trainable_state(model: torch.nn.Module, lora: bool) -> dict[str, torch.Tensor]:
    """The model's state dict; with LoRA only the adapters' (the base never changes)."""
    state = model.state_dict()
    if not lora:
        return state
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in state.items() if k in names}


def save_checkpoint(out_dir: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler: Scheduler, ema: Ema | None, counters: Counters,
                    config: TrainConfig, runtime: Runtime) -> None:
    """A checkpoint of everything a resume needs (gathered from all ranks under FSDP); the
    EMA's weights ride in the weights file under `ema.` names."""
    model_state, optimizer_state = (
        full_state(model, optimizer) if runtime.sharded
        else (trainable_state(model, config.lora is not None), optimizer.state_dict()))
    if ema is not None:
        model_state = {**model_state, **{EMA + k: v for k, v in ema.shadow.items()}}
    if runtime.is_main:
        checkpoints.save_checkpoint(out_dir, checkpoints.Checkpoint(
            model_state, optimizer_state, scheduler.state_dict(), torch.get_rng_state(),
            asdict(counters)))


def finish(out_dir: Path, model: PreTrainedModel, optimizer: torch.optim.Optimizer,
           ema: Ema | None, tokenizer: PreTrainedTokenizerBase, counters: Counters,
           loss: float, eval_loss: float | None, layout: Layout, student: StudentKind,
           config: TrainConfig, runtime: Runtime) -> dict[str, Any]:
    """Save the final student (the EMA weights, merged LoRA, gathered FSDP shards) and the
    summary; return it."""
    model.eval()
    tokens_per_s = round(counters.tokens / max(counters.elapsed_s, 1e-9), 1)
    summary: dict[str, Any] = {
        "steps": counters.step, "tokens": counters.tokens, "seconds": round(counters.elapsed_s, 3),
        "final_loss": loss, "eval_loss": eval_loss, "params": count_params(model),
        "tokens_per_s": tokens_per_s, "mode": config.mode, "lora": config.lora is not None,
        "processes": runtime.world, "rows_per_epoch": layout.rows_per_epoch,
        "unit": layout.unit, "vocab_size": len(tokenizer), "size": config.student.size,
        "tokenizer": config.tokenizer.kind, **layout.notes}
    per_token = student.flops(model, config)
    if per_token and (m := mfu(tokens_per_s, per_token,
                               peak_flops(runtime.device, config.peak_flops),
                               runtime.world)) is not None:
        summary["mfu"] = round(m, 4)
    if runtime.sharded:
        whole, _ = full_state(model, optimizer)
        if runtime.is_main:
            model = load_student(out_dir / "initial")
            model.load_state_dict(whole)
    if runtime.is_main:
        if config.lora:
            checkpoints.save_dir_atomic(out_dir / "adapter", lambda tmp: save_adapter(model, tmp))
        final: Any = ema.averaged(model) if ema is not None else model
        final = merge_lora(final) if config.lora and config.lora.merge else final
        student.save(out_dir / "model", final.cpu(), tokenizer, config)
        write_json_atomic(out_dir / "summary.json", summary)
    runtime.barrier()
    return summary
