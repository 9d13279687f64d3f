"""The 32-element GGUF block types (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1) as ggml-quants.c's reference quantizers
compute them, plus the helpers every encoder shares (fp16 bytes, C's rounding functions).

Each type is one function: b [n, 32] float32 blocks -> [n, type_size] uint8. numpy in float32 throughout.
"""

from __future__ import annotations

import numpy as np

F32 = np.float32


def f16_round(x: np.ndarray) -> np.ndarray:
    """float32 values rounded to fp16 and back (what a decoder reads from an fp16 field)."""
    return x.astype(np.float16).astype(F32)


def rint(v: np.ndarray) -> np.ndarray:
    """C's nearest_int (round half to even) as int32."""
    return np.rint(v).astype(np.int32)


def f16_bytes(x: np.ndarray) -> np.ndarray:
    """float32 [...] -> the little-endian bytes of its fp16 values (round to nearest even), uint8 [..., 2]."""
    return x.astype("<f2").view(np.uint8).reshape(*x.shape, 2)


_BELOW_HALF = np.nextafter(F32(0.5), F32(0))  # 0.5 - 2**-25


def round_away(x: np.ndarray) -> np.ndarray:
    """C's roundf (halves away from zero), exact for |x| < 2**23: adding the float just below 0.5 carries a
    fraction of exactly 0.5 up to the next integer (by a tie to even at 0.5 itself) and anything less not."""
    return np.trunc(x + np.copysign(_BELOW_HALF, x))


def _nibbles(q: np.ndarray) -> np.ndarray:
    """[n, 32] uint8 quants -> [n, 16] bytes: element j < 16 in the low nibble of byte j, j >= 16 in the high."""
    return (q[:, :16] & 0x0F) | (q[:, 16:] << 4)


def _fifth_bits(q: np.ndarray) -> np.ndarray:
    """[n, 32] uint8 quants -> [n, 4] bytes of a little-endian uint32 whose bit j is bit 4 of quant j."""
    return np.packbits((q >> 4) & 1, axis=1, bitorder="little")


def _abs_max_signed(b: np.ndarray) -> np.ndarray:
    """The value of largest magnitude in each row (the first one on a tie, as C's strict > scan), [n, 1]."""
    hi, lo = b.max(axis=1, keepdims=True), b.min(axis=1, keepdims=True)
    out = np.where(-lo > hi, lo, hi)
    tie = np.nonzero((-lo == hi)[:, 0] & (hi[:, 0] != 0))[0]  # +a and -a both present: the first one wins
    if tie.size:
        out[tie] = np.take_along_axis(b[tie], np.abs(b[tie]).argmax(axis=1)[:, None], axis=1)
    np.copyto(out, F32(0), where=out == 0)  # C starts from +0.0 and only replaces it with a larger magnitude
    return out


def _inverse(d: np.ndarray) -> np.ndarray:
    """1/d, and 0 where d is 0 (C's `d ? 1.0f/d : 0.0f`)."""
    with np.errstate(divide="ignore"):
        return np.where(d == 0, np.float32(0), np.float32(1) / d).astype(np.float32)


# --- the types: b [n, 32] float32 blocks -> [n, type_size] uint8 ------------------------------------------

def q8_0(b: np.ndarray) -> np.ndarray:
    # d = amax / 127; q = roundf(x / d)
    d = np.abs(b).max(axis=1, keepdims=True) / np.float32(127)
    q = round_away(b * _inverse(d)).astype(np.int8).view(np.uint8)
    return np.concatenate([f16_bytes(d[:, 0]), q], axis=1)


def q4_0(b: np.ndarray) -> np.ndarray:
    # d = (signed abs max) / -8; q = min(15, trunc(x / d + 8.5))
    d = _abs_max_signed(b) / np.float32(-8)
    q = np.minimum(15, np.trunc(b * _inverse(d) + np.float32(8.5))).astype(np.uint8)
    return np.concatenate([f16_bytes(d[:, 0]), _nibbles(q)], axis=1)


def q4_1(b: np.ndarray) -> np.ndarray:
    # d = (max - min) / 15, m = min; q = min(15, trunc((x - min) / d + 0.5))
    lo, hi = b.min(axis=1, keepdims=True), b.max(axis=1, keepdims=True)
    d = (hi - lo) / np.float32(15)
    q = np.minimum(15, np.trunc((b - lo) * _inverse(d) + np.float32(0.5))).astype(np.uint8)
    return np.concatenate([f16_bytes(d[:, 0]), f16_bytes(lo[:, 0]), _nibbles(q)], axis=1)


def q5_0(b: np.ndarray) -> np.ndarray:
    # d = (signed abs max) / -16; q = min(31, trunc(x / d + 16.5)); the fifth bits go to qh
    d = _abs_max_signed(b) / np.float32(-16)
    q = np.minimum(31, np.trunc(b * _inverse(d) + np.float32(16.5))).astype(np.uint8)
    return np.concatenate([f16_bytes(d[:, 0]), _fifth_bits(q), _nibbles(q)], axis=1)


def q5_1(b: np.ndarray) -> np.ndarray:
    # d = (max - min) / 31, m = min; q = trunc((x - min) / d + 0.5)
    lo, hi = b.min(axis=1, keepdims=True), b.max(axis=1, keepdims=True)
    d = (hi - lo) / np.float32(31)
    q = np.trunc((b - lo) * _inverse(d) + np.float32(0.5)).astype(np.uint8)
    return np.concatenate([f16_bytes(d[:, 0]), f16_bytes(lo[:, 0]), _fifth_bits(q), _nibbles(q)], axis=1)




def bf16_bytes(x: np.ndarray) -> np.ndarray:
    """float32 [...] -> bf16 bytes [..., 2] as ggml rounds them: to nearest even, NaNs kept quiet."""
    u = x.view(np.uint32)
    rounded = ((u.astype(np.uint64) + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    h = np.where((u & 0x7FFFFFFF) > 0x7F800000, ((u >> 16) | 64).astype(np.uint16), rounded)
    return h.astype("<u2").view(np.uint8).reshape(*x.shape, 2)
