"""QLoRA's base quantized while it loads: no full-precision copy of the base model ever exists.

The model is built on the meta device. Each checkpoint tensor of a LoRA-targeted linear is read ROWS
rows at a time (a GGUF tensor dequantized from its blocks, a safetensors one cast, a preset's drawn at
random), quantized to the 4-bit base (NF4 or int4, lora.quantize_4bit) and, once all of a linear's
members (q/k/v, gate/up) are in, installed as LoRALinear(Linear4bit); the file pages it came from are
handed back to the OS. Everything else (embedding, norms, an untied head, untargeted linears) is
kept in `dtype` (bf16 by default), filled the same way row by row. The LoRA adapters are fp32; the
trainer's bf16 autocast does the compute. Peak memory while loading: the finished parts plus one
chunk of rows.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import mmap
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from zenlm.config import Config
from zenlm.model import RMSNorm, Transformer, checkpoint_layout, checkpoint_state_dict
from zenlm.train.lora import ROWS, Linear4bit, LoRAConfig, LoRALinear, base_block, lora_linears, quantize_4bit, wrap

Rows = Callable[[int, int], torch.Tensor]


@dataclass(slots=True)
class Pending:
    """A checkpoint tensor not read yet: its shape, `rows(i, j)` reading rows i:j (of dim 0) as a float
    tensor, and `release()` giving its file pages back once it has been read."""
    shape: torch.Size
    rows: Rows
    release: Callable[[], None] = lambda: None
    view: torch.Tensor | None = None  # the tensor itself when it can be kept as it is (a safetensors mmap view)


def _libc(fn: str) -> Callable | None:
    name = ctypes.util.find_library("c")
    return getattr(ctypes.CDLL(name, use_errno=True), fn, None) if name else None


_MADVISE, _TRIM, _MALLOPT = _libc("madvise"), _libc("malloc_trim"), _libc("mallopt")  # glibc's; absent elsewhere
_M_MMAP_THRESHOLD = -3


def heap_returns_large_blocks(threshold: int = 1 << 20) -> None:
    """Serve every allocation over `threshold` bytes (activations, a dequantized weight) by its own mapping,
    given back to the OS when freed: glibc otherwise raises the threshold up to 32 MB as blocks are
    freed and keeps such blocks in its arenas, so a process's RSS grows past what it holds."""
    if _MALLOPT is not None:
        _MALLOPT(_M_MMAP_THRESHOLD, threshold)
_DONTNEED = getattr(mmap, "MADV_DONTNEED", 4)


def trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc keeps freed blocks under 32 MB in its arenas)."""
    if _TRIM is not None:
        _TRIM(0)


def drop_pages(addr: int, nbytes: int) -> None:
    """Let the OS drop the (unmodified, file-backed) pages of a read-only mapping: they no longer count in
    this process's RSS and are read from the file again if touched."""
    if _MADVISE is None or nbytes <= 0:
        return
    start = addr - addr % mmap.PAGESIZE
    _MADVISE(ctypes.c_void_p(start), ctypes.c_size_t(addr + nbytes - start), _DONTNEED)


def gguf_tensors(ckpt) -> Iterator[tuple[str, Pending]]:
    """A GGUF file's tensors under HF names, each dequantized only when and where its rows are read."""
    from zenlm.weights.dequant import dequantize
    from zenlm.weights.gguf import hf_names

    for t in ckpt.raw.values():
        try:
            names = hf_names(t.name, t.shape, ckpt.config.arch)
        except KeyError:
            raise ValueError(f"{ckpt.path}: unexpected tensor {t.name!r} for {ckpt.config.arch}") from None
        stacked = len(names) > 1  # an MoE's experts stacked in one tensor: one per name
        for e, name in enumerate(names):
            data, shape = (t.data[e], t.shape[1:]) if stacked else (t.data, t.shape)

            def rows(i, j, data=data, shape=shape, qtype=t.qtype, where=t.name):
                try:
                    return dequantize(np.ascontiguousarray(data[i:j]), qtype, (j - i, *shape[1:]))
                except ValueError as err:
                    raise ValueError(f"{ckpt.path}: tensor {where}: {err}") from None

            last = e == len(names) - 1
            release = (lambda d=t.data: drop_pages(d.__array_interface__["data"][0], d.nbytes)) if last else None
            yield name, Pending(torch.Size(shape), rows, release or (lambda: None))


def safetensors_tensors(files) -> Iterator[tuple[str, Pending]]:
    from zenlm.weights.safetensors import read_safetensors

    for f in files:
        for name, t in read_safetensors(f):
            yield name, Pending(t.shape, lambda i, j, t=t: t[i:j],
                                lambda t=t: drop_pages(t.data_ptr(), t.nbytes), view=t)


def random_tensors(model: Transformer, seed: int, std: float = 0.02) -> Iterator[tuple[str, Pending]]:
    """A preset's tensors drawn as Transformer.init_weights draws them (normal(0, std) matrices, zero
    biases, unit norms), rows at a time from one seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    layout = checkpoint_layout(model)
    for name, t in checkpoint_state_dict(model).items():
        if name == "lm_head.weight" and model.config.tie_word_embeddings:
            continue  # the embedding's
        owner = model.get_submodule(layout[name][0].rpartition(".")[0])
        if isinstance(owner, RMSNorm):
            rows = lambda i, j, s=t.shape: torch.ones(j - i, *s[1:])  # noqa: E731
        elif name.endswith(".bias"):
            rows = lambda i, j, s=t.shape: torch.zeros(j - i, *s[1:])  # noqa: E731
        else:
            rows = lambda i, j, s=t.shape: torch.empty(j - i, *s[1:]).normal_(0.0, std, generator=gen)  # noqa: E731
        yield name, Pending(t.shape, rows)


def _read(p: Pending, out: torch.Tensor) -> None:
    """Fill `out` (p's shape) from p's rows, ROWS at a time."""
    if out.dim() == 0:
        out.copy_(p.rows(0, 1).reshape(()))
        return
    step = ROWS if out.dim() > 1 else out.shape[0]  # a vector at once
    for i in range(0, out.shape[0], step):
        j = min(i + step, out.shape[0])
        out[i:j] = p.rows(i, j).reshape(out[i:j].shape)


def build_qlora(config: Config, tensors: Iterator[tuple[str, Pending]], cfg: LoRAConfig,
                dtype: torch.dtype = torch.bfloat16, where: str = "checkpoint",
                model: Transformer | None = None) -> Transformer:
    """A Transformer whose LoRA-targeted linears are LoRALinear(Linear4bit), quantized as their tensors
    arrive; the rest in `dtype`. Only the adapters train. Checked strictly against the model."""
    if cfg.quantize is None:
        raise ValueError("QLoRA loading needs a 4-bit base type (nf4 or int4)")
    if model is None:
        with torch.device("meta"):
            model = Transformer(config)
    layout = checkpoint_layout(model)
    expected = {k: v.shape for k, v in checkpoint_state_dict(model).items()}
    need: dict[str, set[str]] = {}  # a targeted linear -> its checkpoint tensors still to come
    for owner in lora_linears(model, cfg.targets):
        need[owner] = {n for n, (target, _) in layout.items() if target.rpartition(".")[0] == owner}
    parts: dict[str, list] = {}  # a targeted linear -> (first row, 4-bit codes) of each weight member so far
    sd: dict[str, torch.Tensor] = {}
    for name, p in tensors:
        if name not in expected:
            raise ValueError(f"{where}: unexpected tensor {name!r} for this {config.arch} config")
        if p.shape != expected[name]:
            raise ValueError(f"{where}: tensor {name} has shape {tuple(p.shape)}, expected {tuple(expected[name])}")
        target, rows = layout[name]
        owner = target.rpartition(".")[0]
        start = 0 if rows is None else rows.start
        if owner in need and target.endswith(".weight"):
            K = model.get_submodule(owner).in_features
            codes = quantize_4bit(p.rows, p.shape[0], K, cfg.quantize, base_block(K))
            parts.setdefault(owner, []).append((start, codes))
        else:  # biases of 4-bit linears stay fp32, like the adapters; the rest in dtype
            want = torch.float32 if owner in need else dtype
            if rows is None and p.view is not None and p.view.dtype == want:
                sd[target] = p.view  # kept as the file holds it: no copy
                p = Pending(p.shape, p.rows)  # its pages stay mapped
            else:
                if target not in sd:
                    sd[target] = torch.empty(model.get_parameter(target).shape, dtype=want)
                _read(p, sd[target] if rows is None else sd[target][rows])
        p.release()
        if owner in need:
            need[owner].discard(name)
            if not need[owner]:
                _install(model, owner, parts.pop(owner, []), sd, cfg)
                del need[owner]
                trim_heap()  # this linear's float chunks, freed
    if config.tie_word_embeddings and "lm_head.weight" not in sd and "model.embed_tokens.weight" in sd:
        sd["lm_head.weight"] = sd["model.embed_tokens.weight"]
    model.load_state_dict(sd, assign=True, strict=False)
    model.tie_weights()
    empty = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if need or empty:
        left = sorted(need) + empty
        raise ValueError(f"{where}: missing tensors for {', '.join(left[:3])}"
                         f"{f' and {len(left) - 3} more' if len(left) > 3 else ''}")
    model.requires_grad_(False)
    for m in model.modules():
        if isinstance(m, LoRALinear):
            m.lora_A.requires_grad_(True)
            m.lora_B.requires_grad_(True)
    return model.train()


def _install(model: Transformer, owner: str, parts: list, sd: dict[str, torch.Tensor], cfg: LoRAConfig) -> None:
    lin = model.get_submodule(owner)
    if not parts:
        raise ValueError(f"{owner}: no weight in the checkpoint")
    bias = sd.pop(f"{owner}.bias") if lin.bias is not None else None
    codes = [c for _, c in sorted(parts, key=lambda x: x[0])]
    base = Linear4bit.from_parts(codes, bias, cfg.quantize, base_block(lin.in_features))
    if base.out_features != lin.out_features:
        raise ValueError(f"{owner}: the checkpoint's members cover {base.out_features} rows, not {lin.out_features}")
    wrap(model, owner, base, cfg)


def load_qlora(name: str, cfg: LoRAConfig, dtype: torch.dtype = torch.bfloat16, tokenizer_name: str | None = None,
               seed: int = 0):
    """(config, model, tokenizer, generation_config) for QLoRA training: a .gguf file, an HF directory of
    float safetensors or a preset (its base drawn at random, as training from scratch does)."""
    import json

    from zenlm.weights.registry import resolve

    src = resolve(name)
    if src.kind == "preset":
        config = src.config()
        with torch.device("meta"):
            model = Transformer(config)
        tokenizer = resolve(tokenizer_name or "default").tokenizer()
        if tokenizer.vocab_size > config.vocab_size:
            raise ValueError(f"tokenizer has {tokenizer.vocab_size} tokens, the preset {config.vocab_size}")
        return config, build_qlora(config, random_tensors(model, seed), cfg, dtype, src.name, model), tokenizer, {}
    if src.kind == "gguf":
        from zenlm.tokenizer import Tokenizer
        from zenlm.weights.defaults import gguf_generation_config
        from zenlm.weights.gguf import GGUFCheckpoint

        ckpt = GGUFCheckpoint(src.path)
        model = build_qlora(ckpt.config, gguf_tensors(ckpt), cfg, dtype, str(src.path))
        return ckpt.config, model, Tokenizer.from_gguf(ckpt.meta), gguf_generation_config(ckpt.meta)
    from zenlm.weights import quantized_hf
    from zenlm.weights.safetensors import checkpoint_files

    if quantized_hf.read_quantization(src.path) is not None:
        raise ValueError(f"{src.path}: QLoRA needs float or GGUF weights, not a GPTQ/AWQ directory")
    config = src.config()
    model = build_qlora(config, safetensors_tensors(checkpoint_files(src.path)), cfg, dtype, str(src.path))
    gen_file = src.path / "generation_config.json"
    gen = json.loads(gen_file.read_text()) if gen_file.exists() else {}
    return config, model, src.tokenizer(), gen
