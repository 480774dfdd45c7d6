"""The loop for real students: LoRA, distillation, DPO, bf16, compile, several processes, eval loss.

`train_student` (loop.py) hands a config here when it asks for more than plain from-scratch SFT:
`mode` = kd (top-k teacher logprobs in the records), online_kd (a local teacher model in process),
dpo (chosen/rejected pairs, reference log-probabilities computed once before the first step), or
sft with LoRA, bf16 autocast, torch.compile, activation checkpointing or a held-out split. Each
mode is a batch layout plus a loss; the loop around them is the same: AdamW with warmup + cosine,
accumulation weighted by the global batch's trainable tokens (or pairs), clipping, checkpoints
that resume to the same weights, metrics.jsonl with tokens/s and MFU.

Several processes (`torchrun` or `accelerate launch`, which set RANK and WORLD_SIZE) run DDP: every
rank builds the same global batch from the seed and takes its share of the rows, so a step's
gradient equals one process's on the same global batch. Only rank 0 writes files. This module knows
nothing about where records came from or how models are graded.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from rich.console import Console
from transformers import AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from seed.endpoints.local import load_tokenizer
from seed.errors import UserError
from seed.files import write_json_atomic
from seed.recipe import TrainConfig
from seed.records import Record, read_records
from seed.train import loop
from seed.train.data import Example, pack, render
from seed.train.distill import decoded_vocab, pack_targets, teacher_targets
from seed.train.dpo import pad_examples, reference_logprobs, render_pairs, sequence_logprobs
from seed.train.lora import add_lora, merge_lora, quantized_load_kwargs, save_adapter
from seed.train.losses import chunked_sft_loss, dpo_loss, logit_kd_loss, sft_loss, topk_kd_loss
from seed.train.models import build_student, count_params, load_student, student_config
from seed.train.sharding import full_state, load_full_state, shard
from seed.train.speed import autocast, device, flops_per_token, mfu, peak_flops
from seed.train.tokenizer import train_tokenizer

Rows = dict[str, torch.Tensor]
Loss = Callable[[torch.nn.Module, Rows], tuple[torch.Tensor, int]]


def needs_finetune(config: TrainConfig) -> bool:
    """Whether the config asks for anything beyond the plain SFT loop of loop.py."""
    return (config.mode != "sft" or config.lora is not None or config.compile
            or config.grad_checkpointing or bool(config.loss_chunk) or config.eval_fraction > 0
            or config.dtype != "auto"
            or config.student.chat_template is not None or config.peak_flops is not None
            or torch.cuda.is_available()
            or int(os.environ.get("WORLD_SIZE", "1")) > 1)


def _student(out_dir: Path, chats: list[list[dict[str, str]]], config: TrainConfig,
             seed: int) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The starting student, saved once to out_dir/initial (the baseline, and DPO's reference)."""
    initial = out_dir / "initial"
    if not (initial / "config.json").is_file():
        if config.student.checkpoint:
            model = load_student(config.student.checkpoint)
            tokenizer = load_tokenizer(config.student.checkpoint, config.student.chat_template,
                                       template_setting=loop.TEMPLATE_SETTING)
        else:
            tokenizer = train_tokenizer((m["content"] for c in chats for m in c),
                                        config.tokenizer.kind, config.tokenizer.vocab_size)
            model = build_student(student_config(config.student.size, len(tokenizer),
                                                 config.seq_len, tokenizer.pad_token_id,
                                                 tokenizer.eos_token_id), seed)
        if _rank() == 0:
            loop._save_model(initial, model, tokenizer)
    _barrier()
    tokenizer = load_tokenizer(initial, template_setting=loop.TEMPLATE_SETTING)
    model = load_student(initial, **(quantized_load_kwargs(config.lora) if config.lora else {}))
    return model, tokenizer


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _world() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _init_distributed(dev: torch.device) -> None:
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")


def _split(records: list[Record], fraction: float, seed: int) -> tuple[list[Record], list[Record]]:
    """(train, held out): a seeded random `fraction` of the records, at least one, held out."""
    if fraction == 0:
        return records, []
    order = torch.randperm(len(records), generator=torch.Generator().manual_seed(seed)).tolist()
    n = max(1, round(fraction * len(records)))
    if n >= len(records):
        raise UserError(f"train.eval_fraction = {fraction} leaves no record to train on; lower it")
    held = set(order[:n])
    return ([r for i, r in enumerate(records) if i not in held],
            [r for i, r in enumerate(records) if i in held])


def _shuffled(items: list[Any], seed: int, epoch: int) -> list[Any]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return [items[i] for i in torch.randperm(len(items), generator=g).tolist()]


class Layout:
    """A mode's data: each epoch's rows (a dict of equal-length tensors) and the loss on a slice."""

    def __init__(self, epoch_rows: Callable[[int], Rows], loss: Loss, count: Callable[[Rows], int],
                 unit: str) -> None:
        self.epoch_rows, self.loss, self.count, self.unit = epoch_rows, loss, count, unit
        self.rows_per_epoch = len(next(iter(epoch_rows(0).values())))

    def steps(self, start_row: int, rows_per_step: int) -> Iterator[Rows]:
        """Global batches of `rows_per_step` rows from row `start_row` on, crossing epochs."""
        epoch, offset, current = 0, start_row, self.epoch_rows(0)
        while offset >= len(next(iter(current.values()))):
            offset -= len(next(iter(current.values())))
            epoch += 1
            current = self.epoch_rows(epoch)
        while True:
            parts, need = [], rows_per_step
            while need:
                take = {k: v[offset:offset + need] for k, v in current.items()}
                got = len(next(iter(take.values())))
                parts.append(take)
                need, offset = need - got, offset + got
                # Packing a different order can give an epoch a row more or less than epoch 0.
                if offset >= len(next(iter(current.values()))):
                    epoch, offset = epoch + 1, 0
                    current = self.epoch_rows(epoch)
            yield {k: torch.cat([p[k] for p in parts]) for k in parts[0]}


def _token_count(rows: Rows) -> int:
    return int(rows["mask"][:, 1:].sum())


def _forward(model: torch.nn.Module, rows: Rows) -> torch.Tensor:
    return model(input_ids=rows["input_ids"], position_ids=rows["position_ids"],
                 use_cache=False).logits


class _ChunkedSft:
    """SFT loss without whole-batch logits: the model projects no position, the loss chunks.

    The final hidden state comes from a forward hook on the decoder rather than from
    `output_hidden_states`, whose capture hooks transformers installs per call and torch.compile
    cannot trace.
    """

    def __init__(self, model: PreTrainedModel, chunk: int) -> None:
        self.head, self.chunk, self.hidden = model.get_output_embeddings(), chunk, []
        model.get_decoder().register_forward_hook(self._keep)

    def _keep(self, _module: torch.nn.Module, _args: object, out: Any) -> None:
        self.hidden.append(out.last_hidden_state)

    def __call__(self, model: torch.nn.Module, rows: Rows) -> tuple[torch.Tensor, int]:
        ids = rows["input_ids"]
        none = torch.zeros(0, dtype=torch.long, device=ids.device)
        self.hidden.clear()
        model(input_ids=ids, position_ids=rows["position_ids"], use_cache=False,
              logits_to_keep=none)
        return chunked_sft_loss(self.hidden.pop(), self.head, ids, rows["mask"], self.chunk)


def _token_layout(examples: list[Example], config: TrainConfig, pad_id: int, seed: int,
                  targets: list[Any] | None, teacher: PreTrainedModel | None,
                  chunked: _ChunkedSft | None) -> Layout:
    """Packed rows for sft, kd (with teacher top-k tensors) and online_kd."""
    settings = config.distill
    indices = list(range(len(examples)))

    def epoch_rows(epoch: int) -> Rows:
        order = _shuffled(indices, seed, epoch)
        batch = pack([examples[i] for i in order], config.seq_len, pad_id)
        rows = {"input_ids": batch.input_ids, "mask": batch.mask,
                "position_ids": batch.position_ids}
        if targets is not None:
            rows["topk_ids"], rows["topk_logprobs"] = pack_targets(
                [examples[i] for i in order], [targets[i] for i in order], config.seq_len,
                settings.top_k)
        return rows

    def loss(model: torch.nn.Module, rows: Rows) -> tuple[torch.Tensor, int]:
        if chunked is not None:
            return chunked(model, rows)
        logits = _forward(model, rows)
        if config.mode == "sft":
            return sft_loss(logits, rows["input_ids"], rows["mask"])
        if config.mode == "kd":
            # Tokens the teacher did not score (the end-of-turn token) learn by cross-entropy.
            scored = torch.isfinite(rows["topk_logprobs"]).any(-1) & rows["mask"].bool()
            kd, _ = topk_kd_loss(logits, rows["topk_ids"], rows["topk_logprobs"], rows["mask"])
            ce_scored, _ = sft_loss(logits, rows["input_ids"], scored.long())
            ce_rest, _ = sft_loss(logits, rows["input_ids"], rows["mask"] * ~scored)
            w = settings.weight
            return w * kd + (1 - w) * ce_scored + ce_rest, _token_count(rows)
        with torch.no_grad():
            teacher_logits = _forward(teacher, rows)
        kd, n = logit_kd_loss(logits, teacher_logits, rows["mask"], settings.divergence,
                              settings.beta, settings.temperature)
        ce, _ = sft_loss(logits, rows["input_ids"], rows["mask"])
        return settings.weight * kd + (1 - settings.weight) * ce, n

    return Layout(epoch_rows, loss, _token_count, "tokens")


def _dpo_layout(pairs: list[Any], reference: torch.Tensor, config: TrainConfig, pad_id: int,
                seed: int) -> Layout:
    """One row per pair: chosen and rejected ids/masks padded to seq_len, and their reference."""
    chosen = pad_examples([p.chosen for p in pairs], config.seq_len, pad_id)
    rejected = pad_examples([p.rejected for p in pairs], config.seq_len, pad_id)
    every = {"chosen_ids": chosen[0], "chosen_mask": chosen[1], "rejected_ids": rejected[0],
             "rejected_mask": rejected[1], "reference": reference}

    def epoch_rows(epoch: int) -> Rows:
        order = torch.tensor(_shuffled(list(range(len(pairs))), seed, epoch))
        return {k: v[order] for k, v in every.items()}

    def loss(model: torch.nn.Module, rows: Rows) -> tuple[torch.Tensor, int]:
        ids = torch.cat([rows["chosen_ids"], rows["rejected_ids"]])
        lp = sequence_logprobs(model, ids, torch.cat([rows["chosen_mask"], rows["rejected_mask"]]))
        n = len(rows["chosen_ids"])
        return dpo_loss(lp[:n], lp[n:], rows["reference"][:, 0], rows["reference"][:, 1],
                        config.dpo.beta)

    return Layout(epoch_rows, loss, lambda rows: len(rows["chosen_ids"]), "pairs")


def _teacher(config: TrainConfig, tokenizer: PreTrainedTokenizerBase,
             dev: torch.device) -> PreTrainedModel:
    path = config.distill.teacher
    if not path:
        raise UserError("train.mode = 'online_kd' needs train.distill.teacher, a local model "
                        "directory that shares the student's tokenizer")
    teacher_tok = AutoTokenizer.from_pretrained(path, local_files_only=True)
    if teacher_tok.get_vocab() != tokenizer.get_vocab():
        raise UserError(f"train.distill.teacher = {path}: its tokenizer differs from the "
                        "student's; online distillation needs the same vocabulary")
    return load_student(path).to(dev).eval().requires_grad_(False)


def _layout(mode_records: list[Record], source: str, tokenizer: PreTrainedTokenizerBase,
            model: PreTrainedModel, config: TrainConfig, seed: int, dev: torch.device) -> Layout:
    pad_id = tokenizer.pad_token_id
    if config.mode == "dpo":
        pairs = render_pairs(tokenizer, mode_records, source)
        with autocast(dev, config.dtype):  # the same precision as the policy's forward
            reference = reference_logprobs(_on(model, dev), pairs, config.seq_len, pad_id,
                                           config.batch_size) if pairs else torch.zeros(0, 2)
        return _dpo_layout(pairs, reference.cpu(), config, pad_id, seed)
    examples = render(tokenizer, [r.chat() for r in mode_records])
    targets, teacher = None, None
    if config.mode == "kd":
        vocab = decoded_vocab(tokenizer)
        targets = []
        for i, (r, ex) in enumerate(zip(mode_records, examples, strict=True)):
            where = f"{source} record {i + 1} ({r.id})"
            if not isinstance(r.meta.get("logprobs"), list):
                raise UserError(f"{where}: mode = 'kd' needs the teacher's meta.logprobs; generate "
                                "with logprobs (generate.params.logprobs) or use mode = 'sft'")
            targets.append(teacher_targets(tokenizer, ex, r.meta["logprobs"], where, vocab))
    elif config.mode == "online_kd":
        teacher = _teacher(config, tokenizer, dev)
    chunked = (_ChunkedSft(model, config.loss_chunk)
               if config.mode == "sft" and config.loss_chunk else None)
    return _token_layout(examples, config, pad_id, seed, targets, teacher, chunked)


def _on(model: PreTrainedModel, dev: torch.device) -> PreTrainedModel:
    """The model on `dev`; a 4-bit model was placed there when loaded and cannot be moved."""
    return model if getattr(model, "is_loaded_in_4bit", False) else model.to(dev)


def _to(rows: Rows, dev: torch.device) -> Rows:
    return {k: v.to(dev, non_blocking=True) for k, v in rows.items()}


@torch.no_grad()
def _eval_loss(model: torch.nn.Module, layout: Layout, config: TrainConfig,
               dev: torch.device) -> float:
    """Mean loss per token (or pair) over the whole held-out split, in eval mode."""
    model.eval()
    rows = layout.epoch_rows(0)
    total, count = 0.0, 0
    for start in range(0, layout.rows_per_epoch, config.batch_size):
        micro = _to({k: v[start:start + config.batch_size] for k, v in rows.items()}, dev)
        with autocast(dev, config.dtype):
            loss, _ = layout.loss(model, micro)
        total, count = total + float(loss), count + layout.count(micro)
    model.train()
    return total / max(count, 1)


def _trainable_state(model: torch.nn.Module, lora: bool) -> dict[str, torch.Tensor]:
    state = model.state_dict()
    if not lora:
        return state
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in state.items() if k in names}


def train_finetune(records: Path, out_dir: Path, config: TrainConfig, seed: int,
                   console: Console) -> dict[str, Any]:
    """Train `config.mode` into `out_dir` (same files as loop.train_student, plus adapter/)."""
    dev = device()
    _init_distributed(dev)
    rank, world = _rank(), _world()
    rows_per_step = config.batch_size * config.grad_accum * world
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        loop._start_fresh_if_changed(out_dir, loop._fingerprint(records, config, seed))
    _barrier()
    summary_path = out_dir / "summary.json"
    if (out_dir / "model" / "config.json").is_file() and summary_path.is_file():
        return json.loads(summary_path.read_text())

    torch.set_num_threads(config.threads or max(1, (os.cpu_count() or 1) // world))
    torch.manual_seed(seed)
    all_records = list(read_records(records))
    if not all_records:
        raise UserError(f"{records}: no records to train on; generate some first")
    train_records, held_out = _split(all_records, config.eval_fraction, seed)
    model, tokenizer = _student(out_dir, [r.chat() for r in train_records], config, seed)
    layout = _layout(train_records, str(records), tokenizer, model, config, seed, dev)
    held = (_layout(held_out, str(records), tokenizer, model, config, seed, dev)
            if held_out else None)
    if config.lora:
        model = add_lora(model, config.lora)
    if config.grad_checkpointing:
        model.gradient_checkpointing_enable()
        model.enable_input_require_grads()
    model = _on(model, dev)
    fsdp = world > 1 and config.distributed == "fsdp"
    if fsdp:
        if config.lora:
            raise UserError("train.distributed = 'fsdp' does not train LoRA adapters; use "
                            "'ddp' (the adapters are small) or drop [train.lora]")
        shard(model)  # before the optimizer, which must see the sharded parameters
    total_steps = config.max_steps or max(
        1, math.ceil(config.epochs * layout.rows_per_epoch / rows_per_step))

    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for _, p in trainable if p.dim() >= 2], "weight_decay": config.weight_decay},
         {"params": [p for _, p in trainable if p.dim() < 2], "weight_decay": 0.0}],
        lr=config.lr, betas=(0.9, 0.95), eps=1e-8)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, loop._lr_lambda(config, total_steps))

    step, tokens, elapsed = 0, 0, 0.0
    if ckpts := loop._checkpoints(out_dir):
        state = torch.load(ckpts[-1] / "state.pt", weights_only=False, map_location=dev)
        if fsdp:
            load_full_state(model, optimizer, state["model"], state["optimizer"])
        else:
            model.load_state_dict(state["model"], strict=not config.lora)
            optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["rng"].cpu())
        step, tokens, elapsed = state["step"], state["tokens"], state["elapsed_s"]
        if rank == 0:
            console.print(f"resuming from step {step} of {total_steps} ({ckpts[-1].name})")
    metrics_path = out_dir / "metrics.jsonl"
    if rank == 0:
        loop._keep_metrics_until(metrics_path, step)

    base = model
    if world > 1 and not fsdp:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[dev.index] if dev.type == "cuda" else None)
    if config.compile:
        model = torch.compile(model, dynamic=False)
    model.train()
    params = count_params(base)
    per_token = flops_per_token(base, config.seq_len)
    peak = peak_flops(dev, config.peak_flops)
    if rank == 0:
        console.print(f"student: {params:,} parameters ({sum(p.numel() for _, p in trainable):,} "
                      f"trainable), mode {config.mode}, {layout.rows_per_epoch:,} rows of "
                      f"{layout.unit}, {total_steps} steps on {world} x {dev.type}")
    batches = layout.steps(step * rows_per_step, rows_per_step)
    loss_value, eval_value = float("nan"), None
    window_tokens, window_start = 0, time.perf_counter()
    metrics = metrics_path.open("a") if rank == 0 else None
    try:
        while step < total_steps:
            t0 = time.perf_counter()
            batch = next(batches)
            count = layout.count(batch)
            if count == 0:
                raise UserError("a training batch has nothing to learn from: no assistant turn "
                                "survived rendering and truncation; check the records and seq_len")
            share = {k: v[rank::world] for k, v in batch.items()}
            local = len(next(iter(share.values())))
            loss_sum = torch.zeros((), device=dev)
            for start in range(0, local, config.batch_size):
                micro = _to({k: v[start:start + config.batch_size] for k, v in share.items()}, dev)
                with autocast(dev, config.dtype):
                    loss, _ = layout.loss(model, micro)
                # DDP and FSDP average gradients over ranks; scaling by world gives the global sum.
                (loss * world / count).backward()
                loss_sum += loss.detach()
            if world > 1:
                dist.all_reduce(loss_sum)
            torch.nn.utils.clip_grad_norm_(base.parameters(), config.grad_clip)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            n_tokens = sum(int((batch[k] != tokenizer.pad_token_id).sum())
                           for k in ("input_ids", "chosen_ids", "rejected_ids") if k in batch)
            tokens += n_tokens
            window_tokens += n_tokens
            elapsed += time.perf_counter() - t0
            loss_value = float(loss_sum) / count
            if held is not None and (step % config.eval_every == 0 or step == total_steps):
                eval_value = _eval_loss(base, held, config, dev)
            if metrics and (step % config.log_every == 0 or step == total_steps):
                now = time.perf_counter()
                tps = window_tokens / max(now - window_start, 1e-9)
                window_tokens, window_start = 0, now
                line = {"step": step, "loss": round(loss_value, 6),
                        "lr": scheduler.get_last_lr()[0], "tokens": tokens,
                        "tokens_per_s": round(tps, 1), "elapsed_s": round(elapsed, 3)}
                if (m := mfu(tps, per_token, peak, world)) is not None:
                    line["mfu"] = round(m, 4)
                if eval_value is not None:
                    line["eval_loss"] = round(eval_value, 6)
                metrics.write(json.dumps(line) + "\n")
                metrics.flush()
            if step % config.checkpoint_every == 0 and step < total_steps:
                model_state, optimizer_state = (
                    full_state(base, optimizer) if fsdp
                    else (_trainable_state(base, config.lora is not None), optimizer.state_dict()))
                if rank == 0:
                    loop._save_checkpoint(out_dir, {
                        "step": step, "tokens": tokens, "elapsed_s": elapsed,
                        "model": model_state, "optimizer": optimizer_state,
                        "scheduler": scheduler.state_dict(), "rng": torch.get_rng_state()})
    finally:
        if metrics:
            metrics.close()

    base.eval()
    summary = {"steps": step, "tokens": tokens, "seconds": round(elapsed, 3),
               "final_loss": loss_value, "eval_loss": eval_value, "params": params,
               "tokens_per_s": round(tokens / max(elapsed, 1e-9), 1), "mode": config.mode,
               "lora": config.lora is not None, "processes": world,
               "vocab_size": len(tokenizer), "size": config.student.size,
               "tokenizer": config.tokenizer.kind}
    if (m := mfu(summary["tokens_per_s"], per_token, peak, world)) is not None:
        summary["mfu"] = round(m, 4)
    if fsdp:
        whole, _ = full_state(base, optimizer)
        if rank == 0:
            base = load_student(out_dir / "initial")
            base.load_state_dict(whole)
    if rank == 0:
        if config.lora:
            loop._save_dir_atomic(out_dir / "adapter", lambda tmp: save_adapter(base, tmp))
        final = merge_lora(base) if config.lora and config.lora.merge else base
        loop._save_model(out_dir / "model", final.to("cpu"), tokenizer)
        write_json_atomic(summary_path, summary)
    _barrier()
    return summary
