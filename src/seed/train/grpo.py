"""GRPO: RL with verifiable rewards in the one training loop (`train.mode = "grpo"`).

The prompts are the train records' (each record's messages, a trailing assistant answer dropped),
rendered with the chat template's generation prompt. A step takes `grpo.prompts_per_step` of them
(a seeded shuffle per epoch, like every mode), and its rollout (`Layout.rollout`, the loop's seam
for modes whose rows come from the current weights) has each process sample `grpo.group`
completions for its share of them with the serving engine (rollouts.py), score each with the
reward, and turn the rewards into group-normalised advantages (losses.group_advantages). The rows
every process then trains on are prompt + completion, right-padded to one width, gathered from all
processes. The loss is the clipped policy objective (losses.grpo_loss) over completion tokens,
normalised per token over the whole step (DAPO's token mean) or per sequence (the GRPO paper's),
plus `beta` x the k3 KL to the starting model; beta = 0 builds no reference model at all, and the
update then skips the completions of groups whose rewards all agree (`informative`: no gradient).

One optimizer step per rollout batch, so the ratio's denominator, the rollout-time
log-probabilities, equals the policy's own (taken detached, as TRL does for one iteration: no
second forward). Every completion's sampling seed is a function of (seed, step, prompt, sample),
so a resumed run rolls out exactly what an uninterrupted one would. The reward is "task" (the
record's reasoning-gym verifier, seed.endpoints.tasks.score) or "package.module:function", called
with (record, completion text) and returning a float. Each step's reward, accuracy (the share of
completions with reward >= 1), KL (this process's completions) and completion length go to
metrics.jsonl and the progress line. This module knows nothing about optimizers or checkpoints.
"""

from __future__ import annotations

import copy
import importlib
import time
from collections.abc import Callable

import torch
import torch.distributed as dist

from seed.errors import UserError
from seed.recipe import GrpoSettings
from seed.records import Record
from seed.serve.engine_types import SamplingParams
from seed.train import shared_prompts
from seed.train.layout import Layout, ModeInputs, Rows, shuffled
from seed.train.losses import group_advantages, grpo_loss, k3_kl
from seed.train.rollouts import Completion, Rollouts
from seed.train.runtime import Runtime

Reward = Callable[[Record, str], float]


def load_reward(name: str) -> Reward:
    """The reward `train.grpo.reward` names: "task" or an importable "module:function"."""
    if name == "task":
        from seed.endpoints.tasks import score

        return score
    module, _, attr = name.partition(":")
    fix = "use \"task\" or \"package.module:function\" naming a function (record, text) -> float"
    if not module or not attr:
        raise UserError(f"train.grpo.reward = {name!r}: {fix}")
    try:
        fn = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as e:
        raise UserError(f"train.grpo.reward = {name!r} does not import ({e}); {fix}") from None
    if not callable(fn):
        raise UserError(f"train.grpo.reward = {name!r} is not a function; {fix}")
    return fn


def prompt_messages(record: Record, where: str) -> list[dict[str, str]]:
    """A record's prompt: its messages without a trailing assistant answer."""
    if record.tools is not None or any(m.tool_calls for m in record.messages):
        raise UserError(f"{where}: mode = 'grpo' samples text answers without tools, and this "
                        "record offers tools or holds tool calls; train it with mode = 'sft' "
                        "or leave it out")
    chat = record.prompt()
    if not chat:
        raise UserError(f"{where}: mode = 'grpo' needs a prompt (a user turn) in every record")
    return chat


def prompt_ids(inputs: ModeInputs) -> list[list[int]]:
    """Every train record's prompt, rendered with the chat template's generation prompt."""
    chats = [prompt_messages(r, f"{inputs.source} record {i + 1} ({r.id})")
             for i, r in enumerate(inputs.records)]
    texts = inputs.tokenizer.apply_chat_template(chats, tokenize=False, add_generation_prompt=True)
    return list(inputs.tokenizer(list(texts), add_special_tokens=False)["input_ids"])


def check(inputs: ModeInputs, width: int) -> None:
    """What GRPO cannot run with, as one-line errors."""
    config, grpo = inputs.config, inputs.config.grpo
    if config.lora:
        raise UserError("train.mode = 'grpo' trains all weights; drop [train.lora]")
    if inputs.runtime.sharded:
        raise UserError("train.mode = 'grpo' runs under train.distributed = 'ddp', not 'fsdp'")
    if config.eval_fraction:
        raise UserError("train.mode = 'grpo' has no held-out loss; set train.eval_fraction = 0 "
                        "(seed eval grades the student)")
    if grpo.prompts_per_step % inputs.runtime.world:
        raise UserError(f"train.grpo.prompts_per_step = {grpo.prompts_per_step} does not split "
                        f"over {inputs.runtime.world} processes; make it a multiple")
    source = inputs.records[0].provenance.source if inputs.records else None
    if grpo.reward == "task" and (source is None or source.kind != "tasks"):
        raise UserError(f"{inputs.source}: train.grpo.reward = \"task\" needs records from the "
                        "tasks teacher (reasoning-gym provenance); generate them with kind = "
                        "\"tasks\" or name a reward function \"package.module:function\"")
    context = getattr(inputs.model.config, "max_position_embeddings", None) or config.seq_len
    if width > min(context, config.seq_len):
        raise UserError(f"{inputs.source}: the longest prompt plus train.grpo.max_new_tokens is "
                        f"{width} tokens, over train.seq_len = {config.seq_len} (or the "
                        f"student's context, {context}); raise train.seq_len or lower "
                        "max_new_tokens")


def sample_seed(seed: int, step: int, prompt: int, sample: int) -> int:
    """The sampling seed of one completion: a pure function of where it is in the run."""
    return ((((seed * 1_000_003 + step) * 1_000_003 + prompt) * 1_009 + sample)
            % (2**63 - 1))


class Grpo:
    """The mode across steps: the prompts, the engine, the reference, the last step's log."""

    def __init__(self, inputs: ModeInputs):
        self.inputs, self.grpo = inputs, inputs.config.grpo
        self.records = inputs.records
        self.prompts = prompt_ids(inputs)
        self.width = max(len(p) for p in self.prompts) + self.grpo.max_new_tokens
        check(inputs, self.width)
        self.reward = load_reward(self.grpo.reward)
        self.runtime = inputs.runtime
        # the starting weights, before the loop trains them in place
        self.reference = (self.runtime.place(copy.deepcopy(inputs.model).eval()
                                             .requires_grad_(False)) if self.grpo.beta else None)
        self.rollouts: Rollouts | None = None
        self.log: dict[str, float] = {}
        self.kl_sum, self.kl_tokens = 0.0, 0

    def params(self, step: int, prompt: int) -> list[SamplingParams]:
        g = self.grpo
        return [SamplingParams(max_tokens=g.max_new_tokens, temperature=g.temperature,
                               top_p=g.top_p, seed=sample_seed(self.inputs.seed, step, prompt, k))
                for k in range(g.group)]

    def rollout(self, policy: torch.nn.Module, batch: Rows, step: int) -> Rows:
        """A step's prompts -> every process's completions as rows, with their advantages."""
        start = time.perf_counter()
        mine = batch["prompt"][self.runtime.rank::self.runtime.world].tolist()
        if self.rollouts is None:
            self.rollouts = Rollouts(policy, self.inputs.tokenizer,
                                     max(1, len(mine)) * self.grpo.group)
        done = self.rollouts.sample(policy, [self.prompts[i] for i in mine],
                                    [self.params(step, i) for i in mine])
        rows = gather(self.rows(mine, done), self.runtime)
        if self.reference is not None:
            rows["reference"] = self.logprobs(self.reference, rows)
        n = len(rows["reward"])
        self.log = {"reward": float(rows["reward"].mean()),
                    "accuracy": float((rows["reward"] >= 1).float().mean()),
                    "completion_len": float(rows["mask"].sum()) / n,
                    "rollout_s": time.perf_counter() - start}
        return rows if self.grpo.beta else informative(rows, self.runtime.world)

    def rows(self, prompts: list[int], done: list[list[Completion]]) -> Rows:
        """This process's completions as rows: ids, completion mask, reward, advantage, and the
        weight and count of their tokens in the step's normalisation."""
        n, pad = len(prompts) * self.grpo.group, int(self.inputs.pad_id)
        seqs, starts, ends, scores = [], [], [], []
        for i, completions in zip(prompts, done, strict=True):
            prompt = self.prompts[i]
            for c in completions:
                seqs.append(prompt + c.ids + [pad] * (self.width - len(prompt) - len(c.ids)))
                starts.append(len(prompt))
                ends.append(len(prompt) + len(c.ids))
                scores.append(float(self.reward(self.records[i], c.text)))
        ids = torch.tensor(seqs, dtype=torch.long).reshape(n, self.width)
        column = torch.arange(self.width)
        mask = ((column >= torch.tensor(starts)[:, None])
                & (column < torch.tensor(ends)[:, None])).long()
        rewards = torch.tensor(scores, dtype=torch.float32)
        lengths = mask.sum(1).clamp(min=1)
        token_mean = self.grpo.normalise == "token"
        return {"input_ids": ids, "mask": mask, "reward": rewards,
                "advantage": group_advantages(rewards, self.grpo.group, self.grpo.scale_rewards),
                "weight": torch.ones(n) if token_mean else 1.0 / lengths.float(),
                "units": mask.sum(1) if token_mean else torch.ones(n, dtype=torch.long)}

    @torch.no_grad()
    def logprobs(self, model: torch.nn.Module, rows: Rows) -> torch.Tensor:
        """(rows, width - 1): each token's log-probability under `model`, in micro-batches."""
        out = []
        size = self.inputs.config.batch_size
        for start in range(0, len(rows["input_ids"]), size):
            ids = rows["input_ids"][start:start + size].to(self.runtime.device)
            mask = rows["mask"][start:start + size].to(self.runtime.device)
            with self.runtime.autocast():
                out.append(token_logprobs(model, ids, mask, self.grpo.temperature).cpu())
        return torch.cat(out)

    def loss(self, model: torch.nn.Module, rows: Rows) -> tuple[torch.Tensor, int]:
        lp = token_logprobs(model, rows["input_ids"], rows["mask"], self.grpo.temperature)
        mask = rows["mask"][:, 1:].to(lp.dtype)
        reference = rows.get("reference")
        if reference is not None:
            with torch.no_grad():
                self.kl_sum += float((k3_kl(lp, reference) * mask).sum())
                self.kl_tokens += int(mask.sum())
        total = grpo_loss(lp, lp.detach(), rows["advantage"], mask, rows["weight"],
                          self.grpo.clip, reference, self.grpo.beta)
        return total, count(rows)

    def step_log(self) -> dict[str, float]:
        """The last step's reward, accuracy, completion length, rollout seconds (and KL)."""
        line = dict(self.log)
        if self.kl_tokens:
            line["kl"] = self.kl_sum / self.kl_tokens
        self.kl_sum, self.kl_tokens = 0.0, 0
        return line


def informative(rows: Rows, world: int) -> Rows:
    """The rows of groups whose rewards differ: without a KL term, a completion whose advantage
    is 0 adds nothing to the gradient, so the update skips it (as DAPO's dynamic sampling keeps
    such groups out of the batch) and the loss is the mean over the completions that teach. At
    least one row per process stays (and a multiple of the processes, so every rank runs as many
    micro-batches): a step where every group agreed is then a step of zero loss."""
    keep = (rows["advantage"] != 0).nonzero().flatten().tolist()
    need = max(world, -(-len(keep) // world) * world)
    if len(keep) < need:
        kept = set(keep)
        keep += [i for i in range(len(rows["advantage"])) if i not in kept][:need - len(keep)]
    index = torch.tensor(sorted(keep))
    return {k: v[index] for k, v in rows.items()}


def token_logprobs(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor,
                   temperature: float) -> torch.Tensor:
    """(rows, len - 1): the log-probability of each token after the first given the ones before,
    from logits divided by the sampling temperature (the distribution the engine sampled).

    Only the columns from the first completion token (`mask`) to the last are computed, the rest
    are 0: the batch is cut after its last completion token (causal attention: nothing before
    changes) and the logits are kept from the position before the first one (TRL's
    `logits_to_keep`), so the padding and the prompts cost no output layer or softmax. Where
    rows share prompts (a group's G completions), each prompt runs once (shared_prompts.py).
    """
    shared = shared_prompts.logprobs(model, ids, mask, temperature)
    if shared is not None:
        return shared
    cols = mask.any(0).nonzero().flatten().tolist()
    first, last = (max(cols[0], 1), cols[-1]) if cols else (1, 1)
    kept = ({"logits_to_keep": last - first + 2}
            if shared_prompts.forward_takes(model, "logits_to_keep") else {})
    logits = model(input_ids=ids[:, :last + 1], use_cache=False, **kept).logits
    logits = logits[:, -(last - first + 2):-1].float() / temperature
    lp = torch.log_softmax(logits, dim=-1).gather(-1, ids[:, first:last + 1, None]).squeeze(-1)
    return torch.nn.functional.pad(lp, (first - 1, ids.shape[1] - 1 - last))


def count(rows: Rows) -> int:
    """What the step's loss is averaged over: completion tokens, or completions."""
    return int(rows["units"].sum())


def gather(rows: Rows, runtime: Runtime) -> Rows:
    """Every process's rows, in rank order (each holds whole groups; all have the same shape)."""
    if runtime.world == 1:
        return rows
    out = {}
    for key, value in rows.items():
        local = value.to(runtime.device)
        parts = [torch.empty_like(local) for _ in range(runtime.world)]
        dist.all_gather(parts, local)
        out[key] = torch.cat(parts).cpu()
    return out


def layout(inputs: ModeInputs) -> Layout:
    """One row per prompt (its index) before the rollout; completions after it."""
    if not inputs.records:
        raise UserError(f"{inputs.source}: no prompt to train on")
    mode = Grpo(inputs)
    grpo: GrpoSettings = inputs.config.grpo

    def epoch_rows(epoch: int) -> Rows:
        return {"prompt": torch.tensor(shuffled(range(len(mode.prompts)), inputs.seed, epoch))}

    return Layout(epoch_rows, mode.loss, count, f"one prompt x {grpo.group} completions",
                  inputs.source, step_rows=grpo.prompts_per_step, rollout=mode.rollout,
                  step_log=mode.step_log)
