"""Write a trained model as an HF model directory that zenlm, `zen chat` and transformers all load.

config.json (Qwen2 / Qwen2-MoE fields), model.safetensors (HF names: the fused q/k/v and gate/up split
back; a tied head is not stored twice), tokenizer.json + tokenizer_config.json, generation_config.json.
LoRA adapters are merged (and a 4-bit QLoRA base dequantized) one tensor at a time while the file is
written, so export needs no second copy of the model's weights. It does not write GGUF.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import torch

from zenlm.config import Config
from zenlm.model import Transformer, checkpoint_layout


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
    """A tensor made only when written: its shape, the function that makes it, and LoRA deltas to add
    to the rows of its checkpoint members (member name -> function making scale * B @ A for them)."""
    shape: tuple[int, ...]
    make: Callable[[], torch.Tensor]
    deltas: dict[str, Callable[[], torch.Tensor]] = field(default_factory=dict)


def plain_state_dict(sd: dict[str, torch.Tensor], lora_scale: float | None = None,
                     dequantize=None) -> dict[str, torch.Tensor | Lazy]:
    """The model's own names with no LoRA wrapper: `X.base.weight` and X's A/B pairs become a Lazy
    `X.weight` whose deltas save_model_dir adds to each member's rows (X may be a fused qkv_proj).

    `dequantize(prefix, sd)` turns a 4-bit base (packed/scale/low buffers) back into a float weight.
    The merged weights are made one at a time by save_model_dir, never all at once.
    """
    out: dict[str, torch.Tensor | Lazy] = {}
    for key, t in sd.items():
        if ".lora_" in key or key.endswith((".base.packed", ".base.scale", ".base.low")):
            continue
        out[key.replace(".base.", ".")] = t
    pairs: dict[str, list[str]] = {}  # LoRA module -> its members with an A/B pair
    for key in sd:
        if ".lora_A." in key:
            prefix, _, member = key.rpartition(".lora_A.")
            pairs.setdefault(prefix, []).append(member)
    for prefix, members in pairs.items():
        def base(prefix=prefix) -> torch.Tensor:
            if f"{prefix}.base.packed" in sd:
                return dequantize(prefix, sd)
            return sd[f"{prefix}.base.weight"].float()

        def delta(member: str, prefix=prefix) -> torch.Tensor:
            return sd[f"{prefix}.lora_B.{member}"].float() @ sd[f"{prefix}.lora_A.{member}"].float() * lora_scale

        packed = sd.get(f"{prefix}.base.packed")
        shape = (packed.shape[0], 2 * packed.shape[1]) if packed is not None else sd[f"{prefix}.base.weight"].shape
        out[f"{prefix}.weight"] = Lazy(tuple(shape), base, {m: partial(delta, m) for m in members})
    return out


class _Shared:
    """One of the model's tensors (or Lazy) cut into its checkpoint members: made once, dropped after
    the last member is written."""

    def __init__(self, src: torch.Tensor | Lazy, users: int):
        self.src, self.left, self.t = src, users, None

    def part(self, rows: slice | None, member: str) -> torch.Tensor:
        if self.t is None:
            self.t = self.src.make() if isinstance(self.src, Lazy) else self.src
        w = self.t if rows is None else self.t[rows]
        if isinstance(self.src, Lazy) and member in self.src.deltas:
            w = w.float() + self.src.deltas[member]()
        self.left -= 1
        if not self.left:
            self.t = None
        return w


def checkpoint_tensors(sd: dict[str, torch.Tensor | Lazy], config: Config) -> dict[str, torch.Tensor | Lazy]:
    """The model's names -> HF checkpoint names: fused q/k/v and gate/up split into their members'
    rows (model.checkpoint_layout), LoRA deltas added to the member they belong to."""
    with torch.device("meta"):
        layout = checkpoint_layout(Transformer(config))
    unknown = set(sd) - {target for target, _ in layout.values()}
    if unknown:
        raise ValueError(f"tensors this {config.arch} config does not have: {', '.join(sorted(unknown)[:3])}")
    users = Counter(target for target, _ in layout.values() if target in sd)
    shared = {target: _Shared(sd[target], n) for target, n in users.items()}
    out: dict[str, torch.Tensor | Lazy] = {}
    for name, (target, rows) in layout.items():
        if target not in sd:
            continue
        src = sd[target]
        if isinstance(src, torch.Tensor):
            out[name] = src if rows is None else src[rows]
            continue
        shape = src.shape if rows is None else (rows.stop - rows.start, *src.shape[1:])
        member = name.rsplit(".", 2)[-2]  # model.layers.0.self_attn.q_proj.weight -> q_proj
        out[name] = Lazy(tuple(shape), partial(shared[target].part, rows, member))
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
            assert not isinstance(t, Lazy) or not t.deltas, f"{name}: LoRA deltas not applied (checkpoint_tensors)"
            t = t.make() if isinstance(t, Lazy) else t
            t = t.detach().to("cpu", dtype).contiguous()
            assert tuple(t.shape) == tuple(header[name]["shape"]), f"{name}: {tuple(t.shape)} vs its header"
            f.write(t.reshape(-1).view(torch.uint8).numpy().data if t.numel() else b"")
            del t


def save_model_dir(directory: str | Path, config: Config, state_dict: dict[str, torch.Tensor | Lazy], tokenizer,
                   generation_config: dict | None = None, dtype: torch.dtype = torch.float32) -> Path:
    """Write the HF directory from the model's state dict (or plain_state_dict of a trained model):
    the tensors go out under HF names, fused ones split back into q/k/v and gate/up."""
    if config.arch == "qwen":  # v1's fused c_attn and w1/w2 names would drop LoRA deltas; its config differs
        raise ValueError("exporting a Qwen v1 (arch qwen) model is not supported yet")
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    tensors = checkpoint_tensors(state_dict, config)
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
