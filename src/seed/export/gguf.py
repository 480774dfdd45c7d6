"""`seed export gguf`: a Llama-family student as one GGUF file that llama.cpp and Ollama run.

Reads a saved transformers model directory (config.json, safetensors weights, tokenizer.json and
the chat template) and writes what llama.cpp's own convert_hf_to_gguf.py writes for a
LlamaForCausalLM: architecture "llama", its hyperparameters, tensors under llama.cpp's names
(gguf's tensor map), the query and key projections permuted from Hugging Face's rotary layout
(halves) into llama.cpp's (interleaved pairs), no `output` tensor when the embeddings are tied,
and the tokenizer (seed.export.gguf_vocab) with the chat template. An Ollama `Modelfile` is written
beside it (seed.export.modelfile).

dtype: f16 by default (half the size of f32, the converter's default; llama.cpp computes in f32
either way and the loss from rounding the weights is ~1e-3 relative), f32 for bit-exact weights
(what a greedy-decoding comparison wants), q8_0 for a quarter of the size. Norm vectors stay f32,
as the converter keeps them. Both files are written under a temporary name and renamed, so a
killed export leaves no half file. This module does not quantize below 8 bits, merge LoRA
adapters (Seed saves merged students) or run the file.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import (
    GGML_QUANT_SIZES,
    MODEL_ARCH,
    MODEL_ARCH_NAMES,
    GGMLQuantizationType,
    GGUFWriter,
    LlamaFileType,
    get_tensor_name_map,
)
from gguf.quants import quantize
from safetensors import SafetensorError
from safetensors.torch import load_file

from seed.errors import UserError, first_line
from seed.export.gguf_vocab import Vocab, read_vocab
from seed.export.modelfile import modelfile_text
from seed.files import fsync_path, write_text_atomic

DTYPES: dict[str, tuple[GGMLQuantizationType, LlamaFileType]] = {
    "f32": (GGMLQuantizationType.F32, LlamaFileType.ALL_F32),
    "f16": (GGMLQuantizationType.F16, LlamaFileType.MOSTLY_F16),
    "q8_0": (GGMLQuantizationType.Q8_0, LlamaFileType.MOSTLY_Q8_0),
}
# Where a run directory (runs/<name>/) or `seed train --out` keeps its final student.
MODEL_PLACES = ("rl/model", "train/model", "model")


@dataclass(frozen=True)
class Exported:
    """What an export wrote."""

    path: Path
    size: int  # bytes
    tensors: int
    modelfile: Path
    vocab_pre: str  # llama.cpp's pre-tokenizer the vocabulary was matched to


def find_model_dir(path: Path) -> Path:
    """The model directory `path` names: itself, or the student inside a run directory."""
    if (path / "config.json").is_file():
        return path
    for place in MODEL_PLACES:
        if (path / place / "config.json").is_file():
            return path / place
    raise UserError(f"{path}: not a model directory (no config.json) nor a run directory with "
                    f"{' or '.join(p + '/' for p in MODEL_PLACES)}; point it at a trained "
                    "student")


def _read_config(model_dir: Path) -> dict[str, Any]:
    try:
        config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise UserError(f"{model_dir / 'config.json'}: does not read as JSON ({first_line(e)})"
                        "; re-save the model") from None
    architectures = config.get("architectures") or []
    if config.get("model_type") != "llama" or architectures not in ([], ["LlamaForCausalLM"]):
        found = f"model_type {config.get('model_type')!r}" + (
            f" ({', '.join(map(str, architectures))})" if architectures else "")
        raise UserError(f"{model_dir / 'config.json'}: {found} is not a Llama-family causal LM; "
                        "seed export gguf writes LlamaForCausalLM students (model_type 'llama')")
    rope = config.get("rope_parameters") or config.get("rope_scaling") or {}
    if rope.get("rope_type", "default") != "default":
        raise UserError(f"{model_dir / 'config.json'}: rope_type {rope.get('rope_type')!r} is "
                        "not exported; only default rotary embeddings are")
    return config


def _rope_theta(config: dict[str, Any]) -> float:
    rope = config.get("rope_parameters") or {}
    return float(rope.get("rope_theta", config.get("rope_theta", 10000.0)))


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    index = model_dir / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    weights: dict[str, torch.Tensor] = {}
    for name in files:
        if not (model_dir / name).is_file():
            raise UserError(f"{model_dir}: no {name}; export reads safetensors weights, as "
                            "save_pretrained writes them")
        try:
            weights.update(load_file(model_dir / name))
        except (OSError, SafetensorError) as e:
            raise UserError(f"{model_dir / name}: does not load ({first_line(e)}); re-save the "
                            "model") from None
    return weights


def permute_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """A q_proj / k_proj weight from Hugging Face's rotary layout (each head's first half rotates
    with its second) to llama.cpp's (adjacent pairs); `heads` is the projection's head count."""
    rows = weight.shape[0]
    return (weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def unpermute_rotary(weight: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of `permute_rotary`: llama.cpp's layout back to Hugging Face's."""
    rows = weight.shape[0]
    return (weight.reshape(heads, rows // heads // 2, 2, *weight.shape[1:])
            .swapaxes(1, 2).reshape(weight.shape))


def _encode(data: np.ndarray, dtype: GGMLQuantizationType
            ) -> tuple[np.ndarray, GGMLQuantizationType]:
    """A tensor in the file's type: vectors and rows that do not fill quant blocks stay wider."""
    if data.ndim == 1:
        return data.astype(np.float32), GGMLQuantizationType.F32
    if dtype == GGMLQuantizationType.F32:
        return data.astype(np.float32), dtype
    if dtype == GGMLQuantizationType.F16:
        return data.astype(np.float16), dtype
    if data.shape[-1] % GGML_QUANT_SIZES[dtype][0]:
        return data.astype(np.float16), GGMLQuantizationType.F16
    return quantize(data.astype(np.float32), dtype), dtype


def _add_metadata(writer: GGUFWriter, config: dict[str, Any], vocab: Vocab, name: str,
                  file_type: LlamaFileType) -> None:
    heads = int(config["num_attention_heads"])
    head_dim = int(config.get("head_dim") or config["hidden_size"] // heads)
    writer.add_name(name)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_head_count(heads)
    writer.add_head_count_kv(int(config.get("num_key_value_heads") or heads))
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_layer_norm_rms_eps(float(config.get("rms_norm_eps", 1e-6)))
    writer.add_vocab_size(int(config["vocab_size"]))
    writer.add_rope_dimension_count(head_dim)
    if head_dim != int(config["hidden_size"]) // heads:
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    writer.add_file_type(file_type)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    writer.add_token_types(vocab.types)
    writer.add_token_merges(vocab.merges)
    if vocab.bos_id is not None:
        writer.add_bos_token_id(vocab.bos_id)
    if vocab.eos_id is not None:
        writer.add_eos_token_id(vocab.eos_id)
    if vocab.pad_id is not None:
        writer.add_pad_token_id(vocab.pad_id)
    # Seed's template starts every turn with a role token; nothing goes before it.
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    if vocab.chat_template:
        writer.add_chat_template(vocab.chat_template)


def _add_tensors(writer: GGUFWriter, config: dict[str, Any], weights: dict[str, torch.Tensor],
                 dtype: GGMLQuantizationType, where: Path) -> int:
    heads = int(config["num_attention_heads"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    names = get_tensor_name_map(MODEL_ARCH.LLAMA, int(config["num_hidden_layers"]))
    tied = bool(config.get("tie_word_embeddings", False))
    count = 0
    for hf_name in sorted(weights):
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reads token_embd when there is no output tensor
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue  # recomputed from rope_freq_base
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"{where}: weight {hf_name!r} has no llama.cpp tensor; export writes "
                            "plain LlamaForCausalLM weights")
        data = weights[hf_name].float().numpy()
        if hf_name.endswith("q_proj.weight"):
            data = permute_rotary(data, heads)
        elif hf_name.endswith("k_proj.weight"):
            data = permute_rotary(data, kv_heads)
        encoded, raw = _encode(data, dtype)
        if raw in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            writer.add_tensor(name, encoded)
        else:
            writer.add_tensor(name, encoded, raw_dtype=raw)
        count += 1
    return count


def default_out(model_dir: Path, dtype: str) -> Path:
    """`<model dir>/../<run name or model dir name>-<dtype>.gguf`, beside the model directory."""
    run = model_dir.parent if model_dir.name == "model" else model_dir
    stem = (run.parent.name if run.name in ("train", "rl") else run.name) or "model"
    return model_dir.parent / f"{stem}-{dtype}.gguf"


def export_gguf(path: Path, out: Path | None = None, dtype: str = "f16") -> Exported:
    """Write the student in `path` (a model or run directory) as GGUF, and its Modelfile."""
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype!r}: use one of {', '.join(DTYPES)}")
    model_dir = find_model_dir(path)
    config = _read_config(model_dir)
    vocab = read_vocab(model_dir, config, int(config["vocab_size"]))
    weights = _weights(model_dir)
    out = out or default_out(model_dir, dtype)
    if out.suffix != ".gguf":
        raise UserError(f"--out {str(out)!r}: name the file with a .gguf suffix")
    if out.is_dir():
        raise UserError(f"--out {str(out)!r}: is a directory; name the .gguf file to write")
    out.parent.mkdir(parents=True, exist_ok=True)
    qtype, file_type = DTYPES[dtype]
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    try:
        writer = GGUFWriter(tmp, MODEL_ARCH_NAMES[MODEL_ARCH.LLAMA])
        _add_metadata(writer, config, vocab, out.stem, file_type)
        count = _add_tensors(writer, config, weights, qtype, model_dir)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        fsync_path(tmp)
        os.replace(tmp, out)
        fsync_path(out.parent)
    finally:
        tmp.unlink(missing_ok=True)
    modelfile = out.parent / "Modelfile"
    write_text_atomic(modelfile, modelfile_text(out.name, vocab, config, model_dir))
    return Exported(out, out.stat().st_size, count, modelfile, vocab.pre)
