"""How a batch of sequences runs through the model: the engine's key/value cache and forward pass.

The engine (`engine.py`) gives every running sequence a *slot*, a row of the batch it keeps until
it finishes; a new sequence takes a free slot. A runner holds the cache for the slots and offers
two calls: `add` prefills prompts (or, when the runner is `chunked`, the next piece of a prompt)
into their slots and returns the next-token logits, `step` decodes one token for every slot up to
the highest one in use and returns its logits; `move` and `free` keep the slots dense. `add_scoring`
is `add` that also returns the logits of every position of the rows asked for (prompt logprobs),
from the same forward pass; plain `add` computes the vocabulary projection for one position a row.

- `LlamaRunner`, for Llama-family decoders (Llama, Mistral, Qwen2, Qwen3): a decode forward over
  the model's own weights, with per-slot key/value buffers written in place. Each slot's tokens sit
  at columns 0.., so a new prompt is written straight into its slot and a finished one leaves no
  copy behind. q/k/v and gate/up are one matmul each (the model's own weights become views of the
  fused ones, so nothing is duplicated). On a CPU a decode step costs 0.6-0.8 ms less than
  transformers' forward (of 2-6 ms; docs/LOG.md, "Serving: slots and a Llama decode forward").
- `HFRunner`, for every other architecture: transformers' own forward over a left-padded
  `DynamicCache`, new rows padded in and copied to their slots.

This module knows nothing of sampling, text or HTTP.
"""

from __future__ import annotations

from typing import Any, cast

import torch
import torch.nn.functional as F
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

_LLAMA_FAMILY = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"}


def make_runner(model: Any, slots: int) -> LlamaRunner | HFRunner:
    """The fast runner when the model is a plain Llama-family decoder, else transformers' own."""
    if LlamaRunner.supports(model):
        return LlamaRunner(model, slots)
    return HFRunner(model, slots)


class LlamaRunner:
    """Decode and prefill for Llama-family models over per-slot key/value buffers."""

    chunked = True  # a prompt may be prefilled in pieces, each after the ones before it
    copies = True  # `copy` gives other slots a prefilled slot's cache (siblings of one prompt)

    @staticmethod
    def supports(model: Any) -> bool:
        """True for a Llama-family model with full attention everywhere and SiLU MLPs."""
        cfg = model.config
        if type(model).__name__ not in _LLAMA_FAMILY or getattr(cfg, "hidden_act", "") != "silu":
            return False
        if getattr(cfg, "pretraining_tp", 1) != 1 or getattr(cfg, "use_sliding_window", False):
            return False
        window = getattr(cfg, "sliding_window", None)
        if window and window < cfg.max_position_embeddings:
            return False
        return all(t == "full_attention" for t in getattr(cfg, "layer_types", None) or [])

    def __init__(self, model: Any, slots: int):
        cfg = model.config
        self.model = model
        self.heads = cfg.num_attention_heads
        self.kv_heads = cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.context = cfg.max_position_embeddings
        self.slots = slots
        param = next(model.parameters())
        self.device, self.dtype = param.device, param.dtype
        self.layers = [_FusedLayer(layer) for layer in model.model.layers]
        self.positions = torch.zeros(slots, dtype=torch.long)  # tokens cached per slot
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self._grow(64)

    def _grow(self, length: int) -> None:
        """Make room for `length` columns per slot (doubling up to the context; a chunk's padding
        may reach a little past it, so `length` itself always fits)."""
        have = self.keys[0].shape[2] if self.keys else 0
        if length <= have:
            return
        room = max(length, min(self.context, 2 * have))
        shape = (self.slots, self.kv_heads, room, self.head_dim)
        for i in range(len(self.layers)):
            for store in (self.keys, self.values):
                new = torch.zeros(shape, dtype=self.dtype, device=self.device)
                if have:
                    new[:, :, :have] = store[i]
                    store[i] = new
                else:
                    store.append(new)

    def add(self, slots: list[int], chunks: list[list[int]], starts: list[int]) -> torch.Tensor:
        """Prefill `chunks` into `slots` after the `starts` tokens each slot already holds
        (right-padded, causal); the logits of each chunk's last token."""
        return self.add_scoring(slots, chunks, starts, [])[0]

    def add_scoring(self, slots: list[int], chunks: list[list[int]], starts: list[int],
                    scored: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`add`, and for each index in `scored` the logits of every position of that chunk
        ([len(chunk), vocab]: position i predicts the token after it)."""
        width = max(len(c) for c in chunks)
        self._grow(max(s for s in starts) + width)
        ids = torch.tensor([c + [0] * (width - len(c)) for c in chunks], device=self.device)
        offsets = torch.tensor(starts, device=self.device)
        positions = offsets[:, None] + torch.arange(width, device=self.device)
        rows = torch.tensor(slots, device=self.device)
        hidden = self._forward(ids, positions, rows, prefill=True, fresh=not any(starts))
        last = torch.tensor([len(c) - 1 for c in chunks], device=self.device)
        self.positions[slots] = torch.tensor([s + len(c) for s, c in zip(starts, chunks,
                                                                          strict=True)])
        every = [self._logits(hidden[j, :len(chunks[j])]) for j in scored]
        return self._logits(hidden[torch.arange(len(chunks), device=self.device), last]), every

    def step(self, tokens: list[int], live: list[bool]) -> torch.Tensor:
        """One token for slots 0..len(tokens)-1; finished slots ride along. Logits per slot."""
        n = len(tokens)
        alive = torch.tensor(live)
        # A row that is free or still prefilling writes its (unused) key at the column its next
        # token will overwrite, so the step cannot disturb what it holds.
        positions = self.positions[:n].clone()
        length = int(positions.max()) + 1
        self._grow(length)
        ids = torch.tensor(tokens, device=self.device)[:, None]
        hidden = self._forward(ids, positions.to(self.device)[:, None],
                               torch.arange(n, device=self.device), prefill=False, length=length)
        self.positions[:n] += alive
        return self._logits(hidden[:, -1])

    def free(self, slot: int) -> None:
        self.positions[slot] = 0

    def move(self, src: int, dst: int) -> None:
        """Move a sequence's cache from slot `src` to the free slot `dst` (to close a hole)."""
        n = int(self.positions[src])
        for store in (self.keys, self.values):
            for buf in store:
                buf[dst, :, :n] = buf[src, :, :n]
        self.positions[dst], self.positions[src] = n, 0

    def copy(self, src: int, dsts: list[int]) -> None:
        """Give the slots `dsts` slot `src`'s cache (the siblings of a prompt prefilled once)."""
        n = int(self.positions[src])
        rows = torch.tensor(dsts, device=self.device)
        for store in (self.keys, self.values):
            for buf in store:
                buf[rows, :, :n] = buf[src, :, :n].clone()  # index_put_ refuses a view of itself
        self.positions[dsts] = n

    def reset(self) -> None:
        self.positions.zero_()

    def _logits(self, hidden: torch.Tensor) -> torch.Tensor:
        norm = self.model.model.norm
        return self.model.lm_head(F.rms_norm(hidden, norm.weight.shape, norm.weight,
                                             norm.variance_epsilon))

    def _forward(self, ids: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor, *,
                 prefill: bool, length: int = 0, fresh: bool = True) -> torch.Tensor:
        """The model over `ids` at `positions`, reading and writing the cache of slots `rows`."""
        batch, width = ids.shape
        x = self.model.model.embed_tokens(ids)
        cos, sin = self.model.model.rotary_emb(x, positions)
        cos, sin = cos[:, None], sin[:, None]
        if prefill and not fresh:  # chunks after a cached prefix: attend to it and causally
            length = int(positions.max()) + 1
            span = torch.arange(length, device=self.device)
            mask = (span[None, None] <= positions[:, :, None])[:, None]  # [rows, 1, width, length]
        if not prefill:
            cols = positions[:, 0]
            mask = (torch.arange(length, device=self.device)[None] <= cols[:, None])[:, None, None]
        for i, layer in enumerate(self.layers):
            q, k, v = layer.qkv(x, batch, width, self.heads, self.kv_heads, self.head_dim)
            q = q * cos + _rotate_half(q) * sin
            k = k * cos + _rotate_half(k) * sin
            if prefill and fresh:
                self.keys[i][rows, :, :width] = k
                self.values[i][rows, :, :width] = v
                attn = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            elif prefill:
                self.keys[i][rows[:, None], :, positions] = k.transpose(1, 2)
                self.values[i][rows[:, None], :, positions] = v.transpose(1, 2)
                attn = F.scaled_dot_product_attention(
                    q, self.keys[i][rows, :, :length], self.values[i][rows, :, :length],
                    attn_mask=mask, enable_gqa=True)
            else:
                self.keys[i][rows, :, cols] = k[:, :, 0]
                self.values[i][rows, :, cols] = v[:, :, 0]
                attn = F.scaled_dot_product_attention(
                    q, self.keys[i][:batch, :, :length], self.values[i][:batch, :, :length],
                    attn_mask=mask, enable_gqa=True)
            x = layer.rest(x, attn.transpose(1, 2).reshape(batch, width, -1))
        return x


class _FusedLayer:
    """One decoder layer with q/k/v and gate/up fused into single matmuls."""

    def __init__(self, layer: Any):
        attn, mlp = layer.self_attn, layer.mlp
        self.norm1, self.norm2 = layer.input_layernorm, layer.post_attention_layernorm
        self.q_norm = getattr(attn, "q_norm", None)  # Qwen3 normalizes q and k per head
        self.k_norm = getattr(attn, "k_norm", None)
        self.o_proj, self.down = attn.o_proj, mlp.down_proj
        self.qkv_weight, self.qkv_bias, self.split = _fuse([attn.q_proj, attn.k_proj, attn.v_proj])
        self.gate_up_weight, self.gate_up_bias, _ = _fuse([mlp.gate_proj, mlp.up_proj])

    def qkv(self, x: torch.Tensor, batch: int, width: int, heads: int, kv_heads: int,
            head_dim: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = F.rms_norm(x, self.norm1.weight.shape, self.norm1.weight, self.norm1.variance_epsilon)
        q, k, v = F.linear(h, self.qkv_weight, self.qkv_bias).split(self.split, dim=-1)
        q = q.view(batch, width, heads, head_dim)
        k = k.view(batch, width, kv_heads, head_dim)
        if self.q_norm is not None and self.k_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        return (q.transpose(1, 2), k.transpose(1, 2),
                v.view(batch, width, kv_heads, head_dim).transpose(1, 2))

    def rest(self, x: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """Output projection, residual, MLP, residual."""
        x = x + self.o_proj(attn)
        h = F.rms_norm(x, self.norm2.weight.shape, self.norm2.weight, self.norm2.variance_epsilon)
        gate, up = F.linear(h, self.gate_up_weight, self.gate_up_bias).chunk(2, dim=-1)
        return x + self.down(F.silu(gate) * up)


def _fuse(linears: list[torch.nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None, list[int]]:
    """One weight (and bias) for several linears of the same input; theirs become views of it."""
    weight = torch.cat([lin.weight.detach() for lin in linears])
    bias = None
    if any(lin.bias is not None for lin in linears):
        bias = torch.cat([lin.bias.detach() if lin.bias is not None
                          else weight.new_zeros(lin.out_features) for lin in linears])
    sizes, start = [lin.out_features for lin in linears], 0
    for lin, size in zip(linears, sizes, strict=True):
        lin.weight = torch.nn.Parameter(weight[start:start + size], requires_grad=False)
        if lin.bias is not None and bias is not None:
            lin.bias = torch.nn.Parameter(bias[start:start + size], requires_grad=False)
        start += size
    return weight, bias, sizes


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class HFRunner:
    """transformers' own forward over a left-padded cache whose rows are the engine's slots."""

    chunked = False  # whole prompts only: the left-padded layout cannot append to one row
    copies = False  # each sibling of a prompt is prefilled on its own

    def __init__(self, model: Any, slots: int):
        self.model = model
        self.device = next(model.parameters()).device
        self.pad = getattr(model.config.get_text_config(), "pad_token_id", None) or 0
        self._cache: DynamicCache | None = None
        self._mask: torch.Tensor | None = None  # [rows, cached length]; 0 marks left padding
        self._positions: list[int] = []
        self._live: set[int] = set()

    def add(self, slots: list[int], prompts: list[list[int]], starts: list[int]) -> torch.Tensor:
        return self.add_scoring(slots, prompts, starts, [])[0]

    def add_scoring(self, slots: list[int], prompts: list[list[int]], starts: list[int],
                    scored: list[int]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """`add`, and every position's logits for the prompts in `scored` (transformers then
        projects every position of the group, so only a group holding one asks for it)."""
        assert not any(starts), "HFRunner prefills whole prompts"
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[self.pad] * (width - len(p)) + p for p in prompts])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        out = self.model(input_ids=ids.to(self.device), attention_mask=mask.to(self.device),
                         position_ids=positions.to(self.device), use_cache=True,
                         past_key_values=self._new_cache([]),
                         logits_to_keep=0 if scored else 1)
        self._merge(slots, out.past_key_values, mask.to(self.device))
        for s, p in zip(slots, prompts, strict=True):
            self._positions[s] = len(p)
        self._live.update(slots)
        every = [out.logits[j, width - len(prompts[j]):] for j in scored]
        return out.logits[:, -1, :], every

    def _merge(self, slots: list[int], cache: DynamicCache, mask: torch.Tensor) -> None:
        """Write freshly prefilled rows into their slots, left-padding the shorter side.

        Columns that are padding in every live row are dropped on the way (the copy is made
        anyway), so the cache does not widen forever under steady traffic.
        """
        rows = max(max(slots) + 1, len(self._positions))
        self._positions += [0] * (rows - len(self._positions))
        start = 0
        if self._mask is not None:
            live = sorted(self._live - set(slots))
            used = self._mask[live].any(dim=0).nonzero() if live else None
            start = int(used[0]) if used is not None and len(used) else self._mask.shape[1]
            self._mask = self._mask[:, start:].clone()
            self._mask[[r for r in range(self._mask.shape[0]) if r not in self._live]] = 1
        old_len = self._mask.shape[1] if self._mask is not None else 0
        width = max(old_len, mask.shape[1])
        index = torch.tensor(slots, device=self.device)
        layers = []
        olds = _growing(self._cache) if self._cache is not None else None
        for i, new in enumerate(_growing(cache)):
            merged = []
            for old, fresh in [(olds[i].keys if olds else None, new.keys),
                               (olds[i].values if olds else None, new.values)]:
                out = fresh.new_zeros((rows, *fresh.shape[1:-2], width, fresh.shape[-1]))
                if old is not None:
                    out[:old.shape[0], ..., width - old_len:, :] = old[..., start:, :]
                out[index] = _pad_left(fresh, width)
                merged.append(out)
            layers.append((merged[0], merged[1]))
        full = mask.new_zeros((rows, width))
        if self._mask is not None:
            full[:self._mask.shape[0], width - old_len:] = self._mask
        full[index] = F.pad(mask, (width - mask.shape[1], 0))
        self._cache, self._mask = self._new_cache(layers), full

    def step(self, tokens: list[int], live: list[bool]) -> torch.Tensor:
        n = len(tokens)
        if n < self._prefilled()[1].shape[0]:  # the highest slots are free: shed their rows
            self._shrink(n)
        ids = torch.tensor(tokens, device=self.device)[:, None]
        self._mask = F.pad(self._prefilled()[1], (0, 1), value=1)
        positions = torch.tensor(self._positions, device=self.device)[:, None]
        out = self.model(input_ids=ids, attention_mask=self._mask, position_ids=positions,
                         past_key_values=self._cache, use_cache=True)
        self._cache = out.past_key_values
        self._positions = [p + ok for p, ok in zip(self._positions, live, strict=True)]
        return out.logits[:, -1, :]

    def _shrink(self, rows: int) -> None:
        cache, mask = self._prefilled()
        self._positions = self._positions[:rows]
        self._mask = mask[:rows]
        self._cache = self._new_cache([(layer.keys[:rows], layer.values[:rows])
                                       for layer in _growing(cache)])

    def free(self, slot: int) -> None:
        """The row rides along until its slot is reused or shed."""
        self._live.discard(slot)

    def copy(self, src: int, dsts: list[int]) -> None:
        """Never called: with `copies = False` the engine prefills every sibling itself."""
        raise NotImplementedError("the HF runner does not copy caches between rows")

    def move(self, src: int, dst: int) -> None:
        """Move a sequence's row from slot `src` to the free slot `dst` (to close a hole)."""
        cache, mask = self._prefilled()
        for layer in _growing(cache):
            layer.move_row(src, dst)
        mask[dst] = mask[src]
        self._positions[dst] = self._positions[src]
        self._live.discard(src)
        self._live.add(dst)

    def reset(self) -> None:
        self._cache = self._mask = None
        self._positions = []
        self._live = set()

    def _prefilled(self) -> tuple[DynamicCache, torch.Tensor]:
        """The cache and its mask, which exist once `add` has run (the engine steps only then)."""
        if self._cache is None or self._mask is None:
            raise RuntimeError("HFRunner: step, move or shrink before any prompt was added")
        return self._cache, self._mask

    def _new_cache(self, layers: list[tuple[torch.Tensor, torch.Tensor]]) -> DynamicCache:
        cache = DynamicCache(config=self.model.config)
        growing = [_GrowingLayer() for _ in cache.layers]
        cache.layers = list(growing)
        for layer, (keys, values) in zip(growing, layers, strict=False):
            layer.update(keys, values)
        return cache


def _growing(cache: DynamicCache) -> list[_GrowingLayer]:
    # every cache HFRunner holds or passes to the model was built by _new_cache
    return cast(list[_GrowingLayer], cache.layers)


class _GrowingLayer(DynamicLayer):
    """A key/value cache layer that writes each step into spare room instead of re-concatenating.

    transformers' DynamicLayer copies the whole cache on every decode step (torch.cat); for a batch
    of 32 that copy costs as much as the step's matmuls on a CPU. Room doubles when it runs out.
    """

    keys: torch.Tensor
    values: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self._length = 0
        self._room_keys: torch.Tensor | None = None
        self._room_values: torch.Tensor | None = None

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args: Any,
               **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        n = key_states.shape[-2]
        end = self._length + n
        room_k, room_v = self._room_keys, self._room_values
        if room_k is None or room_v is None or end > room_k.shape[-2]:
            shape = (*key_states.shape[:-2], max(64, 2 * end), key_states.shape[-1])
            keys = key_states.new_empty(shape)
            values = value_states.new_empty((*shape[:-1], value_states.shape[-1]))
            if room_k is not None and room_v is not None and self._length:
                keys[..., :self._length, :] = room_k[..., :self._length, :]
                values[..., :self._length, :] = room_v[..., :self._length, :]
            room_k, room_v = self._room_keys, self._room_values = keys, values
        room_k[..., self._length:end, :] = key_states
        room_v[..., self._length:end, :] = value_states
        self._length = end
        self.keys = room_k[..., :end, :]
        self.values = room_v[..., :end, :]
        return self.keys, self.values

    def move_row(self, src: int, dst: int) -> None:
        """Copy batch row `src` of the cache (its room included) over row `dst`."""
        for buf in (self._room_keys, self._room_values):
            if buf is not None:
                buf[dst] = buf[src]

    def get_seq_length(self) -> int:
        return self._length


def _pad_left(t: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(t, (0, 0, width - t.shape[-2], 0))
