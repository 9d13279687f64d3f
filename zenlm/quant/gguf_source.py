"""The model a GGUF file is written from: any name zenlm loads ('default', a .gguf file, an HF directory, a
hub name), as GGUF-named tensors that are read one at a time, plus the metadata the new file carries.

A GGUF source keeps its tensor order and metadata and can hand over a tensor's stored bytes unchanged. An
HF directory's tensors are renamed with the inverse of weights/gguf.py's name table, and MoE experts are
stacked into one [experts, rows, cols] tensor per projection, as convert_hf_to_gguf.py does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from gguf import GGMLQuantizationType as T

from zenlm.config import Config
from zenlm.quant import gguf_meta
from zenlm.weights.defaults import gguf_generation_config
from zenlm.weights.dequant import dequantize
from zenlm.weights.gguf import _BLOCK, _EXPERTS, _GLOBAL, hf_names


@dataclass(slots=True)
class SourceTensor:
    name: str  # the GGUF name: blk.0.attn_q.weight
    shape: tuple[int, ...]  # PyTorch order
    load: Callable[[], np.ndarray]  # its values, float32
    stored: T | None = None  # a GGUF source's stored type ...
    raw: np.ndarray | None = None  # ... and bytes, copied as they are when the new file keeps that type


@dataclass(slots=True)
class Source:
    config: Config
    tensors: list[SourceTensor]
    kv: gguf_meta.KV  # what the new file says about the model (file type and sampling are added later)
    generation: dict  # generation defaults (generation_config.json keys)
    path: Path


def open_source(name: str, progress: bool = True) -> Source:
    """Resolve a model name and open it for writing; ValueError for a preset or a tensor GGUF cannot name."""
    from zenlm.weights.registry import resolve

    src = resolve(name, progress)
    if src.kind == "gguf":
        return _from_gguf(src.path)
    if src.kind == "hf":
        return _from_hf(src.path)
    raise ValueError(f"{src.name} is a preset (a shape without weights); give a .gguf file or an HF directory")


def _from_gguf(path: Path) -> Source:
    from zenlm.weights.gguf_split import read_split

    meta, raw, files = read_split(path)
    config = Config.from_gguf(meta, has_output="output.weight" in raw)
    tensors = []
    for t in raw.values():
        try:
            hf_names(t.name, t.shape)
        except KeyError:
            raise ValueError(f"{path}: unexpected tensor {t.name!r} for {config.arch}") from None
        tensors.append(SourceTensor(t.name, t.shape, lambda t=t: _values(t), t.qtype, t.data))
    return Source(config, tensors, gguf_meta.copied(meta), gguf_generation_config(meta), files[0])


def _values(t) -> np.ndarray:
    """A GGUF tensor's float32 values: a float32 tensor is its own mmap view, anything else is decoded."""
    if t.qtype == T.F32:
        return np.asarray(t.data)
    return dequantize(t.data, t.qtype, t.shape).numpy()


# The inverse of weights/gguf.py's table: model.norm.weight -> output_norm.weight, self_attn.q_proj -> attn_q, ...
_INVERSE_GLOBAL = {hf: name for name, hf in _GLOBAL.items()}
_INVERSE_BLOCK = {hf: part for part, hf in _BLOCK.items()}
_INVERSE_EXPERTS = {hf: part for part, hf in _EXPERTS.items()}
_HF_BLOCK = re.compile(r"model\.layers\.(\d+)\.(.+)\.(weight|bias)")
_HF_EXPERT = re.compile(r"model\.layers\.(\d+)\.mlp\.experts\.(\d+)\.(\w+)\.weight")


def gguf_name(hf: str) -> str | tuple[str, int]:
    """The GGUF name of an HF parameter, or (stacked GGUF name, expert index) for an expert's; KeyError if none."""
    if hf in _INVERSE_GLOBAL:
        return _INVERSE_GLOBAL[hf]
    m = _HF_EXPERT.fullmatch(hf)
    if m and m.group(3) in _INVERSE_EXPERTS:
        layer, expert, proj = m.groups()
        return f"blk.{layer}.{_INVERSE_EXPERTS[proj]}.weight", int(expert)
    m = _HF_BLOCK.fullmatch(hf)
    if m is None or m.group(2) not in _INVERSE_BLOCK:
        raise KeyError(hf)
    layer, module, kind = m.groups()
    return f"blk.{layer}.{_INVERSE_BLOCK[module]}.{kind}"


def _from_hf(path: Path) -> Source:
    from zenlm.tokenizer import Tokenizer
    from zenlm.weights.safetensors import checkpoint_files, read_safetensors

    config = Config.from_hf(path / "config.json")
    tensors: list[SourceTensor] = []
    experts: dict[str, dict[int, torch.Tensor]] = {}
    for f in checkpoint_files(path):
        for hf, t in read_safetensors(f):
            if hf.endswith(".rotary_emb.inv_freq") or (hf == "lm_head.weight" and config.tie_word_embeddings):
                continue  # a buffer, or a head stored twice: llama.cpp ties it
            try:
                name = gguf_name(hf)
            except KeyError:
                raise ValueError(f"{f}: tensor {hf!r} has no GGUF name for {config.arch}") from None
            if isinstance(name, tuple):
                name, e = name
                if name not in experts:
                    experts[name] = {}
                    tensors.append(SourceTensor(name, (), lambda name=name: _stack(experts[name], config)))
                experts[name][e] = t
            else:
                tensors.append(SourceTensor(name, tuple(t.shape), lambda t=t: t.float().numpy()))
    for st in tensors:
        if st.name in experts:
            got = experts[st.name]
            if sorted(got) != list(range(config.num_experts)):
                raise ValueError(f"{path}: {st.name} has experts {sorted(got)[:4]}..., "
                                 f"expected 0..{config.num_experts - 1}")
            st.shape = (config.num_experts, *got[0].shape)
    tok = Tokenizer.from_hf_dir(path)
    name = json.loads((path / "config.json").read_text()).get("_name_or_path") or path.name
    kv = gguf_meta.general(config, Path(name).name) | gguf_meta.model(config) | gguf_meta.tokenizer(
        tok, config.vocab_size)
    gen_file = path / "generation_config.json"
    gen = json.loads(gen_file.read_text()) if gen_file.exists() else {}
    return Source(config, tensors, kv, gen, path)


def _stack(members: dict[int, torch.Tensor], config: Config) -> np.ndarray:
    return torch.stack([members[e].float() for e in range(config.num_experts)]).numpy()
