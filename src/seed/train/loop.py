"""The training loop: plain PyTorch over a transformers causal LM, readable top to bottom.

`train_student` renders the records, builds (or loads) the student, saves the untrained copy as the
evaluation baseline, and runs AdamW with warmup + cosine decay, gradient accumulation weighted by
trainable tokens, and gradient clipping. Every `checkpoint_every` steps it writes a checkpoint
(model, optimizer, scheduler, RNG state, step; the data position is the step, because the data
order is a pure function of the seed), so a rerun after a kill continues the same run and ends
with the same weights. It knows nothing about where records came from or how models are graded.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from transformers.utils import logging as hf_logging

from seed.endpoints.local import load_tokenizer
from seed.errors import UserError
from seed.files import hash_json, hash_path, write_json_atomic, write_text_atomic
from seed.recipe import TrainConfig
from seed.records import read_records
from seed.train.data import Batch, check_trainable, pack, render
from seed.train.losses import sft_loss
from seed.train.models import build_student, count_params, load_student, student_config
from seed.train.tokenizer import train_tokenizer

KEEP_CHECKPOINTS = 2
TEMPLATE_SETTING = "train.student.chat_template"  # named when a tokenizer has no template


def _save_dir_atomic(path: Path, write: Any) -> None:
    """Write a directory under a temporary name, then rename it into place."""
    tmp = path.with_name(f".{path.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    write(tmp)
    if path.exists():
        shutil.rmtree(path)
    os.replace(tmp, path)


def _save_model(path: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)

    # transformers draws a progress bar per saved shard; the training bar is enough.
    shown = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        _save_dir_atomic(path, write)
    finally:
        if shown:
            hf_logging.enable_progress_bar()


def _student(out_dir: Path, chats: list[list[dict[str, str]]], config: TrainConfig,
             seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The untrained student and its tokenizer, saved once to out_dir/initial (eval baseline)."""
    initial = out_dir / "initial"
    if (initial / "config.json").is_file():
        return load_student(initial), load_tokenizer(initial, template_setting=TEMPLATE_SETTING)
    if config.student.checkpoint:
        model = load_student(config.student.checkpoint)
        tokenizer = load_tokenizer(config.student.checkpoint, config.student.chat_template,
                                   template_setting=TEMPLATE_SETTING)
    else:
        texts = (m["content"] for chat in chats for m in chat)
        tokenizer = train_tokenizer(texts, config.tokenizer.kind, config.tokenizer.vocab_size)
        cfg = student_config(config.student.size, len(tokenizer), config.seq_len,
                             tokenizer.pad_token_id, tokenizer.eos_token_id)
        model = build_student(cfg, seed)
    _save_model(initial, model, tokenizer)
    return model, tokenizer


def _lr_lambda(config: TrainConfig, total_steps: int) -> Any:
    warmup = min(config.warmup_steps, max(total_steps - 1, 0))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return config.min_lr_ratio + (1 - config.min_lr_ratio) * cosine

    return factor


class RowStream:
    """Packed rows in training order: each epoch shuffles the examples (seeded), then packs them."""

    def __init__(self, examples: list[Any], seq_len: int, pad_id: int, seed: int) -> None:
        self.examples, self.seq_len, self.pad_id, self.seed = examples, seq_len, pad_id, seed
        self.rows_per_epoch = len(self._epoch(0))

    def _epoch(self, epoch: int) -> Batch:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.examples), generator=g).tolist()
        return pack([self.examples[i] for i in order], self.seq_len, self.pad_id)

    def steps(self, start_row: int, rows_per_step: int) -> Iterator[Batch]:
        """Batches of `rows_per_step` rows from row `start_row` on, crossing epochs as needed."""
        # Each epoch's shuffle packs into its own number of rows, so walk them to find the start.
        epoch, offset, current = 0, start_row, self._epoch(0)
        while offset >= len(current):
            epoch, offset = epoch + 1, offset - len(current)
            current = self._epoch(epoch)
        while True:
            parts, need = [], rows_per_step
            while need:
                take = current.rows(offset, offset + need)
                parts.append(take)
                need -= len(take)
                offset += len(take)
                if offset >= len(current):
                    epoch, offset = epoch + 1, 0
                    current = self._epoch(epoch)
            yield Batch(*(torch.cat([getattr(p, f) for p in parts])
                          for f in ("input_ids", "mask", "position_ids")))


def _checkpoints(out_dir: Path) -> list[Path]:
    return sorted((out_dir / "checkpoints").glob("step-*"))


def _save_checkpoint(out_dir: Path, state: dict[str, Any]) -> None:
    path = out_dir / "checkpoints" / f"step-{state['step']:08d}"
    _save_dir_atomic(path, lambda tmp: torch.save(state, tmp / "state.pt"))
    for old in _checkpoints(out_dir)[:-KEEP_CHECKPOINTS]:
        shutil.rmtree(old)


def _fingerprint(records: Path, config: TrainConfig, seed: int) -> str:
    return hash_json([config.model_dump(mode="json"), seed, hash_path(records)])


def _start_fresh_if_changed(out_dir: Path, fingerprint: str) -> None:
    """Outputs from another config, seed or records file are removed, never resumed from."""
    marker = out_dir / "inputs.json"
    if marker.is_file() and json.loads(marker.read_text())["fingerprint"] == fingerprint:
        return
    for name in ("initial", "model", "checkpoints"):
        shutil.rmtree(out_dir / name, ignore_errors=True)
    for name in ("metrics.jsonl", "summary.json"):
        (out_dir / name).unlink(missing_ok=True)
    write_json_atomic(marker, {"fingerprint": fingerprint})


def _keep_metrics_until(path: Path, step: int) -> None:
    """Drop metric lines logged after the checkpoint being resumed from (they will be redone)."""
    if not path.exists():
        return
    lines = [ln for ln in path.read_text().splitlines(keepends=True)
             if ln.endswith("\n") and json.loads(ln)["step"] <= step]
    write_text_atomic(path, "".join(lines))


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total} steps"),
        TextColumn("loss {task.fields[loss]:.4f}"), TextColumn("{task.fields[tps]:,.0f} tok/s"),
        TimeElapsedColumn(), TimeRemainingColumn(), console=console, transient=False,
    )


def accumulate_gradients(model: PreTrainedModel, batch: Batch, micro_batch_size: int) -> float:
    """Backpropagate a batch in micro-batches; return its loss per trainable token.

    Each micro-batch adds (its summed token loss) / (the batch's trainable tokens), so the
    gradients equal those of the whole batch at once, however unevenly the tokens are spread.
    """
    n_trainable = check_trainable(batch)
    loss_sum = 0.0
    for start in range(0, len(batch), micro_batch_size):
        micro = batch.rows(start, start + micro_batch_size)
        logits = model(input_ids=micro.input_ids, position_ids=micro.position_ids,
                       use_cache=False).logits
        loss, _ = sft_loss(logits, micro.input_ids, micro.mask)
        (loss / n_trainable).backward()
        loss_sum += loss.item()
    return loss_sum / n_trainable


def train_student(records: Path, out_dir: Path, config: TrainConfig, seed: int,
                  console: Console | None = None) -> dict[str, Any]:
    """Train a student on `records` into `out_dir`; resume if a checkpoint is there.

    Writes initial/ (untrained), model/ (final), checkpoints/, metrics.jsonl and summary.json, and
    returns the summary (steps, tokens, seconds, final_loss, params, tokens_per_s, ...).
    """
    records, out_dir = Path(records), Path(out_dir)
    console = console or Console()
    from seed.train.finetune import needs_finetune, train_finetune  # it builds on this module

    if needs_finetune(config):
        return train_finetune(records, out_dir, config, seed, console)
    out_dir.mkdir(parents=True, exist_ok=True)
    _start_fresh_if_changed(out_dir, _fingerprint(records, config, seed))
    summary_path = out_dir / "summary.json"
    if (out_dir / "model" / "config.json").is_file() and summary_path.is_file():
        return json.loads(summary_path.read_text())

    torch.set_num_threads(config.threads or os.cpu_count() or 1)
    torch.manual_seed(seed)
    chats = [r.chat() for r in read_records(records)]
    if not chats:
        raise UserError(f"{records}: no records to train on; generate some first")
    model, tokenizer = _student(out_dir, chats, config, seed)
    examples = render(tokenizer, chats)
    if not any(any(ex.mask) for ex in examples):
        raise UserError(f"{records}: no record has an assistant turn to learn from")
    stream = RowStream(examples, config.seq_len, tokenizer.pad_token_id, seed)
    rows_per_step = config.batch_size * config.grad_accum
    total_steps = config.max_steps or max(
        1, math.ceil(config.epochs * stream.rows_per_epoch / rows_per_step))

    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay},
         {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr, betas=(0.9, 0.95), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, _lr_lambda(config, total_steps))

    step, tokens, elapsed = 0, 0, 0.0
    if ckpts := _checkpoints(out_dir):
        state = torch.load(ckpts[-1] / "state.pt", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"])
        step, tokens, elapsed = state["step"], state["tokens"], state["elapsed_s"]
        console.print(f"resuming from step {step} of {total_steps} ({ckpts[-1].name})")
    metrics_path = out_dir / "metrics.jsonl"
    _keep_metrics_until(metrics_path, step)

    model.train()
    params = count_params(model)
    console.print(f"student: {params:,} parameters, vocabulary {len(tokenizer)}, "
                  f"{len(examples):,} examples in {stream.rows_per_epoch:,} rows of "
                  f"{config.seq_len} tokens, {total_steps} steps")
    batches = stream.steps(step * rows_per_step, rows_per_step)
    loss_value = float("nan")
    window_tokens, window_start = 0, time.perf_counter()
    with _progress(console) as progress, metrics_path.open("a") as metrics:
        task = progress.add_task("train", total=total_steps, completed=step, loss=float("nan"),
                                 tps=0.0)
        while step < total_steps:
            t0 = time.perf_counter()
            batch = next(batches)
            loss_value = accumulate_gradients(model, batch, config.batch_size)
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            n_tokens = int((batch.input_ids != tokenizer.pad_token_id).sum())
            tokens += n_tokens
            window_tokens += n_tokens
            elapsed += time.perf_counter() - t0
            if step % config.log_every == 0 or step == total_steps:
                now = time.perf_counter()
                tps = window_tokens / max(now - window_start, 1e-9)
                window_tokens, window_start = 0, now
                metrics.write(json.dumps({
                    "step": step, "loss": round(loss_value, 6),
                    "lr": scheduler.get_last_lr()[0], "tokens": tokens,
                    "tokens_per_s": round(tps, 1), "elapsed_s": round(elapsed, 3)}) + "\n")
                metrics.flush()
                progress.update(task, completed=step, loss=loss_value, tps=tps)
            if step % config.checkpoint_every == 0 and step < total_steps:
                _save_checkpoint(out_dir, {
                    "step": step, "tokens": tokens, "elapsed_s": elapsed,
                    "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()})

    model.eval()
    _save_model(out_dir / "model", model, tokenizer)
    summary = {"steps": step, "tokens": tokens, "seconds": round(elapsed, 3),
               "final_loss": loss_value, "params": params,
               "tokens_per_s": round(tokens / max(elapsed, 1e-9), 1),
               "examples": len(examples), "vocab_size": len(tokenizer),
               "size": config.student.size, "tokenizer": config.tokenizer.kind}
    write_json_atomic(summary_path, summary)
    return summary
