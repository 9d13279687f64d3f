"""load(name) -> Loaded(config, model, tokenizer, generation_config): build on meta, assign, tie.

The model is built on the meta device and the checkpoint's tensors are assigned into it, so
weights are never copied twice. Every tensor is checked against the model (names and shapes);
a bad file gives one ValueError naming the file and the problem.
"""

from __future__ import annotations

import glob
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

from zenlm.config import Config
from zenlm.kernels.norm import NativeRMSNorm
from zenlm.model import RMSNorm, SwiGLULinear, Transformer, checkpoint_layout, checkpoint_state_dict
from zenlm.quant.linear import QEmbedding, QLinear, quantize_linear
from zenlm.tokenizer import Tokenizer
from zenlm.weights import prequantized, quantized_hf
from zenlm.weights.defaults import gguf_generation_config
from zenlm.weights.gguf import Blocks, GGUFCheckpoint
from zenlm.weights.registry import cache_dir, resolve
from zenlm.weights.safetensors import checkpoint_files, read_safetensors
from zenlm.weights.transcode import Codes, concat, float_codes, gguf_codes

QUANT_MODES = ("auto", "int4", "int8")


@dataclass(slots=True)
class Loaded:
    config: Config
    model: Transformer
    tokenizer: Tokenizer
    generation_config: dict
    path: Path


def load(name: str | Path | None = "default", dtype: torch.dtype = torch.float32,
         device: str | torch.device = "cpu", progress: bool = True, quant: str | None = None) -> Loaded:
    """Load a model by name ("default", a .gguf file, an HF directory or a hub name: registry.py).

    quant ("int4" | "int8") quantizes every linear as its weights arrive, so the float weights of
    the whole model never sit in memory at once; the rest of the model then runs in `dtype`. "auto"
    keeps a GGUF file's precision per tensor (4, 5 or 8 bits: weights/transcode.py) and puts float
    weights in 8 bits.
    """
    src = resolve(name, progress)
    if src.kind == "preset":
        raise ValueError(f"{src.name} is a preset (a shape without weights); give a .gguf file or an HF directory")
    path, files = src.path, None
    if src.kind == "gguf":
        ckpt = GGUFCheckpoint(src.path)
        path, files = ckpt.files[0], ckpt.files  # a split file: its first shard names it
        config, tensors, count = ckpt.config, ckpt.tensors(blocks=quant == "auto"), len(ckpt)
        tokenizer = Tokenizer.from_gguf(ckpt.meta)
        gen = gguf_generation_config(ckpt.meta)  # the file's identity decides, not the name it came by
    else:
        config, tokenizer = src.config(), src.tokenizer()
        files = checkpoint_files(src.path)
        tensors, count = (item for f in files for item in read_safetensors(f)), None
        gen_file = src.path / "generation_config.json"
        gen = json.loads(gen_file.read_text()) if gen_file.exists() else {}
    gptq_awq = quantized_hf.read_quantization(src.path) if src.kind == "hf" else None  # quantization_config
    cached = _prequantized_path(path, quant, dtype, files) if quant else None
    if cached is not None and cached.exists():
        model = prequantized.restore(config, cached, device)
    else:
        bar = tqdm(tensors, total=count, desc=f"loading {path.name}", unit="tensor", disable=not progress,
                   leave=False)
        if gptq_awq is not None:
            model = quantized_hf.build(config, bar, path, gptq_awq, dtype, device, quant)
        else:
            model = build(config, bar, path, dtype, device, quant)
        if cached is not None:
            for stale in _stale_copies(cached):  # this source's copies made by older code or an older file
                stale.unlink(missing_ok=True)
            prequantized.save(model, cached)
    if quant:  # quantized models aim for speed: the norms on the C kernel too
        for name, m in list(model.named_modules()):
            if isinstance(m, RMSNorm):
                model.set_submodule(name, NativeRMSNorm(m.weight, m.eps))
    return Loaded(config, model, tokenizer, gen, path)


def _prequantized_path(src: Path, quant: str, dtype: torch.dtype, files: list[Path] | None = None) -> Path:
    """Where the quantized copy of a checkpoint lives: {stem}-{quant}-{which}-{version}.safetensors, where
    which hashes the resolved source path, mode and dtype (one name per copy a load can ask for) and
    version the source files (size, mtime; every shard of a split GGUF) and the code of everything that
    decides the quantized tensors."""
    import zenlm.model
    from zenlm.kernels import loader
    from zenlm.quant import linear
    from zenlm.weights import dequant, transcode

    files = files or (sorted(src.glob("*.safetensors")) if src.is_dir() else [src])
    h = hashlib.sha256(f"{src.resolve()}|{quant}|{dtype}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    for code in (Path(__file__), Path(zenlm.model.__file__), Path(linear.__file__), Path(transcode.__file__),
                 Path(dequant.__file__), *loader.QUANTIZER, *quantized_hf.CODE):
        h.update(code.read_bytes())
    return cache_dir() / "quantized" / f"{_copy_prefix(src, quant, str(dtype))}-{h.hexdigest()[:16]}.safetensors"


def _copy_prefix(src: Path, quant: str, dtype: str) -> str:
    which = hashlib.sha256(f"{src.resolve()}|{quant}|{dtype}".encode()).hexdigest()[:8]
    return f"{src.stem}-{quant}-{which}"


def quantized_copies(src: Path) -> dict[str, list[Path]]:
    """This checkpoint's quantized copies in the cache, by mode ("int4": [...]), whatever dtype or version."""
    found: dict[str, list[Path]] = {}
    for quant, dtype in ((q, str(d)) for q in QUANT_MODES for d in (torch.float32, torch.bfloat16, torch.float16)):
        prefix = glob.escape(_copy_prefix(src, quant, dtype))
        copies = sorted((cache_dir() / "quantized").glob(f"{prefix}-{'?' * 16}.safetensors"))
        if copies:
            found.setdefault(quant, []).extend(copies)
    return found


def _stale_copies(cached: Path) -> list[Path]:
    """The other versions of the same quantized copy (same source path, mode and dtype): never another
    model's, even one whose file has the same name."""
    prefix = glob.escape(cached.name.rsplit("-", 1)[0])
    return [p for p in cached.parent.glob(f"{prefix}-{'?' * 16}.safetensors") if p != cached]


UNQUANTIZED = {"gate", "shared_expert_gate"}  # MoE routers stay in float


def build(config: Config, tensors: Iterator[tuple[str, torch.Tensor]], path: Path,
          dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
          quant: str | None = None) -> Transformer:
    """Build a Transformer on meta and fill it from checkpoint-named (HF) tensors, strictly.

    Each tensor goes where the model's checkpoint_layout says: a fused linear's members (q/k/v,
    gate/up) are copied into their rows of it. With quant, each linear is quantized as soon as all of
    its tensors have arrived, so the float weights of the whole model never sit in memory at once.
    """
    with torch.device("meta"):
        model = Transformer(config)
    layout = checkpoint_layout(model)
    expected = {k: v.shape for k, v in checkpoint_state_dict(model).items()}
    quantized = {n for n, m in model.named_modules()
                 if quant and isinstance(m, nn.Linear) and n.rpartition(".")[2] not in UNQUANTIZED}
    need: dict[str, set[str]] = {}  # a linear to quantize -> checkpoint names still to arrive
    for name, (target, _) in layout.items():
        if target.rpartition(".")[0] in quantized:
            need.setdefault(target.rpartition(".")[0], set()).add(name)
    sd: dict[str, torch.Tensor] = {}
    parts: dict[str, list[Part]] = {}  # auto: each linear's weight parts so far
    received: set[str] = set()
    emb: Codes | None = None  # auto: the embedding table's own codes
    for name, t in tensors:
        if name not in expected:
            raise ValueError(f"{path}: unexpected tensor {name!r} for this {config.arch} config")
        if t.shape != expected[name]:
            if isinstance(t, Blocks) or t.numel() != expected[name].numel():
                raise ValueError(f"{path}: tensor {name} has shape {tuple(t.shape)}, "
                                 f"expected {tuple(expected[name])}")
            t = t.reshape(expected[name])
        received.add(name)
        target, rows = layout[name]
        owner = target.rpartition(".")[0]
        if quant == "auto" and owner in need and target.endswith(".weight"):
            code = gguf_codes(t.data, t.qtype, tuple(t.shape)) if isinstance(t, Blocks) else t
            parts.setdefault(owner, []).append((0 if rows is None else rows.start, code))
            need[owner].discard(name)
            if not need[owner]:
                _install_parts(model, owner, sd, parts.pop(owner), dtype, device)
                del need[owner]
            continue
        if isinstance(t, Blocks):
            if quant == "auto" and target == "model.embed_tokens.weight":
                emb = gguf_codes(t.data, t.qtype, tuple(t.shape))
                continue
            t = t.dequantize()
        if owner in need:  # kept as it came until its linear is whole
            _fill(sd, target, rows, t, model, t.dtype, "cpu")
            need[owner].discard(name)
            if not need[owner]:
                if quant == "auto":
                    _install_parts(model, owner, sd, parts.pop(owner), dtype, device)
                else:
                    _install(model, owner, sd, quant, dtype, device)
                del need[owner]
        else:
            _fill(sd, target, rows, t, model, dtype, device)
    if emb is not None:  # auto: the table at the file's precision (and the head tied to it, the same codes)
        table = QLinear.from_codes(emb.q, emb.d, emb.m, emb.bits, None).to(device)
        model.model.embed_tokens = QEmbedding(table, dtype)
        if config.tie_word_embeddings and "lm_head" in need:
            model.lm_head = table
            received.add("lm_head.weight")
            del need["lm_head"]
    if config.tie_word_embeddings and "model.embed_tokens.weight" in sd:
        if "lm_head" in need:  # quantize the head from the embedding it is tied to
            sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
            received.add("lm_head.weight")
            _install(model, "lm_head", sd, quant, dtype, device)
            del need["lm_head"]
        elif "lm_head.weight" not in received:
            sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
            received.add("lm_head.weight")
    table = sd.get("model.embed_tokens.weight")
    if quant and table is not None and table.shape[1] % 32 == 0:  # the table too: a lookup dequantizes its rows
        model.model.embed_tokens = QEmbedding(QLinear.from_float(sd.pop("model.embed_tokens.weight"), None, 8), dtype)
    missing = [k for k in layout if k not in received]
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ValueError(f"{path}: missing tensors {', '.join(missing[:3])}{more}")
    model.load_state_dict(sd, assign=True, strict=not quant)
    model.tie_weights()
    return model.eval().requires_grad_(False)


def _fill(sd: dict[str, torch.Tensor], target: str, rows: slice | None, t: torch.Tensor, model: Transformer,
          dtype: torch.dtype, device: str | torch.device) -> None:
    """Put one checkpoint tensor into the state dict: as it is, or copied into its rows of a fused tensor."""
    if rows is None:
        sd[target] = t.to(device=device, dtype=dtype)
        return
    if target not in sd:
        shape = model.get_parameter(target).shape
        sd[target] = torch.empty(shape, dtype=dtype, device=device)
    sd[target][rows] = t


def _install(model: Transformer, owner: str, sd: dict[str, torch.Tensor], quant: str, dtype: torch.dtype,
             device: str | torch.device) -> None:
    """Quantize one whole linear (its float tensors taken out of sd) in place of its meta module."""
    linear = model.get_submodule(owner)
    linear.weight = nn.Parameter(sd.pop(f"{owner}.weight"), requires_grad=False)
    if linear.bias is not None:
        linear.bias = nn.Parameter(sd.pop(f"{owner}.bias"), requires_grad=False)
    q = quantize_linear(linear, "int8" if quant == "auto" else quant)
    if q is linear:  # a width the kernel cannot take: it stays in float, in the model's dtype
        q.to(dtype=dtype)
    model.set_submodule(owner, q.to(device))


Part = tuple[int, Codes | torch.Tensor]  # a linear's weight part under auto: its first row, its codes or floats


def _install_parts(model: Transformer, owner: str, sd: dict[str, torch.Tensor], parts: list[Part],
                   dtype: torch.dtype, device: str | torch.device) -> None:
    """auto: one whole linear from its weight parts (a fused q/k/v or gate/up has several), each a GGUF
    tensor's codes or a float tensor; float parts alone are quantized to 8 bits as usual."""
    parts = [p for _, p in sorted(parts, key=lambda p: p[0])]
    if all(isinstance(p, torch.Tensor) for p in parts):
        sd[f"{owner}.weight"] = torch.cat(parts) if len(parts) > 1 else parts[0]
        _install(model, owner, sd, "auto", dtype, device)
        return
    codes = concat([p if isinstance(p, Codes) else float_codes(p, 8) for p in parts])
    linear = model.get_submodule(owner)
    bias = sd.pop(f"{owner}.bias") if linear.bias is not None else None
    q = QLinear.from_codes(codes.q, codes.d, codes.m, codes.bits, bias, glu=isinstance(linear, SwiGLULinear))
    model.set_submodule(owner, q.to(device))
