"""GGUF quantized blocks -> the codes of zenlm's quantized linear (q, d, m, bits): carried over, not re-quantized.

Types with one scale (and min) per 32 weights keep their integers: Q4_0, Q4_1 and Q4_K become 4 bits,
Q5_0, Q5_1 and Q5_K 5 bits, Q8_0 8 bits, with w = d * q + m per group of 32 (exact for Q4_0..Q8_0;
Q4_K/Q5_K's d * scale and dmin * min are rounded to fp16). Q6_K, Q3_K and Q2_K scale every 16 weights,
which one scale per 32 cannot hold: they become 8 bits over each group's range (an error of at most half
an 8-bit step, an eighth of Q6_K's own). Float types are not codes: the loader keeps or quantizes them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

from zenlm.weights.dequant import as_bytes, dequantize, k_scale_min

GROUP = 32
BITS = {T.Q4_0: 4, T.Q4_1: 4, T.Q4_K: 4, T.Q5_0: 5, T.Q5_1: 5, T.Q5_K: 5, T.Q8_0: 8,
        T.Q6_K: 8, T.Q3_K: 8, T.Q2_K: 8}


@dataclass(slots=True)
class Codes:
    """A weight [N, K] as w = d * q + m per group of 32 along K."""

    q: torch.Tensor  # uint8 [N, K], below 2 ** bits
    d: torch.Tensor  # fp16 [N, K / 32]
    m: torch.Tensor  # fp16 [N, K / 32]
    bits: int

    def rows(self) -> int:
        return self.q.shape[0]


def gguf_codes(data, qtype: T, shape: tuple[int, ...]) -> Codes:
    """One GGUF tensor [N, K] of a quantized type (raw bytes as stored) -> its Codes."""
    qtype = T(qtype)
    if qtype not in BITS:
        raise ValueError(f"GGUF type {qtype.name} has no quantized-linear codes")
    N, K = shape
    block, size = GGML_QUANT_SIZES[qtype]
    b = as_bytes(data).view(-1, size)  # [N * K / block, size]
    if BITS[qtype] == 8 and qtype != T.Q8_0:  # scales per 16: 8 bits over the dequantized group's range
        return float_codes(dequantize(data, qtype, shape), 8)
    D = b[:, 0:2].view(torch.float16).float()  # [blocks, 1]: every type here starts with d
    if qtype in (T.Q4_K, T.Q5_K):
        sc, mn = k_scale_min(b)  # [blocks, 8]: a scale and a min per 32
        d = D * sc.float()
        m = -(b[:, 2:4].view(torch.float16).float() * mn.float())
    elif qtype in (T.Q4_1, T.Q5_1):
        d, m = D, b[:, 2:4].view(torch.float16).float()
    else:  # Q4_0, Q5_0, Q8_0: symmetric around 8, 16, 0 (Q8_0's signed q shifts by 128 below)
        d, m = D, -D * {T.Q4_0: 8, T.Q5_0: 16, T.Q8_0: 128}[qtype]
    q = _integers(b, qtype, shape)
    g = K // GROUP
    return Codes(q, d.reshape(N, g).half(), m.reshape(N, g).half(), BITS[qtype])


def _integers(b: torch.Tensor, qtype: T, shape: tuple[int, ...]) -> torch.Tensor:
    """The unsigned integers of every weight, read by dequantizing blocks whose scales are set to one
    (and mins to zero): the bit layout is decoded in one place only, dequant.py."""
    unit = b.clone()
    one, zero = torch.tensor([1.0], dtype=torch.float16).view(torch.uint8), torch.zeros(2, dtype=torch.uint8)
    unit[:, 0:2] = one
    if qtype in (T.Q4_1, T.Q5_1):
        unit[:, 2:4] = zero
    if qtype in (T.Q4_K, T.Q5_K):  # dmin 0; six-bit scales 1 and mins 0 in K-quants' packing
        unit[:, 2:4] = zero
        unit[:, 4:16] = torch.tensor([1, 1, 1, 1, 0, 0, 0, 0, 1, 1, 1, 1], dtype=torch.uint8)
    q = dequantize(unit, qtype, shape)
    q += {T.Q4_0: 8, T.Q5_0: 16, T.Q8_0: 128}.get(qtype, 0)
    return q.to(torch.uint8)


def float_codes(w: torch.Tensor, bits: int) -> Codes:
    """A float weight [N, K] -> Codes over each group's min..max range (zenlm's own quantizer, untiled)."""
    from zenlm.quant.linear import group_codes

    q, d, m = group_codes(w.float(), bits)
    return Codes(q, d, m, bits)


def concat(parts: list[Codes]) -> Codes:
    """Codes stacked by rows (a fused q/k/v or gate/up); lower-bit parts keep their integers at the
    highest part's width, which holds them exactly."""
    return Codes(torch.cat([p.q for p in parts]), torch.cat([p.d for p in parts]), torch.cat([p.m for p in parts]),
                 max(p.bits for p in parts))
