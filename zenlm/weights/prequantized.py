"""A quantized model written once to the cache and loaded from it after: no re-quantizing at start-up.

The file is safetensors: the model's state dict (the model's own names: fused q/k/v and gate/up) plus,
in its metadata, what is not a plain Transformer (each quantized module's spec) and which entries
alias another (tied weights), so `restore` can rebuild the same modules on meta and assign the tensors.
The cache key (load.py) names the source file, its size and mtime, the mode and the code version.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from zenlm.config import Config
from zenlm.model import Transformer
from zenlm.quant.convert import PermutedInput
from zenlm.quant.linear import QEmbedding, QLinear, is_quantized


def save(model: Transformer, path: Path) -> None:
    specs = {n: m.spec() for n, m in model.named_modules() if is_quantized(m) or isinstance(m, PermutedInput)}
    sd, aliases, seen = {}, {}, {}
    for k, v in model.state_dict().items():
        if v.data_ptr() in seen:
            aliases[k] = seen[v.data_ptr()]
        else:
            seen[v.data_ptr()], sd[k] = k, v.contiguous()
    meta = {"specs": json.dumps(specs), "aliases": json.dumps(aliases)}
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    os.close(fd)
    save_file(sd, tmp, metadata=meta)
    os.replace(tmp, path)  # atomic: a reader never sees half a file


def _module(spec: list) -> torch.nn.Module:
    if spec[0] == "permuted":  # an act-order GPTQ linear (quant/convert.py)
        return PermutedInput.empty(_module(spec[1]))
    kind, K, N, bits, extra = spec
    if kind in ("linear", "swiglu"):
        return QLinear(K, N, bits, bias=extra, glu=kind == "swiglu")
    return QEmbedding(QLinear(K, N, bits, bias=False), getattr(torch, extra.removeprefix("torch.")))


def restore(config: Config, path: Path, device: str | torch.device = "cpu") -> Transformer:
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    sd = load_file(str(path), device=str(device))
    for k, target in json.loads(meta["aliases"]).items():
        sd[k] = sd[target]
    with torch.device("meta"):
        model = Transformer(config)
    for name, spec in json.loads(meta["specs"]).items():
        model.set_submodule(name, _module(spec))
    model.load_state_dict(sd, assign=True, strict=True)
    return model.eval().requires_grad_(False)
