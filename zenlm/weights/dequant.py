"""GGUF tensor bytes -> float32 torch tensors, bit-identical to `gguf.quants.dequantize`.

Covers F32, F16, BF16, the 32-element block types (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0) and the
K-quants (Q2_K .. Q6_K) with vectorized torch ops over chunks of blocks; the float math runs in
gguf's order and dtypes, so every element matches bit for bit. It does not decode the IQ*/TQ*
types, quantize, or run quantized matmuls; parsing the file is gguf_reader.py's job.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

# Blocks are decoded about this many output elements at a time: enough to amortize per-op
# overhead, few enough that the temporaries stay in the last-level cache.
_CHUNK_ELEMENTS = 1 << 20

# Speed notes (measured on 2 cores): a torch op costs about as much per contiguous run as per
# element here, so the integer work runs on 8-byte words and no op writes into a strided slice
# (out=x[:, :16]) or broadcasts over a middle dimension (x[:, None] >> shifts): those run 5-10x
# slower than the same op on whole rows. The final float multiply is bound by memory bandwidth.


def _half(b: torch.Tensor, offset: int) -> torch.Tensor:
    """The fp16 field at byte `offset` of each block, as float32: [n, type_size] uint8 -> [n, 1]."""
    return b[:, offset:offset + 2].view(torch.float16).float()


def _planes(x: torch.Tensor, shifts: Sequence[int], mask: int) -> torch.Tensor:
    """[..., k] uint8 -> [..., len(shifts), k] uint8 whose plane i is (x >> shifts[i]) & mask."""
    assert all(mask < 1 << (8 - s) for s in shifts), "a plane must not take bits of the next byte"
    if x.shape[-1] % 8 == 0:  # 8 bytes per op: the bits an int64 shift brings in are masked off
        x = x.clone(memory_format=torch.contiguous_format).view(torch.int64)
        mask *= 0x0101010101010101
    return torch.stack([(x >> s if s else x) & mask for s in shifts], dim=-2).view(torch.uint8)


def _bit_table(one: int, zero: int) -> torch.Tensor:
    """[256] int64: entry x holds 8 bytes, byte k = `one` if bit k of x is set else `zero`."""
    bits = (torch.arange(256)[:, None] >> torch.arange(8)) & 1  # [256, 8]
    return torch.where(bits.bool(), one, zero).to(torch.uint8).view(torch.int64).view(256)


# The fifth bit of Q5_1 quants, shifted into place: q = nibble | table[qh byte].
_FIFTH_BIT = _bit_table(0x10, 0x00)
# Q5_0 wants q - 16 as an int8: that byte is the nibble when the fifth bit is set and
# nibble - 16 = nibble | 0xF0 when it is not, so one OR gives the signed value.
_FIFTH_BIT_MINUS_16 = _bit_table(0x00, 0xF0)


def _fifth_bits(qh: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """[n, 4] uint8 qh (bit j is element j's fifth bit) -> [n, 32] uint8 bytes from `table`."""
    return table.index_select(0, qh.int().view(-1)).view(torch.uint8).view(-1, 32)


# --- one function per type family: b [n, type_size] uint8 blocks -> out [n, block_size] float32 ---
# Quants of the 32-element types: element j < 16 is the low nibble of qs[j], j >= 16 the high
# nibble of qs[j - 16]; Q5_0/Q5_1 add bit j of the 32-bit qh as the fifth bit.


def _q8_0(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: f16, qs: 32 x int8;  x = qs * d
    torch.mul(b[:, 2:].view(torch.int8), _half(b, 0), out=out)


def _q4_0(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: f16, qs: 16 bytes of nibbles;  x = (nibble - 8) * d
    q = _planes(b[:, 2:18], (0, 4), 0x0F).view(torch.int8).sub_(8)
    torch.mul(q.view(-1, 32), _half(b, 0), out=out)


def _q4_1(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: f16, m: f16, qs: 16 bytes of nibbles;  x = d * nibble + m
    q = _planes(b[:, 4:20], (0, 4), 0x0F)
    torch.mul(q.view(-1, 32), _half(b, 0), out=out).add_(_half(b, 2))


def _q5_0(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: f16, qh: 32 fifth bits, qs: 16 bytes of nibbles;  x = ((nibble | bit << 4) - 16) * d
    q = _planes(b[:, 6:22], (0, 4), 0x0F).view(-1, 32)
    q |= _fifth_bits(b[:, 2:6], _FIFTH_BIT_MINUS_16)
    torch.mul(q.view(torch.int8), _half(b, 0), out=out)


def _q5_1(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: f16, m: f16, qh: 32 fifth bits, qs: 16 bytes of nibbles;  x = d * (nibble | bit << 4) + m
    q = _planes(b[:, 8:24], (0, 4), 0x0F).view(-1, 32)
    q |= _fifth_bits(b[:, 4:8], _FIFTH_BIT)
    torch.mul(q, _half(b, 0), out=out).add_(_half(b, 2))


def _q2_k(b: torch.Tensor, out: torch.Tensor) -> None:
    # scales: 16 x (4-bit scale | 4-bit min << 4), qs: 64 bytes of 2-bit quants, d: f16, dmin: f16
    # x = (d * scale) * q - (dmin * min), per 16-element sub-block
    n = b.shape[0]
    scales = b[:, :16]
    dl = _half(b, 80) * (scales & 0x0F).float()  # [n, 16]
    ml = _half(b, 82) * (scales >> 4).float()
    q = _planes(b[:, 16:80].view(n, 2, 32), (0, 2, 4, 6), 0x03).view(n, 16, 16)
    torch.mul(q, dl[:, :, None], out=out.view(n, 16, 16)).sub_(ml[:, :, None])


def _q3_k(b: torch.Tensor, out: torch.Tensor) -> None:
    # hmask: 32 bytes of high bits, qs: 64 bytes of 2-bit quants, scales: 16 x 6 bits, d: f16
    # x = (d * (scale - 32)) * (q - (4 if the hmask bit is clear else 0)), per 16-element sub-block
    n = b.shape[0]
    low = _planes(b[:, 96:104], (0, 4), 0x0F).view(n, 16)
    high = _planes(b[:, 104:108], (0, 2, 4, 6), 0x03).view(n, 16)
    dl = _half(b, 108) * (low | (high << 4)).view(torch.int8).sub_(32).float()  # [n, 16]
    ql = _planes(b[:, 32:96].view(n, 2, 32), (0, 2, 4, 6), 0x03).view(n, 16, 16)
    qh = _planes(b[:, :32], range(8), 0x01).view(n, 16, 16)
    q = ql.view(torch.int8) - ((qh ^ 1) << 2).view(torch.int8)
    torch.mul(q, dl[:, :, None], out=out.view(n, 16, 16))


def k_scale_min(b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Bytes 4..16 of a Q4_K/Q5_K block -> its 8 six-bit scales and 8 six-bit mins, [n, 8] each."""
    d, m, md = b[:, 4:8], b[:, 8:12], b[:, 12:16]
    sc = torch.cat([d & 0x3F, (md & 0x0F) | ((d >> 2) & 0x30)], dim=1)
    mn = torch.cat([m & 0x3F, (md >> 4) | ((m >> 2) & 0x30)], dim=1)
    return sc, mn


def _q4_k(b: torch.Tensor, out: torch.Tensor) -> None:
    # d: f16, dmin: f16, scales: 8 x (6-bit scale, 6-bit min), qs: 128 bytes of nibbles
    # x = (d * scale) * q - (dmin * min), per 32-element sub-block
    n = b.shape[0]
    sc, mn = k_scale_min(b)
    dl = _half(b, 0) * sc.float()  # [n, 8]
    ml = _half(b, 2) * mn.float()
    q = _planes(b[:, 16:].view(n, 4, 32), (0, 4), 0x0F).view(n, 8, 32)
    torch.mul(q, dl[:, :, None], out=out.view(n, 8, 32)).sub_(ml[:, :, None])


def _q5_k(b: torch.Tensor, out: torch.Tensor) -> None:
    # as Q4_K, plus qh: 32 bytes whose bit j is the fifth bit of sub-block j
    n = b.shape[0]
    sc, mn = k_scale_min(b)
    dl = _half(b, 0) * sc.float()
    ml = _half(b, 2) * mn.float()
    q = _planes(b[:, 48:].view(n, 4, 32), (0, 4), 0x0F).view(n, 8, 32)
    q |= _planes(b[:, 16:48], range(8), 0x01).view(n, 8, 32) << 4
    torch.mul(q, dl[:, :, None], out=out.view(n, 8, 32)).sub_(ml[:, :, None])


def _q6_k(b: torch.Tensor, out: torch.Tensor) -> None:
    # ql: 128 bytes of low nibbles, qh: 64 bytes of 2-bit highs, scales: 16 x int8, d: f16
    # x = (d * scale) * (q - 32), per 16-element sub-block
    n = b.shape[0]
    dl = _half(b, 208) * b[:, 192:208].view(torch.int8).float()  # [n, 16]
    ql = _planes(b[:, :128].view(n, 2, 64), (0, 4), 0x0F).view(n, 8, 32)
    qh = _planes(b[:, 128:192].view(n, 2, 32), (0, 2, 4, 6), 0x03).view(n, 8, 32)
    q = (ql | (qh << 4)).view(torch.int8).sub_(32)
    torch.mul(q.view(n, 16, 16), dl[:, :, None], out=out.view(n, 16, 16))


_BLOCK_KERNELS: dict[T, Callable[[torch.Tensor, torch.Tensor], None]] = {
    T.Q8_0: _q8_0, T.Q4_0: _q4_0, T.Q4_1: _q4_1, T.Q5_0: _q5_0, T.Q5_1: _q5_1,
    T.Q2_K: _q2_k, T.Q3_K: _q3_k, T.Q4_K: _q4_k, T.Q5_K: _q5_k, T.Q6_K: _q6_k,
}
_FLOAT_TYPES = {T.F32: torch.float32, T.F16: torch.float16, T.BF16: torch.bfloat16}

SUPPORTED: frozenset[T] = frozenset(_FLOAT_TYPES) | frozenset(_BLOCK_KERNELS)


def as_bytes(data: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Raw tensor data (any dtype, numpy or torch) -> a flat uint8 torch view of the same bytes."""
    if isinstance(data, np.ndarray):
        data = np.ascontiguousarray(data)
        with warnings.catch_warnings():  # read-only mmaps (gguf.GGUFReader): we only read them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            data = torch.from_numpy(data)
    raw = data.contiguous().view(-1).view(torch.uint8)
    # Fields are read as fp16/int16/int64 views, which torch allows only at aligned offsets.
    return raw.clone() if raw.storage_offset() % 8 else raw


def dequantize(data: np.ndarray | torch.Tensor, qtype: T, shape: tuple[int, ...]) -> torch.Tensor:
    """Decode one GGUF tensor's raw data into a new contiguous float32 tensor of `shape`.

    `data` holds the tensor's bytes as stored in the file (typed for F32/F16/BF16, or uint8
    [rows..., bytes per row] as gguf's readers give block types); `shape` is in PyTorch order
    (slowest dimension first). The result never aliases `data`, even for F32.
    """
    qtype = T(qtype)
    if qtype not in SUPPORTED:
        names = ", ".join(sorted(t.name for t in SUPPORTED))
        raise ValueError(f"unsupported GGUF tensor type {qtype.name} (supported: {names})")
    shape = tuple(int(s) for s in shape)
    numel = math.prod(shape)
    block, type_size = GGML_QUANT_SIZES[qtype]
    if shape and shape[-1] % block:
        raise ValueError(f"{qtype.name} rows hold whole blocks of {block} elements, got shape {shape}")
    raw = as_bytes(data)
    if raw.numel() != numel // block * type_size:
        raise ValueError(f"{qtype.name} tensor of shape {shape} has {numel // block * type_size} "
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
