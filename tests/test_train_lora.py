"""LoRA on a local checkpoint: the loss falls, merged equals base + adapter, resume works."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from peft import PeftModel
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from helpers.models import tiny_model
from helpers.recipes import SMALL
from helpers.training import metrics, sums, write_chats
from seed.recipe import TrainConfig
from seed.train import train_student


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, TrainConfig]:
    tmp = tmp_path_factory.mktemp("lora")
    base = tiny_model(tmp / "base", tokenizer="digits", size="nano")
    records = write_chats(tmp / "train.jsonl", sums())
    config = TrainConfig.model_validate({**SMALL, "student": {"checkpoint": str(base)},
                                         "lora": {"rank": 8, "alpha": 16}, "max_steps": 16,
                                         "checkpoint_every": 8})
    train_student(records, tmp / "out", config, seed=3)
    return tmp, records, config


def test_lora_training_lowers_the_loss_and_trains_only_the_adapter(lora_run) -> None:
    tmp, _, _ = lora_run
    losses = [m["loss"] for m in metrics(tmp / "out")]
    assert len(losses) == 16
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.25  # nats per token
    adapter = load_file(tmp / "out" / "adapter" / "adapter_model.safetensors")
    assert adapter and all("lora_" in name for name in adapter)


def test_merged_model_equals_base_plus_adapter(lora_run) -> None:
    tmp, _, _ = lora_run
    base = AutoModelForCausalLM.from_pretrained(tmp / "out" / "initial").eval()
    with_adapter = PeftModel.from_pretrained(base, tmp / "out" / "adapter").eval()
    merged = AutoModelForCausalLM.from_pretrained(tmp / "out" / "model").eval()
    ids = torch.tensor([[5, 17, 33, 8, 2, 40, 41, 9]])
    with torch.no_grad():
        expected = with_adapter(input_ids=ids).logits
        got = merged(input_ids=ids).logits
        untouched = AutoModelForCausalLM.from_pretrained(tmp / "base")(input_ids=ids).logits
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, untouched, atol=1e-3)  # the adapter did change something
    # One weight by hand: W + (alpha / rank) * B @ A.
    adapter = load_file(tmp / "out" / "adapter" / "adapter_model.safetensors")
    a = next(v for k, v in adapter.items() if "layers.0.self_attn.q_proj.lora_A" in k)
    b = next(v for k, v in adapter.items() if "layers.0.self_attn.q_proj.lora_B" in k)
    w0 = load_file(tmp / "base" / "model.safetensors")["model.layers.0.self_attn.q_proj.weight"]
    w1 = merged.model.layers[0].self_attn.q_proj.weight.detach()
    assert torch.allclose(w1, w0 + (16 / 8) * b @ a, atol=1e-6)


def test_lora_run_resumes_from_its_checkpoint_to_the_same_weights(lora_run) -> None:
    tmp, records, config = lora_run
    out = tmp / "resumed"
    shutil.copytree(tmp / "out", out)
    shutil.rmtree(out / "model")
    (out / "summary.json").unlink()
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000008"]
    train_student(records, out, config, seed=3)
    first = load_file(tmp / "out" / "model" / "model.safetensors")
    again = load_file(out / "model" / "model.safetensors")
    assert first.keys() == again.keys()
    assert all(torch.allclose(first[k], again[k], atol=1e-6) for k in first)
    assert [m["step"] for m in metrics(out)] == list(range(1, 17))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_qlora_without_a_gpu_is_a_clear_error_not_a_full_precision_run() -> None:
    from seed.errors import UserError
    from seed.recipe import LoraSettings
    from seed.train.lora import quantized_load_kwargs

    assert quantized_load_kwargs(LoraSettings()) == {}
    with pytest.raises(UserError, match="needs the bitsandbytes package and a CUDA GPU"):
        quantized_load_kwargs(LoraSettings(load_in_4bit=True))
