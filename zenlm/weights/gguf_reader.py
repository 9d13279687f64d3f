"""A fast reader of the GGUF container: metadata as plain Python values, tensors as numpy views of an mmap.

gguf.GGUFReader builds a numpy object per vocabulary string and needs about 11 s for the default
model's header here; this reader parses the same header with struct in well under a second.
Type codes and block sizes come from the `gguf` package; dequantization lives in dequant.py.
"""

from __future__ import annotations

import mmap
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

MAGIC = b"GGUF"
# GGUF value types: id -> struct format (8 = string, 9 = array).
_SCALARS = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}
_NUMPY = {GGMLQuantizationType.F32: np.float32, GGMLQuantizationType.F16: np.float16,
          GGMLQuantizationType.F64: np.float64, GGMLQuantizationType.I8: np.int8,
          GGMLQuantizationType.I16: np.int16, GGMLQuantizationType.I32: np.int32,
          GGMLQuantizationType.I64: np.int64}


@dataclass(slots=True)
class GGUFTensor:
    name: str
    qtype: GGMLQuantizationType
    shape: tuple[int, ...]  # PyTorch order (slowest dimension first)
    data: np.ndarray  # typed for float types, uint8 [rows..., bytes per row] for quantized types


class _Cursor:
    def __init__(self, buf: memoryview, path: Path):
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise ValueError(f"{self.path}: truncated GGUF header (needs byte {self.pos + size}, "
                             f"file has {len(self.buf)})")
        (v,) = struct.unpack_from("<" + fmt, self.buf, self.pos)
        self.pos += size
        return v

    def string(self) -> str:
        n = self.take("Q")
        if self.pos + n > len(self.buf):
            raise ValueError(f"{self.path}: truncated GGUF header (string of {n} bytes at byte {self.pos})")
        s = bytes(self.buf[self.pos:self.pos + n]).decode("utf-8", errors="replace")
        self.pos += n
        return s

    def value(self, vtype: int) -> Any:
        if vtype == 6:  # float32: the shortest decimal that round-trips (1e-06, not 9.99999997e-07)
            return float(str(np.float32(self.take("f"))))
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])
        if vtype == 8:
            return self.string()
        if vtype == 9:
            itype, count = self.take("I"), self.take("Q")
            if itype in _SCALARS and itype != 7:
                dt = np.dtype("<" + _SCALARS[itype])
                end = self.pos + count * dt.itemsize
                if end > len(self.buf):
                    raise ValueError(f"{self.path}: truncated GGUF header (array ends past the file)")
                arr = np.frombuffer(self.buf, dtype=dt, count=count, offset=self.pos).tolist()
                self.pos = end
                return arr
            return [self.value(itype) for _ in range(count)]
        raise ValueError(f"{self.path}: unknown GGUF value type {vtype} at byte {self.pos}")


def read_gguf(path: str | Path) -> tuple[dict[str, Any], dict[str, GGUFTensor]]:
    """Parse a GGUF file: (metadata {key: value}, tensors {name: GGUFTensor}); one clear error if bad."""
    path = Path(path)
    with open(path, "rb") as f:
        size = path.stat().st_size
        if size < 24:
            raise ValueError(f"{path}: not a GGUF file (only {size} bytes)")
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    if mm[:4] != MAGIC:
        raise ValueError(f"{path}: not a GGUF file (magic {bytes(mm[:4])!r}, expected {MAGIC!r})")
    cur = _Cursor(memoryview(mm), path)
    cur.pos = 4
    version = cur.take("I")
    if version not in (2, 3):
        raise ValueError(f"{path}: unsupported GGUF version {version}")
    n_tensors, n_kv = cur.take("Q"), cur.take("Q")
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        meta[key] = cur.value(cur.take("I"))
    infos = []
    for _ in range(n_tensors):
        name = cur.string()
        dims = [cur.take("Q") for _ in range(cur.take("I"))]
        qt, offset = cur.take("I"), cur.take("Q")
        try:
            qtype = GGMLQuantizationType(qt)
        except ValueError:
            raise ValueError(f"{path}: tensor {name} has unknown GGML type {qt}") from None
        infos.append((name, dims, qtype, offset))
    align = int(meta.get("general.alignment", 32))
    start = (cur.pos + align - 1) // align * align
    tensors = {}
    for name, dims, qtype, offset in infos:
        block, nbytes_block = GGML_QUANT_SIZES[qtype]
        shape = tuple(reversed(dims)) or (1,)
        n = int(np.prod(shape))
        nbytes = n // block * nbytes_block
        begin = start + offset
        if begin + nbytes > size:
            raise ValueError(f"{path}: truncated (tensor {name} ends at byte {begin + nbytes}, file has {size})")
        if qtype in _NUMPY:
            data = np.frombuffer(mm, dtype=_NUMPY[qtype], count=n, offset=begin).reshape(shape)
        else:
            row = shape[-1] // block * nbytes_block
            data = np.frombuffer(mm, dtype=np.uint8, count=nbytes, offset=begin).reshape(*shape[:-1], row)
        tensors[name] = GGUFTensor(name, qtype, shape, data)
    return meta, tensors
