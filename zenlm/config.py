"""Config: one dataclass for every zen architecture (dense Qwen v1/Qwen1.5/Qwen2/Qwen2.5 and the MoE variant).

Read from an HF config.json (`from_hf`) or from GGUF metadata (`from_gguf`), or taken from PRESETS.
`param_counts` gives total / non-embedding / active parameter counts from the shapes alone.
This module imports no torch: it is plain data.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ARCHS = ("qwen2", "qwen2_moe", "qwen")


@dataclass(slots=True)
class Config:
    name: str = "custom"
    arch: str = "qwen2"  # "qwen2" (dense), "qwen2_moe", or "qwen" (v1: dense, its own checkpoint names)
    vocab_size: int = 151936
    hidden_size: int = 896
    num_layers: int = 24
    num_heads: int = 14
    num_kv_heads: int = 2
    head_dim: int = 64
    intermediate_size: int = 4864
    rope_theta: float = 1_000_000.0
    rope_scaling: dict | None = None  # {"type": "yarn"|"linear"|"dynamic", "factor": ..., ...}
    rms_norm_eps: float = 1e-6
    tie_word_embeddings: bool = True
    qkv_bias: bool = True
    sliding_window: int | None = None  # None unless the checkpoint uses sliding-window layers
    max_window_layers: int = 0  # layers >= this use the sliding window (transformers' rule)
    context_length: int = 32768
    # MoE (arch == "qwen2_moe")
    num_experts: int = 0
    num_experts_per_tok: int = 0
    moe_intermediate_size: int = 0
    shared_expert_intermediate_size: int = 0
    norm_topk_prob: bool = False
    decoder_sparse_step: int = 1
    mlp_only_layers: list[int] = field(default_factory=list)
    # Qwen v1's inference-time length extension past its training length seq_length (models.md 1.5)
    seq_length: int = 0  # the length logn scaling and dynamic NTK count from (0: neither applies)
    use_logn_attn: bool = False  # queries past seq_length scaled by log(position + 1) / log(seq_length)
    use_dynamic_ntk: bool = False  # rope base stretched by v1's ntk_alpha of the context length

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"unknown architecture {self.arch!r} (expected one of {', '.join(ARCHS)})")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
        if (self.use_logn_attn or self.use_dynamic_ntk) and self.seq_length < 2:
            raise ValueError(f"use_logn_attn / use_dynamic_ntk need seq_length >= 2, got {self.seq_length}")

    @property
    def is_moe(self) -> bool:
        return self.arch == "qwen2_moe"

    def is_sparse_layer(self, i: int) -> bool:
        """Whether layer i has a MoE block (transformers' decoder_sparse_step rule)."""
        return (self.is_moe and self.num_experts > 0 and i not in self.mlp_only_layers
                and (i + 1) % self.decoder_sparse_step == 0)

    def layer_window(self, i: int) -> int | None:
        """The sliding-window size of layer i, or None for full attention."""
        return self.sliding_window if self.sliding_window and i >= self.max_window_layers else None

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    # ---- readers -------------------------------------------------------------------------------
    @classmethod
    def from_hf(cls, source: str | Path | dict) -> Config:
        """From an HF config.json (a path, or the parsed dict)."""
        d = source if isinstance(source, dict) else json.loads(Path(source).read_text())
        mt = d.get("model_type")
        if mt == "qwen":
            return cls._from_hf_qwen(d)
        if mt not in ("qwen2", "qwen2_moe"):
            raise ValueError(f"unsupported model_type {mt!r} (zenlm runs qwen, qwen2 and qwen2_moe)")
        rope = d.get("rope_parameters") or {}  # transformers v5 keeps theta and scaling here
        scaling = d.get("rope_scaling") or {k: v for k, v in rope.items() if k != "rope_theta"}
        kind = scaling.get("rope_type") or scaling.get("type")
        if kind in (None, "default"):
            scaling = None
        else:
            scaling = {k: v for k, v in scaling.items() if k != "rope_type"} | {"type": kind}
        heads = d["num_attention_heads"]
        use_sw = d.get("use_sliding_window", False)
        return cls(
            name=Path(d.get("_name_or_path") or "hf").name or "hf",
            arch=mt,
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            num_layers=d["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=d.get("num_key_value_heads") or heads,
            head_dim=d.get("head_dim") or d["hidden_size"] // heads,
            intermediate_size=d.get("intermediate_size", 0),
            rope_theta=float(rope.get("rope_theta") or d.get("rope_theta") or 10000.0),
            rope_scaling=scaling,
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            tie_word_embeddings=d.get("tie_word_embeddings", False),
            qkv_bias=True,
            sliding_window=d.get("sliding_window") if use_sw else None,
            max_window_layers=d.get("max_window_layers", 0),
            context_length=d.get("max_position_embeddings", 32768),
            num_experts=d.get("num_experts", 0) if mt == "qwen2_moe" else 0,
            num_experts_per_tok=d.get("num_experts_per_tok", 0) if mt == "qwen2_moe" else 0,
            moe_intermediate_size=d.get("moe_intermediate_size", 0),
            shared_expert_intermediate_size=d.get("shared_expert_intermediate_size", 0),
            norm_topk_prob=d.get("norm_topk_prob", False),
            decoder_sparse_step=d.get("decoder_sparse_step", 1),
            mlp_only_layers=list(d.get("mlp_only_layers") or []),
        )

    @classmethod
    def _from_hf_qwen(cls, d: dict) -> Config:
        """Qwen v1's config.json (QWenLMHeadModel, models.md 1.5): its intermediate_size counts both MLP
        branches (w1 and w2 are each half as wide), and biases sit on c_attn only (no_bias)."""
        if float(d.get("rotary_pct", 1.0)) != 1.0:
            raise ValueError(f"Qwen v1 config: rotary_pct {d['rotary_pct']} is not supported (only 1.0)")
        if not d.get("no_bias", True):
            raise ValueError("Qwen v1 config: no_bias false (biases on c_proj and the MLP) is not supported")
        heads, hidden = d["num_attention_heads"], d["hidden_size"]
        head_dim = d.get("kv_channels") or hidden // heads
        if head_dim * heads != hidden:
            raise ValueError(f"Qwen v1 config: kv_channels {head_dim} x {heads} heads != hidden_size {hidden}")
        return cls(
            name=Path(d.get("_name_or_path") or "hf").name or "hf",
            arch="qwen",
            vocab_size=d["vocab_size"],
            hidden_size=hidden,
            num_layers=d["num_hidden_layers"],
            num_heads=heads,
            num_kv_heads=heads,
            head_dim=head_dim,
            intermediate_size=d["intermediate_size"] // 2,
            rope_theta=float(d.get("rotary_emb_base", 10000.0)),
            rms_norm_eps=d.get("layer_norm_epsilon", 1e-6),
            tie_word_embeddings=d.get("tie_word_embeddings", False),
            context_length=d.get("max_position_embeddings") or d.get("seq_length") or 8192,
            seq_length=d.get("seq_length", 0),
            use_logn_attn=bool(d.get("use_logn_attn", False)),
            use_dynamic_ntk=bool(d.get("use_dynamic_ntk", False)),
        )

    @classmethod
    def from_gguf(cls, meta: dict, has_output: bool = True) -> Config:
        """From GGUF metadata ({key: value}); has_output says whether the file has output.weight."""
        arch = meta.get("general.architecture")
        if arch not in ("qwen", "qwen2", "qwen2moe"):
            raise ValueError(f"unsupported GGUF architecture {arch!r} (zenlm runs qwen, qwen2 and qwen2moe)")

        def get(key: str, default: Any = None) -> Any:
            return meta.get(f"{arch}.{key}", default)

        heads = int(get("attention.head_count"))
        hidden = int(get("embedding_length"))
        vocab = meta.get("tokenizer.ggml.tokens")
        scaling = None
        kind = get("rope.scaling.type")
        if kind and kind != "none":
            scaling = {"type": kind, "factor": float(get("rope.scaling.factor", 1.0))}
            if get("rope.scaling.original_context_length"):
                scaling["original_max_position_embeddings"] = int(get("rope.scaling.original_context_length"))
        # Qwen v1 (`qwen`): feed_forward_length is config.json's intermediate_size, both MLP branches
        # (llama.cpp makes ffn_gate/ffn_up n_ff/2 wide). The file has no seq_length, and llama.cpp runs
        # it without logn scaling or dynamic NTK, so neither is set here.
        ffn = int(get("feed_forward_length", 0)) // (2 if arch == "qwen" else 1)
        return cls(
            name=str(meta.get("general.name", "gguf")),
            arch={"qwen2moe": "qwen2_moe", "qwen": "qwen"}.get(arch, "qwen2"),
            vocab_size=int(get("vocab_size") or len(vocab)),
            hidden_size=hidden,
            num_layers=int(get("block_count")),
            num_heads=heads,
            num_kv_heads=int(get("attention.head_count_kv", heads)),
            head_dim=int(get("attention.key_length") or hidden // heads),
            intermediate_size=ffn,
            rope_theta=float(get("rope.freq_base", 10000.0)),
            rope_scaling=scaling,
            rms_norm_eps=float(get("attention.layer_norm_rms_epsilon", 1e-6)),
            tie_word_embeddings=not has_output,
            sliding_window=None,
            context_length=int(get("context_length", 32768)),
            num_experts=int(get("expert_count", 0)),
            num_experts_per_tok=int(get("expert_used_count", 0)),
            moe_intermediate_size=int(get("expert_feed_forward_length", 0)),
            shared_expert_intermediate_size=int(get("expert_shared_feed_forward_length", 0)),
            norm_topk_prob=bool(get("expert_weights_norm", False)),
        )


# ---- parameter counts --------------------------------------------------------------------------
def param_counts(c: Config) -> dict[str, int]:
    """Total, non-embedding and (for MoE) active parameters, computed from the shapes."""
    h, q, kv = c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim
    attn = h * q + 2 * h * kv + q * h + (q + 2 * kv if c.qkv_bias else 0)
    embed = c.vocab_size * h * (1 if c.tie_word_embeddings else 2)
    total = active = embed + h  # embeddings (+ head), final norm
    for i in range(c.num_layers):
        layer = attn + 2 * h
        if c.is_sparse_layer(i):
            expert = 3 * h * c.moe_intermediate_size
            shared = 3 * h * c.shared_expert_intermediate_size + (h if c.shared_expert_intermediate_size else 0)
            router = h * c.num_experts
            total += layer + router + shared + c.num_experts * expert
            active += layer + router + shared + c.num_experts_per_tok * expert
        else:
            total += layer + 3 * h * c.intermediate_size
            active += layer + 3 * h * c.intermediate_size
    out = {"params_total": total, "params_non_embedding": total - embed}
    if c.is_moe:
        out["params_active"] = active
        out["params_active_non_embedding"] = active - embed
    return out


# ---- presets -----------------------------------------------------------------------------------
def _dense(name: str, h: int, layers: int, heads: int, kv: int, inter: int, vocab: int, tie: bool,
           ctx: int = 32768, theta: float = 1e6, eps: float = 1e-6, window: int | None = None) -> Config:
    return Config(name=name, hidden_size=h, num_layers=layers, num_heads=heads, num_kv_heads=kv,
                  head_dim=h // heads, intermediate_size=inter, vocab_size=vocab, tie_word_embeddings=tie,
                  context_length=ctx, rope_theta=theta, rms_norm_eps=eps, sliding_window=window)


# zen (Qwen2.5) shapes: hidden, layers, heads, kv heads, intermediate, vocab, tied (models.md 1.1).
_ZEN = {
    "0.5b": (896, 24, 14, 2, 4864, 151936, True),
    "1.5b": (1536, 28, 12, 2, 8960, 151936, True),
    "3b": (2048, 36, 16, 2, 11008, 151936, True),
    "7b": (3584, 28, 28, 4, 18944, 152064, False),
    "14b": (5120, 48, 40, 8, 13824, 152064, False),
    "32b": (5120, 64, 40, 8, 27648, 152064, False),
    "72b": (8192, 80, 64, 8, 29568, 152064, False),
}
_LONG = {"7b", "14b", "32b", "72b"}  # 128K with YaRN (models.md 1.1 and 3)
# Qwen1.5 shapes (models.md 1.3); theta 5e6 for the 4B.
_QWEN15 = {
    "0.5b": (1024, 24, 16, 16, 2816, 151936, True),
    "1.8b": (2048, 24, 16, 16, 5504, 151936, False),
    "4b": (2560, 40, 20, 20, 6912, 151936, False),
    "7b": (4096, 32, 32, 32, 11008, 151936, False),
    "14b": (5120, 40, 40, 40, 13696, 152064, False),
    "32b": (5120, 64, 40, 8, 27392, 152064, False),
    "72b": (8192, 80, 64, 64, 24576, 152064, False),
    "110b": (8192, 80, 64, 8, 49152, 152064, False),
}

# Qwen v1 (QWenLMHeadModel) from each release's config.json: hidden, layers, heads (MHA), intermediate_size
# (both branches, as config.json counts it), vocab, seq_length, max_position_embeddings, rotary_emb_base,
# use_logn_attn = use_dynamic_ntk. 1.8B/7B: models.md 1.5. 72B: models.md 1.5 (Qwen-72B-Chat-Int4, official;
# the base config has the same shape). 14B: huggingface.co/Qwen/Qwen-14B config.json (seq_length 2048,
# max_position_embeddings 8192, intermediate 27392, vocab 152064), as two third-party copies transcribe it.
# Counts these give (tests/test_qwen1_weights.py): 1,836,828,672 / 7,721,324,544 / 14,167,290,880 /
# 72,287,920,128. Released: 7B 7,721,324,544 (its safetensors index: 15,442,649,088 bf16 bytes), 1.8B
# 1,836,828,672 (3,673,657,344 bf16 bytes), 14B 14.17B (third-party tables), 72B "72B" (its model card).
_QWEN1 = {
    "1.8b": (2048, 24, 16, 11008, 151936, 8192, 8192, 10000.0, True),
    "7b": (4096, 32, 32, 22016, 151936, 8192, 32768, 10000.0, True),
    "14b": (5120, 40, 40, 27392, 152064, 2048, 8192, 10000.0, True),
    "72b": (8192, 80, 64, 49152, 152064, 32768, 32768, 1e6, False),
}


def _qwen1(name: str, h: int, layers: int, heads: int, inter: int, vocab: int, seq: int, ctx: int,
           theta: float, extend: bool) -> Config:
    return Config(name=name, arch="qwen", hidden_size=h, num_layers=layers, num_heads=heads, num_kv_heads=heads,
                  head_dim=h // heads, intermediate_size=inter // 2, vocab_size=vocab, tie_word_embeddings=False,
                  context_length=ctx, rope_theta=theta, seq_length=seq, use_logn_attn=extend, use_dynamic_ntk=extend)


def _build_presets() -> dict[str, Config]:
    p: dict[str, Config] = {}
    yarn = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
    for size, s in _ZEN.items():
        p[f"zen-{size}"] = _dense(f"zen-{size}", *s)
        if size in _LONG:
            p[f"zen-{size}"] = p[f"zen-{size}"].replace(context_length=131072, rope_scaling=dict(yarn))
    for size in ("0.5b", "1.5b", "7b", "32b"):
        p[f"zen-coder-{size}"] = _dense(f"zen-coder-{size}", *_ZEN[size], ctx=32768)
    for size in ("1.5b", "7b", "72b"):
        p[f"zen-math-{size}"] = _dense(f"zen-math-{size}", *_ZEN[size], ctx=4096, theta=10000.0)
    for size, s in _QWEN15.items():
        p[f"qwen1.5-{size}"] = _dense(f"qwen1.5-{size}", *s, theta=5e6 if size == "4b" else 1e6)
    for size, s in _QWEN1.items():
        p[f"qwen-{size}"] = _qwen1(f"qwen-{size}", *s)
    p["qwen1.5-moe-a2.7b"] = Config(
        name="qwen1.5-moe-a2.7b", arch="qwen2_moe", vocab_size=151936, hidden_size=2048, num_layers=24,
        num_heads=16, num_kv_heads=16, head_dim=128, intermediate_size=5632, tie_word_embeddings=False,
        context_length=8192, num_experts=60, num_experts_per_tok=4, moe_intermediate_size=1408,
        shared_expert_intermediate_size=5632, norm_topk_prob=False, decoder_sparse_step=1)
    # For tests and from-scratch training: the real vocabulary, tiny everything else (29.7M params).
    # Untied: a separate output head learns next-token statistics far sooner than a tied one (README).
    p["zen-tiny"] = Config(name="zen-tiny", hidden_size=96, num_layers=4, num_heads=3, num_kv_heads=1,
                           head_dim=32, intermediate_size=384, context_length=2048, tie_word_embeddings=False)
    return p


PRESETS: dict[str, Config] = _build_presets()


def preset(name: str) -> Config:
    key = name.lower()
    if key not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known: {', '.join(PRESETS)}")
    return PRESETS[key].replace()


def human(n: int) -> str:
    """1234567 -> '1.23M' (for printing parameter counts)."""
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.{max(0, 2 - int(math.log10(n / scale)))}f}{unit}"
    return str(n)
