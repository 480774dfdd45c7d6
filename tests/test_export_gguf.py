"""`seed export gguf`: the file read back with gguf's own reader holds the student's every weight
under llama.cpp's names and layout, its hyperparameters, and a tokenizer llama.cpp splits as
`tokenizers` does; the Modelfile beside it speaks Seed's template. No llama.cpp here
(benchmarks/gguf_llama_cpp.py runs the file in it)."""

from __future__ import annotations

import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import regex
import torch
from gguf import GGMLQuantizationType, GGUFReader, TokenType
from gguf.quants import dequantize
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer
from transformers.models.llama.modeling_llama import rotate_half

from helpers.cli import assert_one_line_error, run_cli
from helpers.models import CORPUS, tiny_model
from seed.errors import UserError
from seed.export.gguf import export_gguf, unpermute_rotary
from seed.train.tokenizer import CHAT_TEMPLATE

TEXTS = [
    "Calculate 58 + 37.", "12345 + 678 = 13023", "  two  spaces and\n\nnewlines\t tab ",
    "it's 3.14, ünïcödé 中文 😀!", "x<|end|>y<|user|>z", "The quick brown fox's 42 dogs.",
]


@pytest.fixture(scope="module")
def students(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A nano student per Seed tokenizer kind (with merges where the kind learns them), and a
    chat checkpoint with grouped-query attention (2 key/value heads for 4 query heads)."""
    root = tmp_path_factory.mktemp("students")
    texts = CORPUS * 3 + [f"{a} + {b} = {a + b}" for a in range(40) for b in range(0, 90, 7)]
    out = {kind: tiny_model(root / kind, tokenizer=kind, size="nano", texts=texts, vocab=330)
           for kind in ("digits", "bpe", "chars")}
    out["gqa"] = tiny_model(root / "gqa")
    return out


def _fields(reader: GGUFReader) -> dict:
    return {name: field.contents() for name, field in reader.fields.items()}


def _tensors(reader: GGUFReader) -> dict:
    return {t.name: t for t in reader.tensors}


def _hf_weights(model_dir: Path) -> dict[str, np.ndarray]:
    return {k: v.float().numpy() for k, v in load_file(model_dir / "model.safetensors").items()}


def _converter_permute(w: np.ndarray, n_head: int, n_head_kv: int | None) -> np.ndarray:
    """llama.cpp's convert_hf_to_gguf.py LlamaModel.permute, as written there."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
            .swapaxes(1, 2).reshape(w.shape))


def _gguf_name(hf: str) -> str:
    if hf == "model.embed_tokens.weight":
        return "token_embd.weight"
    if hf == "model.norm.weight":
        return "output_norm.weight"
    layer, rest = hf.removeprefix("model.layers.").split(".", 1)
    name = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k",
            "self_attn.v_proj": "attn_v", "self_attn.o_proj": "attn_output",
            "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up", "mlp.down_proj": "ffn_down",
            "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}[
                rest.removesuffix(".weight")]
    return f"blk.{layer}.{name}.weight"


@pytest.mark.parametrize("kind", ["digits", "gqa"])
def test_f32_holds_every_weight_exactly_in_llama_cpp_layout(students, tmp_path, kind):
    model_dir = students[kind]
    config = json.loads((model_dir / "config.json").read_text())
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    done = export_gguf(model_dir, tmp_path / "s.gguf", "f32")
    tensors = _tensors(GGUFReader(done.path))
    hf = _hf_weights(model_dir)
    assert "lm_head.weight" not in hf and config["tie_word_embeddings"]
    assert sorted(tensors) == sorted(_gguf_name(k) for k in hf)  # tied: no output tensor
    assert done.tensors == len(hf) == len(tensors)
    for hf_name, want in hf.items():
        t = tensors[_gguf_name(hf_name)]
        assert t.tensor_type == GGMLQuantizationType.F32
        assert list(t.shape) == list(reversed(want.shape))  # GGUF lists dims innermost first
        got = np.asarray(t.data).reshape(want.shape)
        if hf_name.endswith("q_proj.weight"):
            assert np.array_equal(got, _converter_permute(want, heads, heads))
            got = unpermute_rotary(got, heads)
        elif hf_name.endswith("k_proj.weight"):
            assert np.array_equal(got, _converter_permute(want, heads, kv_heads))
            got = unpermute_rotary(got, kv_heads)
        assert np.array_equal(got, want), hf_name


def _rope_pairs(x: torch.Tensor, pos: int, theta: float) -> torch.Tensor:
    """ggml's rope for LLM_ARCH_LLAMA (NORM): dims (2i, 2i+1) rotate by pos * theta^(-2i/d)."""
    d = x.shape[-1]
    angle = pos * theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    even, odd = x[..., 0::2], x[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = even * angle.cos() - odd * angle.sin()
    out[..., 1::2] = even * angle.sin() + odd * angle.cos()
    return out


def _rope_halves(x: torch.Tensor, pos: int, theta: float) -> torch.Tensor:
    """transformers' Llama rope: dim i rotates with i + d/2 (rotate_half)."""
    d = x.shape[-1]
    angle = pos * theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    cos, sin = torch.cat([angle.cos()] * 2), torch.cat([angle.sin()] * 2)
    return x * cos + rotate_half(x) * sin


def test_permuted_projections_give_llama_cpp_the_attention_scores_transformers_computes(
        students, tmp_path):
    model_dir = students["gqa"]
    config = json.loads((model_dir / "config.json").read_text())
    heads, kv_heads, dim = (config["num_attention_heads"], config["num_key_value_heads"],
                            config["head_dim"])
    theta = config["rope_parameters"]["rope_theta"]
    tensors = _tensors(GGUFReader(export_gguf(model_dir, tmp_path / "s.gguf", "f32").path))
    hf = _hf_weights(model_dir)
    x = torch.randn(2, config["hidden_size"], dtype=torch.float64, generator=torch.Generator()
                    .manual_seed(0))
    for layer in range(config["num_hidden_layers"]):
        def proj(name: str, rows: int, source: str, layer: int = layer) -> torch.Tensor:
            w = (np.asarray(tensors[f"blk.{layer}.attn_{name}.weight"].data) if source == "gguf"
                 else hf[f"model.layers.{layer}.self_attn.{name}_proj.weight"])
            return (x @ torch.from_numpy(np.array(w, dtype=np.float64)).T).view(2, rows, dim)

        scores = {}
        for source, rope in (("hf", _rope_halves), ("gguf", _rope_pairs)):
            q, k = proj("q", heads, source), proj("k", kv_heads, source)
            q0, k1 = rope(q[0], 7, theta), rope(k[1], 3, theta)
            kv_of = torch.arange(heads) // (heads // kv_heads)  # GQA: query head -> kv head
            scores[source] = (q0 * k1[kv_of]).sum(-1)
        assert torch.allclose(scores["gguf"], scores["hf"], rtol=1e-10, atol=1e-12)
        assert scores["hf"].abs().max() > 1e-3  # a zero score would pass for any layout


def test_f16_keeps_vectors_f32_and_rounds_matrices_to_half(students, tmp_path):
    model_dir = students["bpe"]
    tensors = _tensors(GGUFReader(export_gguf(model_dir, tmp_path / "h.gguf").path))
    for hf_name, want in _hf_weights(model_dir).items():
        t = tensors[_gguf_name(hf_name)]
        got = np.asarray(t.data).reshape(want.shape)
        if "proj" in hf_name:
            got = unpermute_rotary(got, 4) if hf_name.endswith(("q_proj.weight",
                                                                 "k_proj.weight")) else got
        if want.ndim == 1:
            assert t.tensor_type == GGMLQuantizationType.F32 and np.array_equal(got, want)
        else:
            assert t.tensor_type == GGMLQuantizationType.F16
            assert np.array_equal(got, want.astype(np.float16))
            err = np.abs(got.astype(np.float32) - want).max()
            assert 0 < err <= np.abs(want).max() * 2 ** -11


def test_q8_0_dequantizes_within_one_quantization_step(students, tmp_path):
    model_dir = students["digits"]
    done = export_gguf(model_dir, tmp_path / "q.gguf", "q8_0")
    f32 = export_gguf(model_dir, tmp_path / "f.gguf", "f32")
    assert done.size < f32.size / 3
    exact = {t.name: np.asarray(t.data) for t in GGUFReader(f32.path).tensors}
    for t in GGUFReader(done.path).tensors:
        want = exact[t.name]
        if want.ndim == 1:
            assert t.tensor_type == GGMLQuantizationType.F32
            continue
        assert t.tensor_type == GGMLQuantizationType.Q8_0
        got = dequantize(np.asarray(t.data), GGMLQuantizationType.Q8_0).reshape(want.shape)
        blocks = np.abs(want).reshape(-1, 32).max(axis=1, keepdims=True)
        # half a step (a block's largest magnitude / 127), plus the step's own f16 rounding
        # (2^-11 relative, times up to 127 steps)
        assert (np.abs(got - want).reshape(-1, 32) <= blocks / 127 * 0.57 + 1e-7).all()
        assert np.abs(got - want).max() > 0


@pytest.mark.parametrize(("kind", "pre"), [("digits", "starcoder"), ("bpe", "gpt-2"),
                                           ("chars", "gpt-2"), ("gqa", "gpt-2")])
def test_metadata_matches_the_config_and_tokenizer(students, tmp_path, kind, pre):
    model_dir = students[kind]
    config = json.loads((model_dir / "config.json").read_text())
    tok = AutoTokenizer.from_pretrained(model_dir)
    fields = _fields(GGUFReader(export_gguf(model_dir, tmp_path / "m.gguf").path))
    assert fields["general.architecture"] == "llama"
    assert fields["general.file_type"] == 1  # MOSTLY_F16
    for key, want in [("context_length", "max_position_embeddings"),
                      ("embedding_length", "hidden_size"), ("block_count", "num_hidden_layers"),
                      ("feed_forward_length", "intermediate_size"),
                      ("attention.head_count", "num_attention_heads"),
                      ("attention.head_count_kv", "num_key_value_heads"),
                      ("vocab_size", "vocab_size"), ("rope.dimension_count", "head_dim")]:
        assert fields[f"llama.{key}"] == config[want], key
    assert fields["llama.rope.freq_base"] == config["rope_parameters"]["rope_theta"]
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(
        config["rms_norm_eps"], rel=1e-6)
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.pre"] == pre
    assert fields["tokenizer.ggml.eos_token_id"] == tok.eos_token_id
    assert fields["tokenizer.ggml.padding_token_id"] == tok.pad_token_id
    assert fields.get("tokenizer.ggml.bos_token_id") == config["bos_token_id"]
    assert fields["tokenizer.ggml.add_bos_token"] is False
    assert fields["tokenizer.chat_template"] == tok.chat_template
    tokens, types = fields["tokenizer.ggml.tokens"], fields["tokenizer.ggml.token_type"]
    assert len(tokens) == len(types) == config["vocab_size"] == len(tok)
    assert tokens == tok.convert_ids_to_tokens(list(range(len(tok))))
    saved = json.loads((model_dir / "tokenizer.json").read_text())
    specials = {t["id"] for t in saved["added_tokens"] if t["special"]}
    assert specials >= set(tok.all_special_ids) and len(specials) >= 3
    assert all(types[i] == TokenType.CONTROL for i in specials)
    assert all(t == TokenType.NORMAL for i, t in enumerate(types) if i not in specials)
    merges = saved["model"]["merges"]
    if kind == "chars":
        assert merges == [] and fields["tokenizer.ggml.merges"] == ["<|pad|> <|pad|>"]
    else:
        assert len(merges) > 20
        assert fields["tokenizer.ggml.merges"] == [" ".join(m) for m in merges]
    if kind != "gqa":
        assert tok.chat_template == CHAT_TEMPLATE


# llama.cpp's BPE, transcribed from src/llama-vocab.cpp and unicode.cpp (llama-cpp-python 0.3.36):
# special tokens cut out first, the pre-tokenizer's regexes split in turn (unmatched text kept as
# its own piece), GPT-2's byte-to-character map, then the lowest-ranked merge applied until none
# applies. benchmarks/gguf_llama_cpp.py checks the real llama.cpp against tokenizers.
GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA_CPP_PRE = {"gpt-2": [GPT2_SPLIT], "starcoder": [r"\p{N}", GPT2_SPLIT]}


def _byte_chars() -> dict[int, str]:
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    extra = iter(range(256, 512))
    return {b: chr(b if b in keep else next(extra)) for b in range(256)}


def _llama_cpp_tokenize(fields: dict, text: str) -> list[int]:
    tokens = fields["tokenizer.ggml.tokens"]
    ids = {t: i for i, t in enumerate(tokens)}
    ranks = {tuple(m.split(" ", 1)): r for r, m in enumerate(fields["tokenizer.ggml.merges"])}
    control = [t for t, k in zip(tokens, fields["tokenizer.ggml.token_type"], strict=True)
               if k == TokenType.CONTROL]
    byte_chars = _byte_chars()
    out: list[int] = []
    for part in regex.split("(" + "|".join(map(regex.escape, control)) + ")", text):
        if part in control:
            out.append(ids[part])
            continue
        pieces = [part] if part else []
        for pattern in LLAMA_CPP_PRE[fields["tokenizer.ggml.pre"]]:
            split: list[str] = []
            for piece in pieces:
                at = 0
                for m in regex.finditer(pattern, piece):
                    split += [s for s in (piece[at:m.start()], m.group()) if s]
                    at = m.end()
                split += [piece[at:]] if piece[at:] else []
            pieces = split
        for piece in pieces:
            symbols = [byte_chars[b] for b in piece.encode()]
            while len(symbols) > 1:
                rank, at = min((ranks.get(p, len(ranks)), i)
                               for i, p in enumerate(itertools.pairwise(symbols)))
                if rank == len(ranks):
                    break
                symbols[at:at + 2] = [symbols[at] + symbols[at + 1]]
            out += [ids[s] for s in symbols]
    return out


@pytest.mark.parametrize("kind", ["digits", "bpe", "chars", "gqa"])
def test_llama_cpp_splits_text_as_tokenizers_does(students, tmp_path, kind):
    model_dir = students[kind]
    tok = AutoTokenizer.from_pretrained(model_dir)
    fields = _fields(GGUFReader(export_gguf(model_dir, tmp_path / "t.gguf").path))
    chat = tok.apply_chat_template([{"role": "user", "content": "Calculate 58 + 37."}],
                                   add_generation_prompt=True, tokenize=False)
    texts = TEXTS if kind != "gqa" else [t.replace("<|end|>", "<|im_end|>") for t in TEXTS]
    merged = 0
    for text in [*texts, chat]:
        want = tok(text, add_special_tokens=False)["input_ids"]
        assert _llama_cpp_tokenize(fields, text) == want, text
        merged += any(len(fields["tokenizer.ggml.tokens"][i]) > 1
                      and fields["tokenizer.ggml.token_type"][i] == TokenType.NORMAL for i in want)
    assert merged if kind != "chars" else not merged  # merges were exercised where learned


@pytest.mark.slow  # a `seed` process: 10-60 s of imports, by the machine's load
def test_cli_exports_a_run_directory_with_its_modelfile(students, tmp_path):
    run = tmp_path / "runs" / "sums"
    shutil.copytree(students["digits"], run / "train" / "model")
    proc = run_cli("export", "gguf", run)
    assert proc.returncode == 0, proc.stderr
    out = run / "train" / "sums-f16.gguf"
    assert f"wrote {out}" in proc.stdout and "20 tensors" in proc.stdout
    assert f"{out.stat().st_size / 2**20:.2f} MiB" in proc.stdout
    assert len(GGUFReader(out).tensors) == 20
    modelfile = (run / "train" / "Modelfile").read_text()
    assert "FROM ./sums-f16.gguf\n" in modelfile
    assert 'PARAMETER stop "<|end|>"\n' in modelfile and "PARAMETER temperature 0\n" in modelfile
    assert ('TEMPLATE """{{- range .Messages }}<|{{ .Role }}|>{{- if and (eq .Role "assistant")'
            ' .Thinking }}<think>\n{{ .Thinking }}\n</think>\n\n{{ end }}{{ .Content }}<|end|>'
            '{{ end }}<|assistant|>"""') in modelfile
    assert [p.name for p in (run / "train").iterdir() if p.name.startswith(".")] == []


@pytest.mark.slow
def test_cli_refuses_a_model_that_is_not_llama(students, tmp_path):
    model = shutil.copytree(students["bpe"], tmp_path / "gpt2")
    (model / "config.json").write_text(json.dumps(
        {"model_type": "gpt2", "architectures": ["GPT2LMHeadModel"], "vocab_size": 10}))
    assert_one_line_error(run_cli("export", "gguf", model), "model_type 'gpt2'",
                          "GPT2LMHeadModel", "Llama")


def _user_error(*args, **kwargs) -> str:
    with pytest.raises(UserError) as e:
        export_gguf(*args, **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


def test_a_directory_without_a_model_is_refused(tmp_path):
    assert "no config.json" in _user_error(tmp_path)


def test_an_unknown_dtype_is_refused(students, tmp_path):
    assert "--dtype 'q4_k': use one of f32, f16, q8_0" in _user_error(
        students["bpe"], tmp_path / "x.gguf", "q4_k")


def test_a_tokenizer_llama_cpp_cannot_reproduce_is_refused_by_name(students, tmp_path):
    model = shutil.copytree(students["bpe"], tmp_path / "meta")
    data = json.loads((model / "tokenizer.json").read_text())
    data["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always",
                             "split": True}
    (model / "tokenizer.json").write_text(json.dumps(data))
    assert regex.search("pre-tokenizer Metaspace .*digits, bpe or chars",
                        _user_error(model, tmp_path / "x.gguf"))


def test_a_failed_export_keeps_the_previous_file_and_leaves_no_temporary(students, tmp_path):
    out = tmp_path / "s.gguf"
    export_gguf(students["bpe"], out)
    before = out.read_bytes()
    model = shutil.copytree(students["bpe"], tmp_path / "odd")
    weights = load_file(model / "model.safetensors")
    weights["model.extra.weight"] = torch.zeros(2, 2)
    save_file(weights, model / "model.safetensors")
    assert "'model.extra.weight' has no llama.cpp tensor" in _user_error(model, out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Modelfile", "odd", "s.gguf"]


def test_embedding_rows_past_the_tokenizer_become_unused_tokens(students, tmp_path):
    model = shutil.copytree(students["bpe"], tmp_path / "padded")
    weights = load_file(model / "model.safetensors")
    rows = weights["model.embed_tokens.weight"].shape[0]
    weights["model.embed_tokens.weight"] = torch.cat(
        [weights["model.embed_tokens.weight"], torch.zeros(3, 64)])
    save_file(weights, model / "model.safetensors")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "vocab_size": rows + 3}))
    fields = _fields(GGUFReader(export_gguf(model, tmp_path / "p.gguf").path))
    assert fields["llama.vocab_size"] == rows + 3
    assert fields["tokenizer.ggml.tokens"][rows:] == [f"[PAD{rows + i}]" for i in range(3)]
    assert fields["tokenizer.ggml.token_type"][rows:] == [TokenType.UNUSED] * 3
    assert fields["tokenizer.ggml.token_type"][rows - 1] == TokenType.NORMAL


def test_a_checkpoint_template_gets_no_ollama_template_and_its_sampling_defaults(students,
                                                                                 tmp_path):
    model = shutil.copytree(students["gqa"], tmp_path / "chatml")
    config = json.loads((model / "generation_config.json").read_text())
    (model / "generation_config.json").write_text(json.dumps(
        {**config, "do_sample": True, "temperature": 0.7, "top_p": 0.9, "top_k": 40}))
    done = export_gguf(model, tmp_path / "out" / "c.gguf")
    text = done.modelfile.read_text()
    assert done.modelfile == tmp_path / "out" / "Modelfile"
    assert "TEMPLATE" not in text and "FROM ./c.gguf\n" in text
    assert 'PARAMETER stop "<|im_end|>"\n' in text
    for line in ("temperature 0.7", "top_p 0.9", "top_k 40", "num_ctx 256"):
        assert f"PARAMETER {line}\n" in text
