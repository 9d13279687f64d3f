"""What Ollama's /api/tags, /api/show and /api/ps say about a model, read from its file.

The quantization level is the file's (GGUF `general.file_type`, e.g. Q4_K_M; an HF directory's
torch_dtype, e.g. BF16), as Ollama reports it, whatever precision zen serve computes in; the parameter
size is Ollama's short form ("494.03M", "7.6B"), counted from the file's tensors as Ollama does
(so a GGUF that stores a tied output matrix twice counts it twice); the digest is the sha256 of the weight files.
Reading and hashing happen once per file (a few hundred ms for the default model), then are cached.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

# llama.cpp's llama_ftype values (general.file_type) -> the names Ollama shows
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
              11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M",
              18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S",
              25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M",
              32: "BF16", 36: "TQ1_0", 37: "TQ2_0"}
TORCH_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}
BIG_KEYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores")
# HF generation_config names -> Ollama's parameter names
PARAMETERS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
              "repetition_penalty": "repeat_penalty", "presence_penalty": "presence_penalty",
              "frequency_penalty": "frequency_penalty"}
FOREVER = "2318-01-01T00:00:00Z"  # /api/ps expires_at: zen serve never unloads its model

_cache: dict[tuple[str, float], Info] = {}
_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class Info:
    details: dict[str, Any]
    metadata: dict[str, Any]  # GGUF metadata, or the HF config.json
    size: int  # bytes on disk
    digest: str
    modified_at: str


def describe(llm) -> Info:
    """The model file's details (cached per path and mtime); blocking: call it in a thread."""
    path = Path(llm.path)
    key = (str(path), path.stat().st_mtime)
    with _lock:
        if key not in _cache:
            _cache[key] = _read(path, llm.config)
        return _cache[key]


def _read(path: Path, config) -> Info:
    from zenlm.config import param_counts

    files = [path] if path.is_file() else sorted(f for f in path.glob("*.safetensors") if f.is_file())
    if path.suffix == ".gguf":
        from zenlm.weights.gguf_reader import read_gguf

        meta, tensors = read_gguf(path)
        fmt, family = "gguf", meta.get("general.architecture", "qwen2")
        quant = FILE_TYPES.get(meta.get("general.file_type"), "unknown")
        count = meta.get("general.parameter_count") or sum(math.prod(t.shape) for t in tensors.values())
    else:
        config_file = path / "config.json" if path.is_dir() else None
        meta = json.loads(config_file.read_text()) if config_file and config_file.is_file() else {}
        fmt, family = "safetensors", meta.get("model_type", "qwen2")
        quant = TORCH_DTYPES.get(str(meta.get("torch_dtype", "")).removeprefix("torch."), "unknown")
        count = None
    count = count or param_counts(config)["params_total"]
    details = {"parent_model": "", "format": fmt, "family": family, "families": [family],
               "parameter_size": parameter_size(count), "quantization_level": quant}
    stamp = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat().replace("+00:00", "Z")
    return Info(details, meta, sum(f.stat().st_size for f in files), _sha256(files), stamp)


def _sha256(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(8 << 20):
                h.update(chunk)
    return h.hexdigest()


def parameter_size(n: int) -> str:
    """494032768 -> "494.03M", 7615616512 -> "7.6B", as Ollama prints them."""
    for unit, scale, digits in (("B", 1e9, 1), ("M", 1e6, 2), ("K", 1e3, 2)):
        if n >= scale:
            return f"{n / scale:.{digits}f}{unit}"
    return str(n)


def brief(meta: dict[str, Any]) -> dict[str, Any]:
    """Metadata without the vocabulary-sized arrays (Ollama sends them empty unless verbose)."""
    return {k: ([] if k in BIG_KEYS else v) for k, v in meta.items()}


def parameters(generation_config: dict) -> str:
    """The model's sampling defaults as Ollama's `parameters` text: one "name value" a line."""
    lines = [f"{ours:<30} {generation_config[k]}" for k, ours in PARAMETERS.items() if k in generation_config]
    return "\n".join(lines)


def resident_bytes(llm) -> int:
    """Bytes of the model's weights in memory (shared tensors counted once)."""
    seen, total = set(), 0
    for t in itertools.chain(llm.model.parameters(), llm.model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total
