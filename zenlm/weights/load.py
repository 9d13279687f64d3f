"""load(name) -> Loaded(config, model, tokenizer, generation_config): build on meta, assign, tie.

The model is built on the meta device and the checkpoint's tensors are assigned into it, so
weights are never copied twice. Every tensor is checked against the model (names and shapes);
a bad file gives one ValueError naming the file and the problem.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import torch
from torch import nn
from tqdm import tqdm

from zenlm.config import Config
from zenlm.model import Transformer
from zenlm.quant.linear import is_quantized, quantize_linear
from zenlm.tokenizer import Tokenizer
from zenlm.weights.gguf import GGUFCheckpoint
from zenlm.weights.registry import resolve
from zenlm.weights.safetensors import checkpoint_files, read_safetensors

# GGUF keys some converters write with the release's sampling defaults -> generation_config keys.
_GGUF_SAMPLING = {"general.sampling.temp": "temperature", "general.sampling.top_p": "top_p",
                  "general.sampling.top_k": "top_k", "general.sampling.min_p": "min_p"}


@dataclass(slots=True)
class Loaded:
    config: Config
    model: Transformer
    tokenizer: Tokenizer
    generation_config: dict
    path: Path


def load(name: str | Path | None = "default", dtype: torch.dtype = torch.float32,
         device: str | torch.device = "cpu", progress: bool = True, quant: str | None = None) -> Loaded:
    """Load a model by name ("default", a .gguf file or an HF directory).

    quant ("int4" | "int8") quantizes every linear as its weights arrive, so the float weights of
    the whole model never sit in memory at once; the rest of the model then runs in `dtype`.
    """
    src = resolve(name)
    if src.kind == "preset":
        raise ValueError(f"{src.name} is a preset (a shape without weights); give a .gguf file or an HF directory")
    if src.kind == "gguf":
        ckpt = GGUFCheckpoint(src.path)
        config, tensors, count = ckpt.config, ckpt.tensors(), len(ckpt)
        tokenizer = Tokenizer.from_gguf(ckpt.meta)
        gen = src.generation_config | {v: ckpt.meta[k] for k, v in _GGUF_SAMPLING.items() if k in ckpt.meta}
    else:
        config = Config.from_hf(src.path / "config.json")
        files = checkpoint_files(src.path)
        tensors, count = (item for f in files for item in read_safetensors(f)), None
        tokenizer = Tokenizer.from_hf_dir(src.path)
        gen_file = src.path / "generation_config.json"
        gen = json.loads(gen_file.read_text()) if gen_file.exists() else {}
    bar = tqdm(tensors, total=count, desc=f"loading {src.path.name}", unit="tensor", disable=not progress,
               leave=False)
    model = build(config, bar, src.path, dtype, device, quant)
    return Loaded(config, model, tokenizer, gen, src.path)


def build(config: Config, tensors: Iterator[tuple[str, torch.Tensor]], path: Path,
          dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
          quant: str | None = None) -> Transformer:
    """Build a Transformer on meta and assign the given HF-named tensors into it (strictly)."""
    with torch.device("meta"):
        model = Transformer(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    linears = {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear)} if quant else {}
    parts: dict[str, dict[str, torch.Tensor]] = {}  # a quantized linear's tensors, until all have come
    sd: dict[str, torch.Tensor] = {}
    for name, t in tensors:
        if name not in expected:
            raise ValueError(f"{path}: unexpected tensor {name!r} for this {config.arch} config")
        if t.shape != expected[name]:
            if t.numel() != expected[name].numel():
                raise ValueError(f"{path}: tensor {name} has shape {tuple(t.shape)}, "
                                 f"expected {tuple(expected[name])}")
            t = t.reshape(expected[name])
        owner, _, leaf = name.rpartition(".")
        if owner in linears:
            got = parts.setdefault(owner, {})
            got[leaf] = t
            if len(got) == (1 if linears[owner].bias is None else 2):
                model.set_submodule(owner, quantize_linear(SimpleNamespace(**({"bias": None} | got)), quant).to(device))
                del parts[owner], linears[owner]
            continue
        sd[name] = t.to(device=device, dtype=dtype)
    if config.tie_word_embeddings and "model.embed_tokens.weight" in sd:
        if "lm_head" in linears:  # quantize the head from the embedding it is tied to
            model.set_submodule("lm_head", quantize_linear(
                SimpleNamespace(weight=sd["model.embed_tokens.weight"], bias=None), quant).to(device))
            del linears["lm_head"]
        elif "lm_head.weight" not in sd and not quant:
            sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    quantized = {n for n, m in model.named_modules() if is_quantized(m)}
    missing = sorted(k for k in set(expected) - set(sd) if k.rpartition(".")[0] not in quantized)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ValueError(f"{path}: missing tensors {', '.join(missing[:3])}{more}")
    model.load_state_dict(sd, assign=True, strict=not quant)
    model.tie_weights()
    return model.eval().requires_grad_(False)
