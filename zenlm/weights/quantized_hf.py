"""HF directories quantized with GPTQ or AWQ (config.json's `quantization_config`) -> a zenlm model.

`read_quantization` reads the config (or AutoGPTQ's quantize_config.json, AutoAWQ's quant_config.json);
`build` fills a model from the checkpoint's tensors. A linear stored as qweight/qzeros/scales(/g_idx)
becomes, with `quant` set, the QLinear its integers already are (quant/convert.py; its bits are the
checkpoint's, whatever `quant` says) and, without, a float linear holding the dequantized weight (the
exact reference). Every other tensor loads as load.build loads it; with `quant`, float linears left
(lm_head) and the embedding are quantized as load.build does. Packing is quant/packing.py's.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from zenlm.config import Config
from zenlm.model import SwiGLULinear, Transformer, checkpoint_layout, checkpoint_state_dict
from zenlm.quant import convert, packing
from zenlm.quant.linear import MODES, QEmbedding, QLinear, quantize_linear
from zenlm.quant.packing import Grid, from_awq, from_gptq

log = logging.getLogger("zenlm.weights")

CODE = [Path(__file__), Path(convert.__file__), Path(packing.__file__)]  # in the cache key
QUANT_LEAVES = ("qweight", "qzeros", "scales", "g_idx")


@dataclass(frozen=True, slots=True)
class Quantization:
    """What a checkpoint's quantization_config says, normalized."""

    method: str  # "gptq" | "awq"
    bits: int
    group_size: int  # -1: one group per row
    sym: bool
    desc_act: bool
    v1: bool  # GPTQ's classic format: zero points stored minus one


def read_quantization(directory: Path) -> Quantization | None:
    """The GPTQ/AWQ quantization of an HF directory, None if it has none; ValueError for one zenlm cannot load."""
    cfg = json.loads((directory / "config.json").read_text()).get("quantization_config")
    source = directory / "config.json"
    for name in ("quantize_config.json", "quant_config.json"):  # AutoGPTQ's and AutoAWQ's own files
        if cfg is None and (directory / name).exists():
            cfg, source = json.loads((directory / name).read_text()), directory / name
    if cfg is None:
        return None
    cfg = {k.lower(): v for k, v in cfg.items()}
    method = str(cfg.get("quant_method") or ("awq" if "w_bit" in cfg or "version" in cfg else "gptq")).lower()
    bits = int(cfg.get("bits", cfg.get("w_bit", 4)))
    group = int(cfg.get("group_size", cfg.get("q_group_size", -1)))
    where = f"{source}: quantization_config"
    if method not in ("gptq", "awq"):
        raise ValueError(f"{where}: quant_method {method!r} is not supported (zenlm loads gptq and awq)")
    if bits not in (4, 8) or (method == "awq" and bits != 4):
        raise ValueError(f"{where}: {bits}-bit {method} is not supported (gptq: 4 or 8 bits, awq: 4 bits)")
    if group != -1 and (group <= 0 or group % 32):
        raise ValueError(f"{where}: group_size {group} is not supported (a multiple of 32, or -1)")
    if str(cfg.get("pack_dtype", "int32")).removeprefix("torch.") != "int32":
        raise ValueError(f"{where}: pack_dtype {cfg['pack_dtype']!r} is not supported (int32)")
    if method == "awq":
        version = str(cfg.get("version", "gemm")).lower()
        if version != "gemm" or not cfg.get("zero_point", True):
            raise ValueError(f"{where}: AWQ version {version!r} with zero_point={cfg.get('zero_point')} is not "
                             "supported (gemm with zero points)")
        return Quantization("awq", bits, group, False, False, False)
    fmt = str(cfg.get("checkpoint_format", "gptq")).lower()
    if fmt not in ("gptq", "gptq_v2"):
        raise ValueError(f"{where}: checkpoint_format {fmt!r} is not supported (gptq or gptq_v2)")
    return Quantization("gptq", bits, group, bool(cfg.get("sym", True)), bool(cfg.get("desc_act", False)),
                        fmt == "gptq")


def _grid(tensors: dict[str, torch.Tensor], member: str, q: Quantization, path: Path) -> Grid:
    """One linear's packed tensors (taken out of tensors) -> Grid."""
    parts = {leaf: tensors.pop(f"{member}.{leaf}", None) for leaf in QUANT_LEAVES}
    missing = [leaf for leaf in ("qzeros", "scales") if parts[leaf] is None]
    if missing:
        raise ValueError(f"{path}: {member}.qweight without {' and '.join(missing)}")
    try:
        if q.method == "gptq":
            return from_gptq(parts["qweight"], parts["qzeros"], parts["scales"], parts["g_idx"], q.bits,
                             q.group_size, q.v1)
        return from_awq(parts["qweight"], parts["qzeros"], parts["scales"], q.bits, q.group_size)
    except ValueError as e:
        raise ValueError(f"{path}: {member}: {e}") from None


def build(config: Config, tensors, path: Path, q: Quantization, dtype: torch.dtype = torch.float32,
          device: str | torch.device = "cpu", quant: str | None = None) -> Transformer:
    """Build a Transformer on meta and fill it from a GPTQ/AWQ checkpoint's (HF-named) tensors, strictly."""
    from zenlm.weights.load import UNQUANTIZED

    tensors = dict(tensors)  # mmap views: nothing is read yet
    with torch.device("meta"):
        model = Transformer(config)
    layout = checkpoint_layout(model)
    expected = {k: v.shape for k, v in checkpoint_state_dict(model).items()}
    owners: dict[str, list[str]] = {}  # a linear of the model -> its quantized checkpoint members
    for name in [n for n in tensors if n.endswith(".qweight")]:
        member = name.removesuffix(".qweight")
        if f"{member}.weight" not in layout:
            raise ValueError(f"{path}: unexpected tensor {name!r} for this {config.arch} config")
        owners.setdefault(layout[f"{member}.weight"][0].rpartition(".")[0], []).append(member)
    done: set[str] = set()  # checkpoint names a quantized module took
    fallback: set[str] = set()  # linears whose grid QLinear cannot hold: int8 from the dequantized weight
    for owner, members in owners.items():
        names = sorted((k for k, (t, _) in layout.items() if t == f"{owner}.weight"),
                       key=lambda k: layout[k][1].start if layout[k][1] else 0)
        if len(members) != len(names):
            raise ValueError(f"{path}: {owner}: some members are quantized and some are not")
        grids = []
        for name in names:
            member = name.removesuffix(".weight")
            g = _grid(tensors, member, q, path)
            if g.q.shape != expected[name]:
                raise ValueError(f"{path}: {member} holds a weight of shape {tuple(g.q.shape)}, "
                                 f"expected {tuple(expected[name])}")
            grids.append(g)
        linear = model.get_submodule(owner)
        bias_names = [f"{n.removesuffix('.weight')}.bias" for n in names] if linear.bias is not None else []
        module = None
        if quant:
            absent = [b for b in bias_names if b not in tensors]
            if absent:
                raise ValueError(f"{path}: missing tensors {', '.join(absent[:3])}")
            bias = torch.cat([tensors[b].float() for b in bias_names]) if bias_names else None
            module = convert.to_module(grids, bias, glu=isinstance(linear, SwiGLULinear))
            if module is None:
                log.warning("%s: %s's groups are not whole 32-input blocks in one input order; it is "
                            "re-quantized to int8 from its dequantized weight", path, owner)
                fallback.add(owner)
        if module is None:
            tensors.update({name: g.dequantize().to(dtype) for name, g in zip(names, grids)})
        else:
            for b in bias_names:
                del tensors[b]
            model.set_submodule(owner, module.to(device))
            done.update(names + bias_names)
    return _fill(model, tensors, layout, expected, done, fallback, path, dtype, device, quant, UNQUANTIZED)


def _fill(model: Transformer, tensors: dict[str, torch.Tensor], layout: dict, expected: dict, done: set[str],
          fallback: set[str], path: Path, dtype: torch.dtype, device, quant: str | None,
          unquantized: set[str]) -> Transformer:
    """Load the float tensors (the modules already made took theirs), tie, then quantize what is left."""
    config = model.config
    sd: dict[str, torch.Tensor] = {}
    received = set(done)
    for name, t in tensors.items():
        if name not in expected:
            raise ValueError(f"{path}: unexpected tensor {name!r} for this {config.arch} config")
        if t.shape != expected[name]:
            raise ValueError(f"{path}: tensor {name} has shape {tuple(t.shape)}, expected {tuple(expected[name])}")
        received.add(name)
        target, rows = layout[name]
        if rows is None:
            sd[target] = t.to(device=device, dtype=dtype)
            continue
        if target not in sd:
            sd[target] = torch.empty(model.get_parameter(target).shape, dtype=dtype, device=device)
        sd[target][rows] = t
    if config.tie_word_embeddings and "lm_head.weight" not in received and "model.embed_tokens.weight" in sd:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
        received.add("lm_head.weight")
    missing = [k for k in layout if k not in received]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ValueError(f"{path}: missing tensors {', '.join(missing[:3])}{more}")
    model.load_state_dict(sd, assign=True, strict=False)
    model.tie_weights()
    if quant:
        mode = quant if quant in MODES else "int8"
        for name, m in list(model.named_modules()):
            if isinstance(m, nn.Linear) and name.rpartition(".")[2] not in unquantized:
                q = quantize_linear(m, "int8" if name in fallback else mode)
                model.set_submodule(name, q if q is not m else m.to(dtype))
        emb = model.model.embed_tokens
        if isinstance(emb, nn.Embedding) and emb.weight.shape[1] % 32 == 0:
            model.model.embed_tokens = QEmbedding(QLinear.from_float(emb.weight, None, 8), dtype)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    assert not left, f"{path}: tensors never filled: {left[:3]}"
    return model.eval().requires_grad_(False)
