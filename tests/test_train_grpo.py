"""GRPO: hand-checked advantages and loss, rollouts from the current weights, a reward that rises,
a crashed run that resumes into the same weights, DDP equal to one process, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from helpers.cli import ROOT, assert_one_line_error, cli_env, run_cli, torchrun
from helpers.models import tiny_model
from helpers.recipes import SMALL, write_recipe
from helpers.training import metrics
from seed.errors import UserError
from seed.recipe import TrainConfig
from seed.serve.engine_types import SamplingParams
from seed.train import train_student
from seed.train.grpo import sample_seed
from seed.train.losses import group_advantages, grpo_loss, k3_kl
from seed.train.rollouts import Rollouts
from seed.train.tokenizer import load_saved_tokenizer

CRASH = {"after": None, "calls": 0}  # digit_share raises on call `after` (a crash mid-run)


def digit_share(record, text: str) -> float:
    """A reward a random student can climb: the share of its completion's characters that are
    digits (the digits tokenizer has one token per digit)."""
    CRASH["calls"] += 1
    if CRASH["after"] is not None and CRASH["calls"] > CRASH["after"]:
        raise RuntimeError("crash in the middle of a run")
    return sum(c.isdigit() for c in text) / len(text) if text else 0.0


REWARD = f"{__name__}:digit_share"


def _config(base: Path, **grpo: object) -> TrainConfig:
    return TrainConfig.model_validate({
        **SMALL, "mode": "grpo", "batch_size": 64, "student": {"checkpoint": str(base)},
        "grpo": {"group": 8, "prompts_per_step": 8, "max_new_tokens": 4, "reward": REWARD,
                 **grpo}})


def test_advantages_and_loss_on_a_hand_checked_group() -> None:
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
    adv = group_advantages(rewards, 4)
    s = 0.5 / ((4 * 0.25 / 3) ** 0.5 + 1e-4)  # the std unbiased, as the GRPO paper and TRL
    assert adv[:4].tolist() == pytest.approx([s, -s, -s, s])
    assert adv[4:].tolist() == [0.0] * 4  # a group of equal rewards teaches nothing
    assert group_advantages(rewards, 4, scale=False)[:4].tolist() == [0.5, -0.5, -0.5, 0.5]

    # Two completions of two tokens each (the second row's last token is padding).
    lp = torch.tensor([[-1.0, -2.0], [-0.5, -3.0]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0]])
    a = torch.tensor([2.0, -1.0])
    loss = grpo_loss(lp, lp.detach(), a, mask, torch.ones(2), clip=0.2)
    assert float(loss.detach()) == pytest.approx(-(2 + 2) + 1)  # -sum(ratio 1 x A) over real tokens
    loss.backward()
    assert lp.grad.tolist() == [[-2.0, -2.0], [1.0, 0.0]]  # raise the good, lower the bad
    # A ratio past 1 + clip with a positive advantage is clipped: no gradient from that token.
    lp2 = torch.tensor([[0.0]], requires_grad=True)
    old = torch.tensor([[-0.5]])  # ratio e^0.5 = 1.65 > 1.2
    clipped = grpo_loss(lp2, old, torch.tensor([1.0]), torch.ones(1, 1), torch.ones(1), clip=0.2)
    assert float(clipped.detach()) == pytest.approx(-1.2)
    clipped.backward()
    assert lp2.grad.tolist() == [[0.0]]
    # Per-sequence weights and the k3 KL: zero at the reference, positive away from it.
    assert float(k3_kl(torch.tensor([-1.0]), torch.tensor([-1.0]))) == 0.0
    # ref - lp = -1: e^-1 - (-1) - 1 = e^-1
    assert float(k3_kl(torch.tensor([-1.0]), torch.tensor([-2.0]))) == pytest.approx(0.3678794)
    seq = grpo_loss(lp.detach(), lp.detach(), a, mask, torch.tensor([0.5, 1.0]), clip=0.2)
    assert float(seq) == pytest.approx(-(2 + 2) * 0.5 + 1)


def test_rollouts_sample_the_weights_the_policy_has_now(tiny_model_dir: Path,
                                                        tmp_path: Path) -> None:
    other = tiny_model(tmp_path / "other", tokenizer="digits", size="nano", context=128, seed=3,
                       texts=["Calculate 12 + 34.", "46", "Hello there, how are you?",
                              "Fine, thanks!"] * 20, vocab=300)
    tok = load_saved_tokenizer(tiny_model_dir)
    policy = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    prompt = [list(tok("<|user|>Calculate 12 + 34.<|end|><|assistant|>",
                       add_special_tokens=False)["input_ids"])]
    params = [[SamplingParams(max_tokens=6, seed=sample_seed(0, 0, 0, k)) for k in range(4)]]
    rollouts = Rollouts(policy, tok, 4)
    try:
        first = [c.ids for c in rollouts.sample(policy, prompt, params)[0]]
        assert [c.ids for c in rollouts.sample(policy, prompt, params)[0]] == first  # seeded
        with torch.no_grad():  # the policy changes in place, as an optimizer step changes it
            policy.load_state_dict(AutoModelForCausalLM.from_pretrained(other).state_dict())
        after = [c.ids for c in rollouts.sample(policy, prompt, params)[0]]
    finally:
        rollouts.stop()
    fresh = Rollouts(AutoModelForCausalLM.from_pretrained(other), tok, 4)
    try:
        expected = [c.ids for c in fresh.sample(fresh.model, prompt, params)[0]]
    finally:
        fresh.stop()
    assert after == expected and after != first
    assert all(p.requires_grad for p in policy.parameters())  # the engine froze only its copy


def test_grpo_climbs_the_reward_and_logs_each_step(arithmetic_data: Path,
                                                   tiny_model_dir: Path, tmp_path: Path) -> None:
    CRASH.update(after=None, calls=0)
    out = tmp_path / "out"
    summary = train_student(arithmetic_data / "train.jsonl", out, _config(tiny_model_dir), seed=0)
    assert summary["mode"] == "grpo" and summary["steps"] == 12
    lines = metrics(out)
    assert [m["step"] for m in lines] == list(range(1, 13))
    for key in ("reward", "accuracy", "completion_len", "rollout_s", "update_s"):
        assert all(key in m for m in lines), key
    assert "kl" not in lines[0]  # beta = 0: no reference model, no KL
    assert all(1 <= m["completion_len"] <= 4 for m in lines)  # the end token counts
    early = sum(m["reward"] for m in lines[:3]) / 3
    late = sum(m["reward"] for m in lines[-3:]) / 3
    assert early < 0.15 and late > early + 0.15, [m["reward"] for m in lines]


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def test_a_crashed_run_resumes_into_the_weights_of_an_uninterrupted_one(
        arithmetic_data: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    records = arithmetic_data / "train.jsonl"
    config = _config(tiny_model_dir, beta=0.1).model_copy(
        update={"max_steps": 6, "checkpoint_every": 3})
    per_step = 8 * 8  # reward calls a step: prompts x group
    CRASH.update(after=4 * per_step + 5, calls=0)  # in step 5, after the step-3 checkpoint
    with pytest.raises(RuntimeError, match="crash"):
        train_student(records, tmp_path / "crashed", config, seed=0)
    assert (tmp_path / "crashed" / "checkpoints" / "step-00000003").is_dir()
    CRASH.update(after=None, calls=0)
    resumed = train_student(records, tmp_path / "crashed", config, seed=0)
    whole = train_student(records, tmp_path / "whole", config, seed=0)
    assert resumed["steps"] == whole["steps"] == 6
    assert [m["reward"] for m in metrics(tmp_path / "crashed")] == [
        m["reward"] for m in metrics(tmp_path / "whole")]
    assert all("kl" in m for m in metrics(tmp_path / "whole"))
    a, b = _weights(tmp_path / "crashed" / "model"), _weights(tmp_path / "whole" / "model")
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize(("change", "needle"), [
    ({"grpo": {"reward": "no_such_module:fn"}}, "train.grpo.reward"),
    ({"grpo": {"max_new_tokens": 40}}, "train.seq_len"),
    ({"eval_fraction": 0.1}, "train.eval_fraction"),
    ({"lora": {"rank": 4}}, "train.lora"),
])
def test_bad_grpo_settings_are_one_sentence_errors(arithmetic_data: Path, tiny_model_dir: Path,
                                                   tmp_path: Path, change: dict,
                                                   needle: str) -> None:
    data = _config(tiny_model_dir).model_dump()
    for key, value in change.items():
        data[key] = {**data[key], **value} if isinstance(value, dict) and data.get(key) else value
    with pytest.raises(UserError, match=needle.replace(".", r"\.")):
        train_student(arithmetic_data / "train.jsonl", tmp_path / "out",
                      TrainConfig.model_validate(data), seed=0)


def test_cli_names_a_bad_group_size_in_one_line(arithmetic_data: Path, tmp_path: Path) -> None:
    recipe = write_recipe(tmp_path / "r.toml", {
        "name": "g", "generate": {"teacher": {"kind": "tasks"}},
        "train": {"mode": "grpo", "grpo": {"group": 1}}})
    proc = run_cli("train", arithmetic_data / "train.jsonl", "--out", tmp_path / "o",
                   "--recipe", recipe)
    assert_one_line_error(proc, "train.grpo.group")
    assert not (tmp_path / "o").exists()


SCRIPT = """
import json, sys
from pathlib import Path
from seed.recipe import TrainConfig
from seed.train import train_student
train_student(Path(sys.argv[1]), Path(sys.argv[2]),
              TrainConfig.model_validate(json.loads(sys.argv[3])), seed=0)
"""


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_two_process_ddp_rolls_out_and_steps_like_one_process(
        arithmetic_data: Path, tiny_model_dir: Path, tmp_path: Path) -> None:
    """Each rank samples half the step's prompts with the same per-completion seeds, so two
    processes see the rollouts, rewards and losses of one."""
    config = {**_config(tiny_model_dir).model_dump(mode="json"), "max_steps": 2}
    script = tmp_path / "train.py"
    script.write_text(SCRIPT)
    records = arithmetic_data / "train.jsonl"
    for name, launcher in [("one", [sys.executable]), ("two", torchrun(2))]:
        done = subprocess.run([*launcher, str(script), str(records), str(tmp_path / name),
                               json.dumps(config)], capture_output=True, text=True,
                              timeout=240, cwd=ROOT, env=cli_env(
                                  inherit=False, OMP_NUM_THREADS="1",
                                  PYTHONPATH=f"{ROOT / 'src'}:{ROOT / 'tests'}"))
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["processes"] == 2
    assert [m["step"] for m in two] == [1, 2]
    for a, b in zip(one, two, strict=True):
        assert b["reward"] == a["reward"] and b["completion_len"] == a["completion_len"]
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3, abs=1e-6)
