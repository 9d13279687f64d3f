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
from zenlm.kernels.norm import NativeRMSNorm
from zenlm.model import RMSNorm, Transformer
from zenlm.quant.linear import QEmbedding, QLinear, is_quantized, quantize_linear
from zenlm.tokenizer import Tokenizer
from zenlm.weights import prequantized
from zenlm.weights.gguf import GGUFCheckpoint
from zenlm.weights.registry import cache_dir, resolve
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
    cached = _prequantized_path(src.path, quant, dtype) if quant else None
    if cached is not None and cached.exists():
        model = prequantized.restore(config, cached, device)
    else:
        bar = tqdm(tensors, total=count, desc=f"loading {src.path.name}", unit="tensor", disable=not progress,
                   leave=False)
        model = build(config, bar, src.path, dtype, device, quant)
        if cached is not None:
            for stale in _stale_copies(cached):  # this source's copies made by older code or an older file
                stale.unlink(missing_ok=True)
            prequantized.save(model, cached)
    if quant:  # quantized models aim for speed: the norms on the C kernel too
        for name, m in list(model.named_modules()):
            if isinstance(m, RMSNorm):
                model.set_submodule(name, NativeRMSNorm(m.weight, m.eps))
    return Loaded(config, model, tokenizer, gen, src.path)


def _prequantized_path(src: Path, quant: str, dtype: torch.dtype) -> Path:
    """Where the quantized copy of a checkpoint lives: {stem}-{quant}-{which}-{version}.safetensors, where
    which hashes the resolved source path, mode and dtype (one name per copy a load can ask for) and
    version the source files (size, mtime) and the code of everything that decides the quantized tensors."""
    import hashlib

    from zenlm.kernels import loader
    from zenlm.quant import linear

    files = sorted(src.glob("*.safetensors")) if src.is_dir() else [src]
    h = hashlib.sha256(f"{src.resolve()}|{quant}|{dtype}".encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.name}|{st.st_size}|{st.st_mtime_ns}".encode())
    for code in (Path(__file__), Path(linear.__file__), *loader.QUANTIZER):
        h.update(code.read_bytes())
    which = hashlib.sha256(f"{src.resolve()}|{quant}|{dtype}".encode()).hexdigest()[:8]
    return cache_dir() / "quantized" / f"{src.stem}-{quant}-{which}-{h.hexdigest()[:16]}.safetensors"


def _stale_copies(cached: Path) -> list[Path]:
    """The other versions of the same quantized copy (same source path, mode and dtype): never another
    model's, even one whose file has the same name."""
    import glob

    prefix = glob.escape(cached.name.rsplit("-", 1)[0])
    return [p for p in cached.parent.glob(f"{prefix}-{'?' * 16}.safetensors") if p != cached]


# Linears quantized together as one matmul when loading with quant: member -> fused attribute.
FUSED = {"q_proj": "qkv_proj", "k_proj": "qkv_proj", "v_proj": "qkv_proj",
         "gate_proj": "gate_up_proj", "up_proj": "gate_up_proj"}
MEMBERS = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
UNQUANTIZED = {"gate", "shared_expert_gate"}  # MoE routers stay in float


def build(config: Config, tensors: Iterator[tuple[str, torch.Tensor]], path: Path,
          dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
          quant: str | None = None) -> Transformer:
    """Build a Transformer on meta and assign the given HF-named tensors into it (strictly).

    With quant, each linear (or fused group: q/k/v, gate/up) is quantized as soon as its tensors
    have all arrived, so the float weights of the whole model never sit in memory at once.
    """
    with torch.device("meta"):
        model = Transformer(config)
    expected = {k: v.shape for k, v in model.state_dict().items()}
    linears = {n: m for n, m in model.named_modules()
               if quant and isinstance(m, nn.Linear) and n.rpartition(".")[2] not in UNQUANTIZED}
    groups: dict[str, dict[str, torch.Tensor]] = {}  # quantization unit -> {member.leaf: tensor}
    sd: dict[str, torch.Tensor] = {}
    installed: set[str] = set()  # linears (or fused groups) built by _install
    for name, t in tensors:
        if name not in expected:
            raise ValueError(f"{path}: unexpected tensor {name!r} for this {config.arch} config")
        if t.shape != expected[name]:
            if t.numel() != expected[name].numel():
                raise ValueError(f"{path}: tensor {name} has shape {tuple(t.shape)}, "
                                 f"expected {tuple(expected[name])}")
            t = t.reshape(expected[name])
        owner, _, leaf = name.rpartition(".")
        if owner not in linears:
            sd[name] = t.to(device=device, dtype=dtype)
            continue
        parent, _, child = owner.rpartition(".")
        unit = f"{parent}.{FUSED[child]}" if child in FUSED else owner
        got = groups.setdefault(unit, {})
        got[f"{child}.{leaf}"] = t
        members = MEMBERS[FUSED[child]] if child in FUSED else (child,)
        owners = [f"{parent}.{m}" for m in members] if child in FUSED else [owner]
        if len(got) == sum(1 if linears[o].bias is None else 2 for o in owners):
            _install(model, unit, members, got, quant, device)
            installed.add(unit)
            del groups[unit]
    if config.tie_word_embeddings and "model.embed_tokens.weight" in sd:
        if "lm_head" in linears:  # quantize the head from the embedding it is tied to
            installed.add("lm_head")
            _install(model, "lm_head", ("lm_head",), {"lm_head.weight": sd["model.embed_tokens.weight"]},
                     quant, device)
        elif "lm_head.weight" not in sd:
            sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    emb = sd.get("model.embed_tokens.weight")
    if quant and emb is not None and emb.shape[1] % 32 == 0:  # the table too: a lookup dequantizes its rows
        model.model.embed_tokens = QEmbedding(QLinear.from_float(sd.pop("model.embed_tokens.weight"), None, 8), dtype)
    done = installed | {n for n, m in model.named_modules() if is_quantized(m)}  # (a width the kernel
    # cannot take is installed as a float linear)
    fused_away = {f"{u.rpartition('.')[0]}.{m}" for u in done if u.rpartition(".")[2] in MEMBERS
                  for m in MEMBERS[u.rpartition(".")[2]]}
    missing = sorted(k for k in set(expected) - set(sd) if k.rpartition(".")[0] not in done | fused_away)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise ValueError(f"{path}: missing tensors {', '.join(missing[:3])}{more}")
    model.load_state_dict(sd, assign=True, strict=not quant)
    model.tie_weights()
    return model.eval().requires_grad_(False)


def _install(model: Transformer, unit: str, members: tuple[str, ...], got: dict, quant: str, device) -> None:
    """Quantize one linear (or the concatenation of a fused group's members) into the model."""
    parent = unit.rpartition(".")[0]
    weight = torch.cat([got[f"{m}.weight"] for m in members]) if len(members) > 1 else got[f"{members[0]}.weight"]
    biases = [got.get(f"{m}.bias") for m in members]
    bias = None if biases[0] is None else torch.cat(biases)
    owner = model.get_submodule(parent)
    setattr(owner, unit.rpartition(".")[2], quantize_linear(SimpleNamespace(weight=weight, bias=bias), quant).to(device))
    if len(members) > 1:
        for m in members:
            delattr(owner, m)
