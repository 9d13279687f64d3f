"""Write a trained model as an HF model directory that zenlm, `zen chat` and transformers all load.

config.json (Qwen2 / Qwen2-MoE fields), model.safetensors (HF names; a tied head is not stored twice),
tokenizer.json + tokenizer_config.json, generation_config.json. LoRA adapters are merged (and a
4-bit QLoRA base dequantized) one tensor at a time while the file is written, so export needs no
second copy of the model's weights. It does not write GGUF.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

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


@dataclass(slots=True)
class Lazy:
    """A tensor made only when written: its shape, and the function that makes it."""
    shape: tuple[int, ...]
    make: Callable[[], torch.Tensor]


def plain_state_dict(sd: dict[str, torch.Tensor], lora_scale: float | None = None,
                     dequantize=None) -> dict[str, torch.Tensor | Lazy]:
    """HF names only: `X.base.weight` + `X.lora_B @ X.lora_A * scale` becomes a Lazy `X.weight`.

    `dequantize(prefix, sd)` turns a 4-bit base (packed/scale/low buffers) back into a float weight.
    The merged weights are made one at a time by save_model_dir, never all at once.
    """
    out: dict[str, torch.Tensor | Lazy] = {}
    for key, t in sd.items():
        if ".lora_" in key or key.endswith((".base.packed", ".base.scale", ".base.low")):
            continue
        out[key.replace(".base.", ".")] = t
    for key in [k for k in sd if k.endswith(".lora_A")]:
        prefix = key.removesuffix(".lora_A")

        def merged(prefix=prefix) -> torch.Tensor:
            if f"{prefix}.base.packed" in sd:
                base = dequantize(prefix, sd)
            else:
                base = sd[f"{prefix}.base.weight"].float()
            delta = sd[f"{prefix}.lora_B"].float() @ sd[f"{prefix}.lora_A"].float() * lora_scale
            return (base + delta).to(sd[f"{prefix}.lora_A"].dtype)

        out[f"{prefix}.weight"] = Lazy((sd[f"{prefix}.lora_B"].shape[0], sd[key].shape[1]), merged)
    return out


_ST_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16"}


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor | Lazy], dtype: torch.dtype) -> None:
    """The safetensors format written one tensor at a time: header from the shapes, then each tensor's bytes."""
    size = torch.empty((), dtype=dtype).element_size()
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    names = sorted(tensors)
    for name in names:
        n = size * int(torch.Size(tensors[name].shape).numel())
        header[name] = {"dtype": _ST_DTYPES[dtype], "shape": list(tensors[name].shape),
                        "data_offsets": [offset, offset + n]}
        offset += n
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    with open(path, "wb") as f:
        f.write(len(head).to_bytes(8, "little") + head)
        for name in names:
            t = tensors[name]
            t = t.make() if isinstance(t, Lazy) else t
            t = t.detach().to("cpu", dtype).contiguous()
            assert tuple(t.shape) == tuple(header[name]["shape"]), f"{name}: {tuple(t.shape)} vs its header"
            f.write(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
            del t


def save_model_dir(directory: str | Path, config: Config, state_dict: dict[str, torch.Tensor | Lazy], tokenizer,
                   generation_config: dict | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Write the HF directory; `state_dict` has HF names (plain_state_dict of a trained model)."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    tensors = dict(state_dict)
    if config.tie_word_embeddings:
        tensors.pop("lm_head.weight", None)
    elif "lm_head.weight" not in tensors:
        raise ValueError("an untied model needs lm_head.weight in its state dict")
    write_safetensors(path / "model.safetensors", tensors, dtype)
    (path / "config.json").write_text(json.dumps(hf_config(config, dtype), indent=2) + "\n")
    tokenizer.save(path)
    eos = tokenizer.eos_token_ids
    gen = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": eos if len(eos) > 1 else eos[0],
           "pad_token_id": tokenizer.pad_token_id, "do_sample": True}
    gen |= {k: v for k, v in (generation_config or {}).items() if not k.endswith("token_id")}
    (path / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return path
