"""GGUF checkpoints of the qwen2, qwen2moe and qwen (v1) architectures -> Config and HF-named torch tensors.

The one GGUF->HF name table lives here (a `qwen` file's names then become v1's: model.v1_name).
Stacked expert tensors are split into per-expert views.
Parsing is in gguf_reader.py (split files: gguf_split.py), dequantization in dequant.py; building the
model is load.py's job.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from gguf import GGMLQuantizationType

from zenlm.config import Config
from zenlm.model import v1_name
from zenlm.weights.dequant import dequantize
from zenlm.weights.gguf_split import read_split
from zenlm.weights.transcode import BITS

_GLOBAL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_BLOCK = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "ffn_gate_inp": "mlp.gate",
    "ffn_gate_shexp": "mlp.shared_expert.gate_proj",
    "ffn_up_shexp": "mlp.shared_expert.up_proj",
    "ffn_down_shexp": "mlp.shared_expert.down_proj",
    "ffn_gate_inp_shexp": "mlp.shared_expert_gate",
}
_EXPERTS = {"ffn_gate_exps": "gate_proj", "ffn_up_exps": "up_proj", "ffn_down_exps": "down_proj"}
_NAME = re.compile(r"blk\.(\d+)\.(\w+)\.(weight|bias)")


def hf_names(name: str, shape: tuple[int, ...], arch: str = "qwen2") -> list[str]:
    """HF parameter names for one GGUF tensor (one per expert for stacked expert tensors); for arch
    "qwen" (v1), v1's names, whose fused attn_qkv is c_attn."""
    if arch == "qwen":
        m = _NAME.fullmatch(name)
        if m is not None and m[2] == "attn_qkv":
            return [f"transformer.h.{m[1]}.attn.c_attn.{m[3]}"]
        return [v1_name(n) for n in hf_names(name, shape)]
    if name in _GLOBAL:
        return [_GLOBAL[name]]
    m = _NAME.fullmatch(name)
    if m is None:
        raise KeyError(name)
    layer, part, kind = m.groups()
    prefix = f"model.layers.{layer}.mlp.experts"
    if part in _EXPERTS:
        return [f"{prefix}.{e}.{_EXPERTS[part]}.{kind}" for e in range(shape[0])]
    if part not in _BLOCK:
        raise KeyError(name)
    return [f"model.layers.{layer}.{_BLOCK[part]}.{kind}"]


@dataclass(slots=True)
class Blocks:
    """A tensor still in a GGUF file's quantized blocks (raw bytes [rows, bytes per row]), for a loader that
    keeps the file's precision (weights/transcode.py) or dequantizes it (`dequantize`)."""

    data: object
    qtype: GGMLQuantizationType
    shape: torch.Size
    where: str  # the file and tensor, for errors

    def dequantize(self) -> torch.Tensor:
        try:
            return dequantize(self.data, self.qtype, tuple(self.shape))
        except ValueError as e:
            raise ValueError(f"{self.where}: {e}") from None


class GGUFCheckpoint:
    """An opened GGUF file (all shards of a split one): its metadata, its Config, its tensors under HF names."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.meta, self.raw, self.files = read_split(self.path)
        self.config = Config.from_gguf(self.meta, has_output="output.weight" in self.raw)

    def __len__(self) -> int:
        return len(self.raw)

    def tensors(self, blocks: bool = False) -> Iterator[tuple[str, torch.Tensor | Blocks]]:
        """Yield (hf_name, float32 tensor), dequantizing one GGUF tensor at a time; with blocks, the
        tensors of a type weights/transcode.py carries over come as Blocks instead."""
        for t in self.raw.values():
            try:
                names = hf_names(t.name, t.shape, self.config.arch)
            except KeyError:
                raise ValueError(f"{self.path}: unexpected tensor {t.name!r} for {self.config.arch}") from None
            b = Blocks(t.data, t.qtype, torch.Size(t.shape), f"{self.path}: tensor {t.name}")
            if blocks and t.qtype in BITS and len(t.shape) >= 2:
                parts = [b] if len(names) == 1 else [Blocks(x, t.qtype, b.shape[1:], b.where) for x in t.data]
            else:
                w = b.dequantize()
                parts = [w] if len(names) == 1 else w.unbind(0)
            yield from zip(names, parts)
