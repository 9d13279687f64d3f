"""GGUF metadata for a written file: every key with the value type llama.cpp checks it against.

For a GGUF source its own keys are carried over (as llama-quantize does); for an HF directory they are
made from the Config (architecture, hyperparameters, rope scaling, MoE), the tokenizer (tokens, token
types, merges, special ids, chat template, as convert_hf_to_gguf.py writes them) and names. Either way
the generation defaults go in as general.sampling.* and general.file_type says the file type.
It does not read or write files: gguf_source.py reads, gguf_write.py writes.
"""

from __future__ import annotations

import json
from typing import Any

from gguf import GGUFValueType as V

from zenlm.config import Config, param_counts

GGUF_ARCH = {"qwen2": "qwen2", "qwen2_moe": "qwen2moe"}  # Config.arch -> general.architecture
QUANTIZATION_VERSION = 2  # GGML_QNT_VERSION: the block layouts zenlm writes
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5  # tokenizer.ggml.token_type values

# Keys llama.cpp reads with a fixed type (arch-specific ones without their "{arch}." prefix).
_TYPED = {
    **dict.fromkeys(["block_count", "context_length", "embedding_length", "feed_forward_length",
                     "attention.head_count", "attention.head_count_kv", "attention.key_length",
                     "attention.value_length", "expert_count", "expert_used_count", "expert_feed_forward_length",
                     "expert_shared_feed_forward_length", "rope.dimension_count",
                     "rope.scaling.original_context_length", "vocab_size", "attention.sliding_window",
                     "general.file_type", "general.quantization_version", "general.alignment"], V.UINT32),
    **dict.fromkeys(["rope.freq_base", "attention.layer_norm_rms_epsilon", "attention.layer_norm_epsilon",
                     "rope.scaling.factor", "rope.scaling.attn_factor", "rope.scaling.yarn_log_multiplier",
                     "expert_weights_scale", "general.sampling.temp", "general.sampling.top_p",
                     "general.sampling.min_p", "general.sampling.penalty_repeat",
                     "general.sampling.xtc_probability", "general.sampling.xtc_threshold",
                     "general.sampling.mirostat_tau", "general.sampling.mirostat_eta"], V.FLOAT32),
    **dict.fromkeys(["general.sampling.top_k", "general.sampling.penalty_last_n", "general.sampling.mirostat"],
                    V.INT32),
    **dict.fromkeys(["tokenizer.ggml.add_bos_token", "tokenizer.ggml.add_eos_token", "tokenizer.ggml.add_sep_token",
                     "tokenizer.ggml.add_space_prefix", "expert_weights_norm", "rope.scaling.finetuned"], V.BOOL),
}
_ARRAYS = {"tokenizer.ggml.tokens": V.STRING, "tokenizer.ggml.merges": V.STRING,
           "tokenizer.ggml.token_type": V.INT32, "tokenizer.ggml.scores": V.FLOAT32}
# generation_config.json keys -> general.sampling.* (what llama.cpp takes as the model's sampling defaults)
SAMPLING = {"temperature": "temp", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
            "repetition_penalty": "penalty_repeat"}
# Keys a written file gets anew rather than from its source.
_NOT_COPIED = ("GGUF.", "split.", "general.architecture", "general.file_type", "general.quantization_version")

KV = dict[str, tuple[Any, V, V | None]]  # key -> (value, GGUF value type, array item type)


def value_type(key: str, value: Any) -> tuple[V, V | None]:
    """The GGUF type a key is written with: llama.cpp's for the keys it reads, else inferred from the value."""
    if key in _ARRAYS:
        return V.ARRAY, _ARRAYS[key]
    bare = key.split(".", 1)[1] if not key.startswith(("general.", "tokenizer.")) and "." in key else key
    if bare in _TYPED:
        return _TYPED[bare], None
    if key.startswith("tokenizer.ggml.") and key.endswith("_token_id"):
        return V.UINT32, None
    if isinstance(value, list):
        if not value:
            raise ValueError(f"metadata key {key} is an empty array (GGUF cannot store one)")
        item = value_type("", value[0])[0]
        return V.ARRAY, V.INT32 if item == V.UINT32 else item
    if isinstance(value, bool):
        return V.BOOL, None
    if isinstance(value, int):
        return (V.UINT32 if 0 <= value < 1 << 32 else V.INT64), None
    if isinstance(value, float):
        return V.FLOAT32, None
    if isinstance(value, str):
        return V.STRING, None
    raise ValueError(f"metadata key {key} has a value of type {type(value).__name__} that GGUF cannot store")


def typed(items: dict[str, Any]) -> KV:
    return {k: (v, *value_type(k, v)) for k, v in items.items() if v is not None and v != [] and v != ""}


def copied(meta: dict[str, Any]) -> KV:
    """A GGUF source's own metadata, typed, without the keys a new file states anew."""
    return typed({k: v for k, v in meta.items() if not k.startswith(_NOT_COPIED)})


def sampling(generation_config: dict) -> KV:
    """general.sampling.* from a generation_config (greedy ones, do_sample false, carry none)."""
    if generation_config.get("do_sample") is False:
        return {}
    return typed({f"general.sampling.{SAMPLING[k]}": v for k, v in generation_config.items() if k in SAMPLING})


def model(c: Config) -> KV:
    """Architecture and hyperparameters llama.cpp's qwen2 / qwen2moe loaders read (Config.from_gguf's inverse)."""
    a = GGUF_ARCH[c.arch]
    kv: dict[str, Any] = {
        f"{a}.block_count": c.num_layers, f"{a}.context_length": c.context_length,
        f"{a}.embedding_length": c.hidden_size, f"{a}.feed_forward_length": c.intermediate_size,
        f"{a}.attention.head_count": c.num_heads, f"{a}.attention.head_count_kv": c.num_kv_heads,
        f"{a}.rope.freq_base": float(c.rope_theta), f"{a}.attention.layer_norm_rms_epsilon": float(c.rms_norm_eps),
    }
    if c.head_dim != c.hidden_size // c.num_heads:
        kv |= {f"{a}.attention.key_length": c.head_dim, f"{a}.attention.value_length": c.head_dim}
    if c.rope_scaling:
        kv[f"{a}.rope.scaling.type"] = c.rope_scaling["type"]
        kv[f"{a}.rope.scaling.factor"] = float(c.rope_scaling.get("factor", 1.0))
        if "original_max_position_embeddings" in c.rope_scaling:
            kv[f"{a}.rope.scaling.original_context_length"] = int(c.rope_scaling["original_max_position_embeddings"])
    if c.is_moe:
        kv |= {f"{a}.expert_count": c.num_experts, f"{a}.expert_used_count": c.num_experts_per_tok,
               f"{a}.expert_feed_forward_length": c.moe_intermediate_size,
               f"{a}.expert_shared_feed_forward_length": c.shared_expert_intermediate_size}
        if c.norm_topk_prob:
            kv[f"{a}.expert_weights_norm"] = True
    return typed(kv)


def general(c: Config, name: str) -> KV:
    """general.* names for a model that has none yet: its name, type and size label."""
    from gguf.utility import size_label

    counts = param_counts(c)
    total = counts["params_total"]
    expert = 3 * c.hidden_size * c.moe_intermediate_size * sum(map(c.is_sparse_layer, range(c.num_layers)))
    label = size_label(total, total - expert * c.num_experts, expert, c.num_experts if c.is_moe else 0)
    return typed({"general.type": "model", "general.name": name, "general.size_label": label})


def _looks_special(token: str) -> bool:
    """convert_hf_to_gguf's rule for added tokens not flagged special: <|...|> are control tokens too."""
    return token.startswith("<|") and token.endswith("|>")


def tokenizer(tok, vocab_size: int) -> KV:
    """tokenizer.ggml.* and the chat template from a zenlm Tokenizer, as convert_hf_to_gguf.py writes them:
    ids past the tokenizer's up to vocab_size become [PAD{id}] tokens of type UNUSED."""
    data = json.loads(tok.to_json())
    bpe = data["model"]
    if bpe.get("type") != "BPE" or "merges" not in bpe:
        raise ValueError(f"only byte-level BPE tokenizers go into GGUF here, got a {bpe.get('type')} model")
    if not bpe["merges"]:
        raise ValueError("the tokenizer has no merges; llama.cpp cannot load a BPE tokenizer without them")
    by_id = {i: t for t, i in bpe["vocab"].items()}
    added = {a["id"]: a for a in data.get("added_tokens", [])}
    by_id |= {i: a["content"] for i, a in added.items()}
    if max(by_id) >= vocab_size:
        raise ValueError(f"the tokenizer has token id {max(by_id)} but the model only {vocab_size} embeddings")
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
        elif i in added:
            tokens.append(by_id[i])
            types.append(CONTROL if added[i].get("special") or _looks_special(by_id[i]) else USER_DEFINED)
        else:
            tokens.append(by_id[i])
            types.append(NORMAL)
    merges = [m if isinstance(m, str) else " ".join(m) for m in bpe["merges"]]
    eos = tok.eos_token_ids[0] if tok.eos_token_ids else None
    return typed({
        "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2", "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.token_type": types, "tokenizer.ggml.merges": merges,
        "tokenizer.ggml.bos_token_id": tok.bos_token_id, "tokenizer.ggml.eos_token_id": eos,
        "tokenizer.ggml.padding_token_id": tok.pad_token_id, "tokenizer.ggml.add_bos_token": False,
        "tokenizer.chat_template": tok.chat_template,
    })
