"""Read HF safetensors checkpoints (one file or sharded with an index), memory-mapped, names as they are.

Tensors are views into an mmap of each file: nothing is read until it is used, nothing is copied
unless a dtype conversion asks for it. Writing checkpoints is left to the `safetensors` package.
"""

from __future__ import annotations

import json
import mmap
import struct
from collections.abc import Iterator
from pathlib import Path

import torch

DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
          "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
          "BOOL": torch.bool}


def checkpoint_files(directory: Path) -> list[Path]:
    """The safetensors files of an HF directory: the index's shards, or every *.safetensors."""
    index = directory / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        files = [directory / s for s in shards]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise ValueError(f"{index}: shard files missing: {', '.join(missing)}")
        return files
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise ValueError(f"{directory}: no *.safetensors files")
    return files


def read_safetensors(path: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) from one safetensors file; tensors are zero-copy views of an mmap."""
    with open(path, "rb") as f:
        size = path.stat().st_size
        if size < 8:
            raise ValueError(f"{path}: truncated safetensors file ({size} bytes)")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    (n,) = struct.unpack("<Q", mm[:8])
    if n > size - 8:
        raise ValueError(f"{path}: not a safetensors file (header length {n} exceeds file size {size})")
    try:
        header = json.loads(mm[8:8 + n])
    except ValueError as e:
        raise ValueError(f"{path}: bad safetensors header ({e})") from None
    base = 8 + n
    buf = memoryview(mm)
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] not in DTYPES:
            raise ValueError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
        start, end = info["data_offsets"]
        if base + end > size:
            raise ValueError(f"{path}: truncated (tensor {name} ends at byte {base + end}, file has {size})")
        dtype = DTYPES[info["dtype"]]
        if end == start:
            t = torch.empty(info["shape"], dtype=dtype)
        else:
            t = torch.frombuffer(buf[base + start:base + end], dtype=dtype).view(info["shape"])
        yield name, t
