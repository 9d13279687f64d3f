"""What a checkpoint file says about itself: format, family, quantization, parameter count, size, digest.

The quantization is the file's own (GGUF `general.file_type` as llama.cpp names it, e.g. Q4_K_M; an
HF directory's torch_dtype, e.g. BF16), whatever precision zenlm computes in. The parameter count
is the file's tensors' (so a GGUF that stores a tied output matrix twice counts it twice); a split
GGUF counts all its shards. Reading and hashing happen once per file and mtime (a few hundred ms for
the default model), then are cached.
"""

from __future__ import annotations

import hashlib
import json
import math
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from zenlm.config import Config, param_counts

# llama.cpp's llama_ftype values (general.file_type) -> their names
FILE_TYPES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
              11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S", 17: "Q5_K_M",
              18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS", 23: "IQ3_XXS", 24: "IQ1_S",
              25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M",
              32: "BF16", 36: "TQ1_0", 37: "TQ2_0"}
TORCH_DTYPES = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}

_cache: dict[tuple[str, int], FileInfo] = {}
_lock = threading.Lock()


@dataclass(frozen=True, slots=True)
class FileInfo:
    format: str  # "gguf" | "safetensors"
    family: str  # general.architecture / model_type
    quantization: str  # "Q4_K_M", "BF16", ... or "unknown"
    parameters: int
    metadata: dict[str, Any]  # GGUF metadata, or the HF config.json
    size: int  # bytes on disk
    digest: str  # sha256 of the weight files
    modified_at: str  # ISO 8601, UTC


def file_info(path: str | Path, config: Config | None = None) -> FileInfo:
    """The checkpoint's details (cached per path and mtime); blocking: call it off the event loop."""
    path = Path(path)
    key = (str(path.resolve()), path.stat().st_mtime_ns)
    with _lock:
        if key not in _cache:
            _cache[key] = _read(path, config)
        return _cache[key]


def _read(path: Path, config: Config | None) -> FileInfo:
    files = [path] if path.is_file() else sorted(f for f in path.glob("*.safetensors") if f.is_file())
    if path.is_file():
        from zenlm.weights.gguf_split import read_split

        meta, tensors, files = read_split(path)  # every shard of a split file
        fmt, family = "gguf", meta.get("general.architecture", "qwen2")
        quant = FILE_TYPES.get(meta.get("general.file_type"), "unknown")
        count = meta.get("general.parameter_count") or sum(math.prod(t.shape) for t in tensors.values())
    else:
        config_file = path / "config.json"
        meta = json.loads(config_file.read_text()) if config_file.is_file() else {}
        fmt, family = "safetensors", meta.get("model_type", "qwen2")
        quant = TORCH_DTYPES.get(str(meta.get("torch_dtype", "")).removeprefix("torch."), "unknown")
        qc = meta.get("quantization_config") or {}
        if qc.get("quant_method") in ("gptq", "awq"):  # as the hub names them: GPTQ-Int4, AWQ
            quant = "AWQ" if qc["quant_method"] == "awq" else f"GPTQ-Int{qc.get('bits', 4)}"
        count = param_counts(config)["params_total"] if config is not None else 0
    stamp = datetime.fromtimestamp(path.stat().st_mtime, timezone.utc).isoformat().replace("+00:00", "Z")
    return FileInfo(fmt, family, quant, int(count), meta, sum(f.stat().st_size for f in files), _sha256(files),
                    stamp)


def _sha256(files: list[Path]) -> str:
    h = hashlib.sha256()
    for f in files:
        with open(f, "rb") as fh:
            while chunk := fh.read(8 << 20):
                h.update(chunk)
    return h.hexdigest()
