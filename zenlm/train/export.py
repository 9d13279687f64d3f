"""Write a trained model as an HF model directory that zenlm, `zen chat` and transformers all load.

config.json (Qwen2 / Qwen2-MoE fields), model.safetensors (HF names; a tied head is not stored twice),
tokenizer.json + tokenizer_config.json, generation_config.json. LoRA adapters are merged first (and a
4-bit QLoRA base dequantized), so the directory holds plain weights. It does not write GGUF.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from zenlm.config import Config


def hf_config(c: Config, dtype: torch.dtype = torch.float32) -> dict:
    """The config.json transformers expects for this Config (inverse of Config.from_hf)."""
    moe = c.is_moe
    d = {
        "architectures": ["Qwen2MoeForCausalLM" if moe else "Qwen2ForCausalLM"],
        "model_type": c.arch,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "intermediate_size": c.intermediate_size,
        "num_hidden_layers": c.num_layers,
        "num_attention_heads": c.num_heads,
        "num_key_value_heads": c.num_kv_heads,
        "head_dim": c.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": c.context_length,
        "rope_theta": c.rope_theta,
        "rms_norm_eps": c.rms_norm_eps,
        "tie_word_embeddings": c.tie_word_embeddings,
        "use_sliding_window": c.sliding_window is not None,
        "sliding_window": c.sliding_window,
        "max_window_layers": c.max_window_layers if c.sliding_window else c.num_layers,
        "attention_dropout": 0.0,
        "use_cache": True,
        "torch_dtype": str(dtype).removeprefix("torch."),
    }
    if c.rope_scaling:
        scaling = dict(c.rope_scaling)
        kind = scaling.pop("type")
        d["rope_scaling"] = {"rope_type": kind, "type": kind, **scaling}
    if moe:
        d |= {"num_experts": c.num_experts, "num_experts_per_tok": c.num_experts_per_tok,
              "moe_intermediate_size": c.moe_intermediate_size,
              "shared_expert_intermediate_size": c.shared_expert_intermediate_size,
              "norm_topk_prob": c.norm_topk_prob, "decoder_sparse_step": c.decoder_sparse_step,
              "mlp_only_layers": c.mlp_only_layers}
    return d


def plain_state_dict(sd: dict[str, torch.Tensor], lora_scale: float | None = None,
                     dequantize=None) -> dict[str, torch.Tensor]:
    """HF names only: fold `X.base.weight` + `X.lora_B @ X.lora_A * scale` into `X.weight`.

    `dequantize(prefix, sd)` turns a 4-bit base (packed/scale/low buffers) back into a float weight.
    """
    out: dict[str, torch.Tensor] = {}
    for key, t in sd.items():
        if ".lora_" in key or key.endswith((".base.packed", ".base.scale", ".base.low")):
            continue
        out[key.replace(".base.", ".")] = t
    for key in [k for k in sd if k.endswith(".lora_A")]:
        prefix = key.removesuffix(".lora_A")
        if f"{prefix}.base.packed" in sd:
            base = dequantize(prefix, sd)
        else:
            base = sd[f"{prefix}.base.weight"].float()
        delta = sd[f"{prefix}.lora_B"].float() @ sd[f"{prefix}.lora_A"].float() * lora_scale
        out[f"{prefix}.weight"] = (base + delta).to(sd[f"{prefix}.lora_A"].dtype)
    return out


def save_model_dir(directory: str | Path, config: Config, state_dict: dict[str, torch.Tensor], tokenizer,
                   generation_config: dict | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Write the HF directory; `state_dict` has HF names (plain_state_dict of a trained model)."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu", dtype).contiguous() for k, v in state_dict.items()}
    if config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    elif "lm_head.weight" not in tensors:
        raise ValueError("an untied model needs lm_head.weight in its state dict")
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(hf_config(config, dtype), indent=2) + "\n")
    tokenizer.save(path)
    eos = tokenizer.eos_token_ids
    gen = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": eos if len(eos) > 1 else eos[0],
           "pad_token_id": tokenizer.pad_token_id, "do_sample": True}
    gen |= {k: v for k, v in (generation_config or {}).items() if not k.endswith("token_id")}
    (path / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return path
