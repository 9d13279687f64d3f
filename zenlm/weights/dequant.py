"""GGUF tensor bytes -> float32 torch tensors, bit-identical to `gguf.quants.dequantize`.

Covers F32, F16, BF16, the legacy block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and the K-quants
(Q2_K .. Q6_K) with vectorized torch ops over row chunks; the float operations run in the same
order and dtypes as gguf's numpy code so every element matches bit for bit. It does not do the
IQ*/TQ* types, quantize, or run quantized matmuls; parsing the file is gguf_reader.py's job.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType as T

# Blocks are decoded this many output elements at a time: large enough that per-op overhead is
# small, small enough that the temporaries stay in cache.
_CHUNK_ELEMENTS = 1 << 19


def _bit_table(one: int, zero: int) -> torch.Tensor:
    """[256] int64: entry x holds 8 bytes, byte k = `one` if bit k of x is set else `zero`."""
    bits = (torch.arange(256)[:, None] >> torch.arange(8)) & 1  # [256, 8]
    return torch.where(bits.bool(), one, zero).to(torch.uint8).contiguous().view(torch.int64).view(256)


# Fifth bit of Q5_0/Q5_1 quants, already shifted into place: q = low nibble | table[qh byte].
_HIGH_BIT = _bit_table(0x10, 0x00)
# Q5_0 stores q - 16 as int8: for q = nib | bit << 4 that is nib when the bit is set and
# nib - 16 (= nib | 0xF0 as a byte) when it is not, so one OR yields the signed value directly.
_HIGH_BIT_MINUS_16 = _bit_table(0x00, 0xF0)


def _half(b: torch.Tensor, offset: int) -> torch.Tensor:
    """The fp16 field at byte `offset` of each block, as float32: [n, type_size] uint8 -> [n, 1]."""
    return b[:, offset:offset + 2].view(torch.float16).float()


def _nibbles(x: torch.Tensor) -> torch.Tensor:
    """[..., g] uint8 -> [..., 2, g]: the low nibbles of the g bytes, then their high nibbles."""
    out = x.new_empty((*x.shape[:-1], 2, x.shape[-1]))
    torch.bitwise_and(x, 0x0F, out=out[..., 0, :])
    torch.bitwise_right_shift(x, 4, out=out[..., 1, :])
    return out


def _bits(x: torch.Tensor, shifts: torch.Tensor, mask: int) -> torch.Tensor:
    """[n, r, g] uint8 -> [n, r, len(shifts), g]: (x >> shift) & mask for each shift."""
    out = (x[:, :, None, :] >> shifts[:, None])
    return out.bitwise_and_(mask)


_SHIFT_2 = torch.tensor([0, 2, 4, 6], dtype=torch.uint8)
_SHIFT_1 = torch.arange(8, dtype=torch.uint8)


def _high_bits(qh: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """[n, 4] uint8 bitmask -> [n, 32] uint8, element j from bit j (little-endian) via `table`."""
    n = qh.shape[0]
    return table.index_select(0, qh.reshape(-1).int()).view(torch.uint8).view(n, 32)


# --- one function per type family: b [n, type_size] uint8 blocks -> out [n, block_size] float32 ---

def _q8_0(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: f16, qs: 32 x int8;  x = qs * d
    torch.mul(b[:, 2:].view(torch.int8), _half(b, 0), out=out)


def _q4_0(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: f16, qs: 16 bytes of nibbles;  x = (nibble - 8) * d
    q = _nibbles(b[:, 2:]).view(torch.int8).sub_(8)  # [n, 2, 16]
    torch.mul(q.view(-1, 32), _half(b, 0), out=out)


def _q4_1(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: f16, m: f16, qs: 16 bytes of nibbles;  x = d * nibble + m
    q = _nibbles(b[:, 4:])  # [n, 2, 16]
    torch.mul(q.view(-1, 32), _half(b, 0), out=out).add_(_half(b, 2))


def _q5_0(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: f16, qh: 32 fifth bits, qs: 16 bytes of nibbles;  x = ((nibble | bit << 4) - 16) * d
    q = _nibbles(b[:, 6:]).view(-1, 32)
    q |= _high_bits(b[:, 2:6], _HIGH_BIT_MINUS_16)
    torch.mul(q.view(torch.int8), _half(b, 0), out=out)


def _q5_1(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: f16, m: f16, qh: 32 fifth bits, qs: 16 bytes of nibbles;  x = d * (nibble | bit << 4) + m
    q = _nibbles(b[:, 8:]).view(-1, 32)
    q |= _high_bits(b[:, 4:8], _HIGH_BIT)
    torch.mul(q, _half(b, 0), out=out).add_(_half(b, 2))


def _q2_k(b: torch.Tensor, out: torch.Tensor) -> None:
    # scales: 16 x (4-bit scale | 4-bit min), qs: 64 bytes of 2-bit quants, d: f16, dmin: f16
    # x = (d * scale) * q - (dmin * min), per 16-element sub-block
    n = b.shape[0]
    scales = b[:, :16]
    dl = _half(b, 80) * (scales & 0x0F).float()  # [n, 16]
    ml = _half(b, 82) * (scales >> 4).float()
    q = _bits(b[:, 16:80].view(n, 2, 32), _SHIFT_2, 0x03).view(n, 16, 16)
    o = out.view(n, 16, 16)
    torch.mul(q, dl[:, :, None], out=o).sub_(ml[:, :, None])


def _q3_k(b: torch.Tensor, out: torch.Tensor) -> None:
    # hmask: 32 bytes of high bits, qs: 64 bytes of 2-bit quants, scales: 16 x 6 bits, d: f16
    # x = (d * (scale - 32)) * (q - (4 if the hmask bit is clear else 0)), per 16-element sub-block
    n = b.shape[0]
    s = b[:, 96:108]
    low = _nibble_pairs(s[:, :8])  # [n, 16]: 8 low nibbles then 8 high nibbles
    high = _bits(s[:, None, 8:12], _SHIFT_2, 0x03).view(n, 16)
    scale = (low | (high << 4)).view(torch.int8).sub_(32).float()
    dl = _half(b, 108) * scale  # [n, 16]
    ql = _bits(b[:, 32:96].view(n, 2, 32), _SHIFT_2, 0x03).view(n, 16, 16)
    qh = _bits(b[:, None, :32], _SHIFT_1, 0x01).view(n, 16, 16)
    q = ql.view(torch.int8) - ((qh ^ 1) << 2).view(torch.int8)
    torch.mul(q, dl[:, :, None], out=out.view(n, 16, 16))


def _nibble_pairs(x: torch.Tensor) -> torch.Tensor:
    """[n, g] uint8 -> [n, 2g]: low nibbles then high nibbles, as one row."""
    return _nibbles(x).view(x.shape[0], -1)


def _k_scale_min(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The 12 packed scale bytes of Q4_K/Q5_K (bytes 4..16) -> 8 six-bit scales and 8 mins."""
    s = b[:, 4:16]
    d, m, md = s[:, 0:4], s[:, 4:8], s[:, 8:12]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=1)
    return sc, mn


def _q4_k(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: f16, dmin: f16, scales: 8 x (6-bit scale, 6-bit min), qs: 128 bytes of nibbles
    # x = (d * scale) * q - (dmin * min), per 32-element sub-block
    n = b.shape[0]
    sc, mn = _k_scale_min(b)
    dl = _half(b, 0) * sc.float()  # [n, 8]
    ml = _half(b, 2) * mn.float()
    q = _nibbles(b[:, 16:].view(n, 4, 32)).view(n, 8, 32)
    torch.mul(q, dl[:, :, None], out=out.view(n, 8, 32)).sub_(ml[:, :, None])


def _q5_k(b: torch.Tensor, out: torch.Tensor) -> None:
    # as Q4_K, plus qh: 32 bytes whose bit j is the fifth bit of sub-block j
    n = b.shape[0]
    sc, mn = _k_scale_min(b)
    dl = _half(b, 0) * sc.float()
    ml = _half(b, 2) * mn.float()
    q = _nibbles(b[:, 48:].view(n, 4, 32)).view(n, 8, 32)
    q |= _bits(b[:, None, 16:48], _SHIFT_1, 0x01).view(n, 8, 32) << 4
    torch.mul(q, dl[:, :, None], out=out.view(n, 8, 32)).sub_(ml[:, :, None])


def _q6_k(b: torch.Tensor, out: torch.Tensor) -> None:
    # ql: 128 bytes of low nibbles, qh: 64 bytes of 2-bit highs, scales: 16 x int8, d: f16
    # x = (d * scale) * (q - 32), per 16-element sub-block
    n = b.shape[0]
    dl = _half(b, 208) * b[:, 192:208].view(torch.int8).float()  # [n, 16]
    ql = _nibbles(b[:, :128].view(n, 2, 64)).view(n, 8, 32)
    qh = _bits(b[:, 128:192].view(n, 2, 32), _SHIFT_2, 0x03).view(n, 8, 32)
    q = (ql | (qh << 4)).view(torch.int8).sub_(32)
    torch.mul(q.view(n, 16, 16), dl[:, :, None], out=out.view(n, 16, 16))


_BLOCK_KERNELS: dict[T, Callable[[torch.Tensor, torch.Tensor], None]] = {
    T.Q8_0: _q8_0, T.Q4_0: _q4_0, T.Q4_1: _q4_1, T.Q5_0: _q5_0, T.Q5_1: _q5_1,
    T.Q2_K: _q2_k, T.Q3_K: _q3_k, T.Q4_K: _q4_k, T.Q5_K: _q5_k, T.Q6_K: _q6_k,
}
_FLOAT_TYPES = {T.F32: torch.float32, T.F16: torch.float16, T.BF16: torch.bfloat16}

SUPPORTED: frozenset[T] = frozenset(_FLOAT_TYPES) | frozenset(_BLOCK_KERNELS)


def _as_bytes(data: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Raw tensor data (any dtype, numpy or torch) -> a flat uint8 torch view of the same bytes."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data)
        with warnings.catch_warnings():  # read-only mmaps: we only read them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            data = torch.from_numpy(data)
    return data.contiguous().view(-1).view(torch.uint8)


def dequantize(data: np.ndarray | torch.Tensor, qtype: T, shape: tuple[int, ...]) -> torch.Tensor:
    """Decode one GGUF tensor's raw data into a new contiguous float32 tensor of `shape`.

    `data` is the tensor's bytes as the file holds them (a typed array for F32/F16/BF16, uint8
    [rows..., bytes per row] for block types); `shape` is in PyTorch order (slowest dim first).
    """
    qtype = T(qtype)
    if qtype not in SUPPORTED:
        names = ", ".join(sorted(t.name for t in SUPPORTED))
        raise ValueError(f"unsupported GGUF tensor type {qtype.name} (supported: {names})")
    shape = tuple(int(s) for s in shape)
    numel = math.prod(shape)
    block, type_size = GGML_QUANT_SIZES[qtype]
    if shape and shape[-1] % block:
        raise ValueError(f"{qtype.name} rows must hold whole blocks of {block}, got shape {shape}")
    raw = _as_bytes(data)
    if raw.numel() != numel // block * type_size:
        raise ValueError(f"{qtype.name} tensor of shape {shape} needs {numel // block * type_size} "
                         f"bytes, got {raw.numel()}")

    if qtype in _FLOAT_TYPES:
        return raw.view(_FLOAT_TYPES[qtype]).to(torch.float32, copy=True).view(shape)

    kernel = _BLOCK_KERNELS[qtype]
    blocks = raw.view(-1, type_size)  # [n_blocks, type_size]
    out = torch.empty(blocks.shape[0], block)
    step = max(1, _CHUNK_ELEMENTS // block)
    for i in range(0, blocks.shape[0], step):
        kernel(blocks[i:i + step], out[i:i + step])
    return out.view(shape)
