"""The zen transformer: RMSNorm, rotary embedding, GQA attention with q/k/v bias, SwiGLU, MoE.

One readable file for every architecture in the family; MoE is a module choice inside the block, and
Qwen v1 is the dense model plus its length extension (logn query scaling, dynamic NTK) and its own
checkpoint names. Names follow HF (`model.layers.{i}.self_attn.o_proj.weight`) except that q/k/v and
gate/up are fused (`qkv_proj`, `gate_up_proj`: PackedLinear); `checkpoint_layout` maps each checkpoint
name to the tensor and rows it fills here, and weights/ fills them. `forward(tokens, positions, cache)
-> logits` with any `Cache`; `KVCache` is a simple contiguous one. Scheduling lives in engine/.
"""

from __future__ import annotations

import math
import re
from functools import lru_cache
from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from zenlm.config import Config


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:  # the fused kernel (reduced-precision paths); fp32 keeps HF's exact steps
            return F.rms_norm(x, self.weight.shape, self.weight, self.eps)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x


# ---- rotary embedding ----------------------------------------------------------------------------
def rope_frequencies(c: Config, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """Inverse frequencies [D/2] and the attention scaling, with the config's rope scaling.

    seq_len matters only for dynamic NTK, which stretches the base once a sequence outgrows the
    context the model was trained on (transformers' formula, or Qwen v1's ntk_alpha with
    use_dynamic_ntk; recomputed as the sequence grows).
    """
    d, base = c.head_dim, c.rope_theta
    s = c.rope_scaling or {}
    kind, factor = s.get("type"), float(s.get("factor", 1.0))
    if c.use_dynamic_ntk:  # Qwen v1's own rule (models.md 1.5)
        return ntk_frequencies(d, base, ntk_alpha(c.seq_length, seq_len or 1)), 1.0
    if kind == "dynamic":
        L = c.context_length
        n = max(seq_len or L, L)
        base = base * ((factor * n / L) - (factor - 1)) ** (d / (d - 2))
    exponents = torch.arange(0, d, 2, dtype=torch.int64).float() / d
    inv = 1.0 / (base ** exponents)
    if kind in (None, "default", "dynamic"):
        return inv, 1.0
    if kind == "linear":
        return inv / factor, 1.0
    if kind == "yarn":
        return _yarn(s, d, base, factor, exponents, c.context_length)
    raise ValueError(f"unsupported rope scaling type {kind!r}")


def ntk_alpha(seq_length: int, length: int) -> int:
    """Qwen v1's dynamic NTK factor for a context of `length` tokens: 1 up to seq_length, then 3 up to
    twice that, 7 up to four times, ... (2**ceil(log2(length / seq_length) + 1) - 1)."""
    return max(2 ** math.ceil(math.log(length / seq_length, 2) + 1) - 1, 1)


@lru_cache(maxsize=64)
def ntk_frequencies(d: int, theta: float, alpha: int) -> torch.Tensor:
    """Inverse frequencies [D/2] with the base stretched to theta * alpha**(D / (D - 2))."""
    base = theta * alpha ** (d / (d - 2))
    return 1.0 / (base ** (torch.arange(0, d, 2, dtype=torch.int64).float() / d))


def ntk_rope(c: Config, positions: torch.Tensor, lengths: torch.Tensor,
             dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [B, S, D] for positions [B, S] under Qwen v1's dynamic NTK: row b's base is stretched
    for a context of lengths[b] tokens, so every query and key of a row turns with the same base."""
    alphas = [ntk_alpha(c.seq_length, int(n)) for n in lengths.tolist()]
    inv = torch.stack([ntk_frequencies(c.head_dim, c.rope_theta, a) for a in alphas]).to(positions.device)
    freqs = positions[..., None].float() * inv[:, None, :]  # [B, S, D/2]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def logn_scale(c: Config, positions: torch.Tensor) -> torch.Tensor:
    """Qwen v1's logn attention factor [B, T, 1]: log(p + 1) / log(seq_length) for a query at position p
    past seq_length (p + 1 > seq_length), 1 before it."""
    n = (positions + 1).double()
    return torch.where(n > c.seq_length, n.log() / math.log(c.seq_length), 1.0).float()[..., None]


def _yarn(s: dict, d: int, base: float, factor: float, exponents: torch.Tensor, ctx: int):
    """YaRN: keep high frequencies, divide low ones by the factor, blend linearly in between."""
    orig = s.get("original_max_position_embeddings") or ctx

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attn = s.get("attention_factor")
    if attn is None:
        m, m_all = s.get("mscale"), s.get("mscale_all_dim")
        attn = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)
    beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1

    def corr_dim(rot: float) -> float:
        return d * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))

    low, high = corr_dim(beta_fast), corr_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, d - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(d // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # 1: the original frequency, 0: divided by the factor
    pos = base ** exponents
    return 1.0 / (factor * pos) * (1 - keep) + 1.0 / pos * keep, float(attn)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Rotary(nn.Module):
    """cos/sin tables for given positions; frequencies are made on first use, on the input's device."""

    def __init__(self, c: Config):
        super().__init__()
        self.config = c
        self._inv: torch.Tensor | None = None
        self._scale, self._len = 1.0, 0

    def forward(self, positions: torch.Tensor, dtype: torch.dtype,
                lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin [B, T, D] for positions [B, T]. Under Qwen v1's dynamic NTK each row's base follows
        the length of its whole context, lengths [B] (None: each row's last position + 1)."""
        c = self.config
        if c.use_dynamic_ntk:
            return ntk_rope(c, positions, positions.amax(-1) + 1 if lengths is None else lengths, dtype)
        dynamic = (c.rope_scaling or {}).get("type") == "dynamic"
        n = int(positions.max()) + 1 if dynamic else 0
        if self._inv is None or self._inv.device != positions.device or n > self._len or (
                dynamic and n < c.context_length < self._len):  # grow past the context; reset below it
            inv, self._scale = rope_frequencies(c, n or None)
            self._inv, self._len = inv.to(positions.device), max(n, c.context_length)
        freqs = positions[..., None].float() * self._inv  # [B, T, D/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [B, T, D]
        return (emb.cos() * self._scale).to(dtype), (emb.sin() * self._scale).to(dtype)


# ---- KV cache ------------------------------------------------------------------------------------
class Cache(Protocol):
    """What Attention needs from a cache (KVCache here, the engine's PagedKVCache).

    rope_lengths [B] (or None) is the length of each row's whole context when a rope depends on it (Qwen v1's
    dynamic NTK): every token a row computes turns with that length's base, as in one forward over the whole
    context. K/V cached under another base are stale; the engine recomputes them (scheduler.py's rope epochs).
    """

    rope_lengths: torch.Tensor | None

    def update(self, layer: int, positions: torch.Tensor, k: torch.Tensor,
               v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Store this step's k, v [B, KV, T, D]; return what the queries attend to, keys and values
        [B, KV, S, D] each, with the position of every key [B, S]. Keys at a position above a query's
        are masked (padding: a huge position)."""
        ...

    def attend(self, layer: int, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               window: int | None) -> torch.Tensor | None:
        """Run rope, the cache write and attention for qkv [B, T, (H + 2 KV) * D] with cos, sin
        [B, T, D] and return [B, T, H * D]; or None, and Attention takes its own path via update."""
        ...


class KVCache:
    """Contiguous per-layer K/V buffers [B, KV, S, D]; the token at position p lives in slot p."""

    def __init__(self, c: Config, batch: int, max_len: int, dtype: torch.dtype, device: torch.device | str):
        shape = (batch, c.num_kv_heads, max_len, c.head_dim)
        self.k = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(c.num_layers)]
        self.v = [torch.zeros(shape, dtype=dtype, device=device) for _ in range(c.num_layers)]
        self.max_len = max_len
        self.rope_lengths: torch.Tensor | None = None  # set it for a v1 dynamic-NTK step (see Cache)

    def update(self, layer: int, positions: torch.Tensor, k: torch.Tensor,
               v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        S = int(positions.max()) + 1
        if S > self.max_len:
            raise ValueError(f"position {S - 1} is past the cache length {self.max_len}")
        b = torch.arange(k.shape[0], device=k.device)[:, None]  # [B, 1]
        self.k[layer][b, :, positions] = k.transpose(1, 2)  # index [B, T] -> [B, T, KV, D]
        self.v[layer][b, :, positions] = v.transpose(1, 2)
        key_pos = torch.arange(S, device=k.device).expand(k.shape[0], S)
        return self.k[layer][:, :, :S], self.v[layer][:, :, :S], key_pos

    def attend(self, layer: int, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
               window: int | None) -> torch.Tensor | None:
        return None  # no fused attention here: Attention takes its general path


# ---- blocks --------------------------------------------------------------------------------------
class PackedLinear(nn.Linear):
    """Linears over the same input in one matmul: `shards` (member -> rows, in order) says which rows
    of the weight (and bias) each checkpoint member fills."""

    def __init__(self, in_features: int, shards: dict[str, int], bias: bool, device: torch.device | str | None = None):
        super().__init__(in_features, sum(shards.values()), bias=bias, device=device)
        self.shards = dict(shards)

    def slices(self) -> dict[str, slice]:
        out, start = {}, 0
        for name, rows in self.shards.items():
            out[name], start = slice(start, start + rows), start + rows
        return out


def swiglu(gate_up: torch.Tensor) -> torch.Tensor:
    """silu(gate) * up for gate_up = [gate, up] along the last dim."""
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


class SwiGLULinear(nn.Linear):
    """An MLP's down projection, fed the gate_up projection's output: y = W silu(gate) * up.
    (The quantized QLinear keeps this contract, making silu(gate) * up inside its kernel.)"""

    def forward(self, gate_up: torch.Tensor) -> torch.Tensor:
        return F.linear(swiglu(gate_up), self.weight, self.bias)


class Attention(nn.Module):
    """Causal self-attention; with Qwen v1's use_logn_attn, queries past seq_length are scaled (logn_scale)."""

    def __init__(self, c: Config, layer: int):
        super().__init__()
        self.h, self.kv, self.d = c.num_heads, c.num_kv_heads, c.head_dim
        self.layer, self.window = layer, c.layer_window(layer)
        self.config = c
        shards = {"q_proj": self.h * self.d, "k_proj": self.kv * self.d, "v_proj": self.kv * self.d}
        self.qkv_proj = PackedLinear(c.hidden_size, shards, bias=c.qkv_bias)
        self.o_proj = nn.Linear(self.h * self.d, c.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                cache: Cache | None, docs: torch.Tensor | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        c = self.config
        qkv = self.qkv_proj(x)  # [B, T, (H + 2 KV) * D]
        if c.use_logn_attn and int(positions.max()) >= c.seq_length:  # scaling q before rope = after it
            q, kv = qkv.split([self.h * self.d, 2 * self.kv * self.d], dim=-1)
            qkv = torch.cat((q * logn_scale(c, positions).to(q.dtype), kv), dim=-1)
        if cache is not None and docs is None:  # a cache may run rope, its write and attention itself
            out = cache.attend(self.layer, qkv, cos, sin, self.window)  # [B, T, H * D] or None
            if out is not None:
                return self.o_proj(out)
        q, k, v = qkv.split([self.h * self.d, self.kv * self.d, self.kv * self.d], dim=-1)
        q = q.view(B, T, self.h, self.d).transpose(1, 2)  # [B, H, T, D]
        k = k.view(B, T, self.kv, self.d).transpose(1, 2)  # [B, KV, T, D]
        v = v.view(B, T, self.kv, self.d).transpose(1, 2)
        cos, sin = cos[:, None], sin[:, None]  # [B, 1, T, D]
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        if cache is None:
            key_pos = positions  # [B, S=T]
        else:
            k, v, key_pos = cache.update(self.layer, positions, k, v)  # [B, KV, S, D], [B, S]
        if B == 1 and T == 1 and not self.window:  # one decode step: every cached key is visible
            mask = None
        else:
            mask = key_pos[:, None, :] <= positions[:, :, None]  # [B, T, S]
            if docs is not None:  # packed training rows [B, T]: a token sees only its own document
                mask &= docs[:, None, :] == docs[:, :, None]
            if self.window:
                mask &= key_pos[:, None, :] > positions[:, :, None] - self.window
            mask = mask[:, None]  # [B, 1, T, S]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=self.kv != self.h)
        return self.o_proj(out.transpose(1, 2).reshape(B, T, self.h * self.d))


class MLP(nn.Module):
    """SwiGLU: gate and up in one matmul, the down projection takes both (SwiGLULinear or a QLinear)."""

    def __init__(self, hidden: int, inter: int):
        super().__init__()
        self.gate_up_proj = PackedLinear(hidden, {"gate_proj": inter, "up_proj": inter}, bias=False)
        self.down_proj = SwiGLULinear(inter, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.gate_up_proj(x))  # [.., 2I] -> [.., C]


class MoE(nn.Module):
    """Softmax router over experts, top-k, optional renormalisation, plus a sigmoid-gated shared expert."""

    def __init__(self, c: Config):
        super().__init__()
        self.top_k, self.norm_topk = c.num_experts_per_tok, c.norm_topk_prob
        self.gate = nn.Linear(c.hidden_size, c.num_experts, bias=False)
        self.experts = nn.ModuleList(MLP(c.hidden_size, c.moe_intermediate_size) for _ in range(c.num_experts))
        self.shared_expert = None
        if c.shared_expert_intermediate_size:
            self.shared_expert = MLP(c.hidden_size, c.shared_expert_intermediate_size)
            self.shared_expert_gate = nn.Linear(c.hidden_size, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x = x.reshape(-1, shape[-1])  # [N, C]
        probs = F.softmax(self.gate(x), dim=-1, dtype=torch.float32)  # [N, E]
        weights, chosen = probs.topk(self.top_k, dim=-1)  # [N, K]
        if self.norm_topk:
            weights = weights / weights.sum(-1, keepdim=True)
        weights = weights.to(x.dtype)
        out = torch.zeros_like(x)
        for e in chosen.unique().tolist():
            rows, slot = torch.where(chosen == e)
            out.index_add_(0, rows, self.experts[e](x[rows]) * weights[rows, slot, None])
        if self.shared_expert is not None:
            out = out + torch.sigmoid(self.shared_expert_gate(x)) * self.shared_expert(x)
        return out.view(shape)


class Block(nn.Module):
    def __init__(self, c: Config, layer: int):
        super().__init__()
        self.input_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.self_attn = Attention(c, layer)
        self.post_attention_layernorm = RMSNorm(c.hidden_size, c.rms_norm_eps)
        self.mlp = MoE(c) if c.is_sparse_layer(layer) else MLP(c.hidden_size, c.intermediate_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, positions: torch.Tensor,
                cache: Cache | None, docs: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, positions, cache, docs)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        # _weight skips Embedding's own init, whose normal_ on meta imports torch._refs (~2 s)
        self.embed_tokens = nn.Embedding(c.vocab_size, c.hidden_size, _weight=torch.empty(c.vocab_size, c.hidden_size))
        self.layers = nn.ModuleList(Block(c, i) for i in range(c.num_layers))
        self.norm = RMSNorm(c.hidden_size, c.rms_norm_eps)


class Transformer(nn.Module):
    def __init__(self, c: Config):
        super().__init__()
        self.config = c
        self.model = Backbone(c)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        self.rotary = Rotary(c)
        self.tie_weights()
        if not self.lm_head.weight.is_meta:  # built on meta, the weights come from a checkpoint
            self.init_weights()

    @torch.no_grad()
    def init_weights(self, std: float = 0.02) -> None:
        """Random init for training from scratch: normal(0, std) matrices, zero biases, unit norms."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Embedding)):
                m.weight.normal_(0.0, std)
            if isinstance(m, nn.Linear) and m.bias is not None:
                m.bias.zero_()
            if isinstance(m, RMSNorm):
                m.weight.fill_(1.0)

    def tie_weights(self) -> None:
        if self.config.tie_word_embeddings and isinstance(self.lm_head, nn.Linear):  # not once quantized
            self.lm_head.weight = self.model.embed_tokens.weight

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, cache: Cache | None = None,
                logit_index: torch.Tensor | None = None) -> torch.Tensor:
        """tokens, positions [B, T] -> logits [B, T, V]; with logit_index [B], only those positions: [B, V]."""
        x = self.model.embed_tokens(tokens)  # [B, T, C]
        cos, sin = self.rotary(positions, x.dtype, None if cache is None else cache.rope_lengths)
        for block in self.model.layers:
            x = block(x, cos, sin, positions, cache)
        if logit_index is not None:
            x = x[torch.arange(x.shape[0], device=x.device), logit_index]  # [B, C]
        return self.lm_head(self.model.norm(x))


# Qwen v1 (QWenLMHeadModel) checkpoint names for the HF (Qwen2) names used here (models.md 1.5 and 7):
# q, k, v are one c_attn (in that order); w2 is the MLP's gate (it goes through silu), w1 its up.
V1_GLOBAL = {"model.embed_tokens": "transformer.wte", "model.norm": "transformer.ln_f", "lm_head": "lm_head"}
V1_BLOCK = {"input_layernorm": "ln_1", "post_attention_layernorm": "ln_2", "self_attn.q_proj": "attn.c_attn",
            "self_attn.k_proj": "attn.c_attn", "self_attn.v_proj": "attn.c_attn", "self_attn.o_proj": "attn.c_proj",
            "mlp.gate_proj": "mlp.w2", "mlp.up_proj": "mlp.w1", "mlp.down_proj": "mlp.c_proj"}
_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")


def v1_name(name: str) -> str:
    """A Qwen2 HF tensor name (`model.layers.3.mlp.gate_proj.weight`) -> Qwen v1's (`transformer.h.3.mlp.w2.weight`)."""
    module, _, leaf = name.rpartition(".")
    if module in V1_GLOBAL:
        return f"{V1_GLOBAL[module]}.{leaf}"
    m = _LAYER.fullmatch(module)
    if m is None or m[2] not in V1_BLOCK:
        raise KeyError(name)
    return f"transformer.h.{m[1]}.{V1_BLOCK[m[2]]}.{leaf}"


def checkpoint_layout(model: nn.Module) -> dict[str, tuple[str, slice | None]]:
    """Each checkpoint (HF) tensor name -> (the model's tensor it fills, its rows there; None: all of it).

    A PackedLinear's weight and bias are filled by its members (`...self_attn.q_proj.weight` -> rows
    0..H*D of `...self_attn.qkv_proj.weight`); every other tensor keeps its checkpoint name. A Qwen v1
    model (arch "qwen") takes v1's names, whose c_attn fills all of qkv_proj at once.
    """
    packed = {n: m.slices() for n, m in model.named_modules() if isinstance(m, PackedLinear)}
    out: dict[str, tuple[str, slice | None]] = {}
    for name in model.state_dict():
        owner, _, leaf = name.rpartition(".")
        if owner in packed:
            parent = owner.rpartition(".")[0]
            out |= {f"{parent}.{member}.{leaf}": (name, rows) for member, rows in packed[owner].items()}
        else:
            out[name] = (name, None)
    if getattr(model, "config", None) is None or model.config.arch != "qwen":
        return out
    v1: dict[str, tuple[str, slice | None]] = {}
    for name, (target, rows) in out.items():
        key = v1_name(name)
        if key in v1:  # q, k, v -> one c_attn: together they cover the whole fused tensor
            rows = None
        v1[key] = (target, rows)
    return v1


def checkpoint_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors under checkpoint (HF) names: fused ones as views of their shards."""
    sd = model.state_dict()
    return {k: sd[p] if rows is None else sd[p][rows] for k, (p, rows) in checkpoint_layout(model).items()}
