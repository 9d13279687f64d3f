"""GPTQ and AWQ weight tensors, packed and unpacked as the two formats lay them out.

A quantized linear is a `Grid`: unsigned integers q [N, K] of `bits` bits and, per group of inputs,
an fp16 scale and an integer zero point, so w[n, k] = scale[g, n] * (q[n, k] - zero[g, n]) for
g = g_idx[k]. The formats (int32 words, lowest bits first):

- GPTQ (AutoGPTQ, GPTQModel): qweight [K * bits / 32, N] packs q along K; qzeros [G, N * bits / 32]
  packs the zero points along N, stored minus one in the classic `checkpoint_format: "gptq"` (v1)
  and as they are in GPTQModel's "gptq_v2"; scales fp16 [G, N]; g_idx int32 [K] (act-order puts
  inputs in groups out of order).
- AWQ GEMM (AutoAWQ): qweight [K, N / 8] packs q along N, eight 4-bit values a word in the order
  0, 2, 4, 6, 1, 3, 5, 7 (the word's i-th nibble holds column AWQ_ORDER[i] of its eight); qzeros
  [G, N / 8] the same way, zero points as they are; scales fp16 [G, N]; groups in order.

Nothing here quantizes a float weight (grid.py, gptq.py, awq.py) or builds a module (convert.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


@dataclass(slots=True)
class Grid:
    """q uint8 [N, K]; scale fp16 [G, N]; zero int16 [G, N] (GPTQ v1 can hold 2**bits); g_idx int32 [K]."""

    q: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor
    g_idx: torch.Tensor
    bits: int

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [N, K]."""
        g = self.g_idx.long()
        return self.scale.float()[g].T * (self.q.float() - self.zero.float()[g].T)

    def rows(self, rows: slice) -> Grid:
        """The grid of some output rows (a member of a fused linear)."""
        return Grid(self.q[rows], self.scale[:, rows], self.zero[:, rows], self.g_idx, self.bits)


def group_index(K: int, group_size: int) -> torch.Tensor:
    """g_idx for groups in order: input k is in group k // group_size (-1: one group of all K)."""
    return torch.arange(K, dtype=torch.int32) // (K if group_size == -1 else group_size)


def pack_int32(values: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """Unsigned `bits`-wide integers packed 32 // bits to an int32 word along dim, the first in the lowest bits."""
    per = 32 // bits
    v = values.to(torch.int64).movedim(dim, -1)
    if v.shape[-1] % per:
        raise ValueError(f"cannot pack {v.shape[-1]} values of {bits} bits into whole 32-bit words")
    if v.numel() and (int(v.min()) < 0 or int(v.max()) >= 1 << bits):
        raise ValueError(f"values outside [0, {(1 << bits) - 1}] cannot be packed in {bits} bits")
    v = v.reshape(*v.shape[:-1], -1, per)
    word = (v << (torch.arange(per) * bits)).sum(-1)  # < 2**32
    word = torch.where(word >= 1 << 31, word - (1 << 32), word).to(torch.int32)
    return word.movedim(-1, dim).contiguous()


def unpack_int32(packed: torch.Tensor, bits: int, dim: int) -> torch.Tensor:
    """The inverse of pack_int32: int32 words -> int16 values, 32 // bits per word along dim."""
    if packed.dtype != torch.int32:
        raise ValueError(f"packed weights must be int32, got {packed.dtype}")
    per = 32 // bits
    w = packed.to(torch.int64).movedim(dim, -1)
    v = (w[..., None] >> (torch.arange(per) * bits)) & ((1 << bits) - 1)
    return v.reshape(*w.shape[:-1], -1).movedim(-1, dim).to(torch.int16).contiguous()


def _awq_columns(n: int) -> torch.Tensor:
    """Packed position -> column, for n columns in runs of eight."""
    return (torch.arange(n).view(-1, 8)[:, list(AWQ_ORDER)]).reshape(-1)


def to_gptq(grid: Grid, v1: bool = True) -> dict[str, torch.Tensor]:
    """qweight, qzeros, scales, g_idx as GPTQ stores them (v1: zero points minus one)."""
    zeros = grid.zero.to(torch.int64) - (1 if v1 else 0)
    if v1 and zeros.numel() and int(zeros.min()) < 0:
        raise ValueError("GPTQ's v1 format stores zero points minus one and cannot hold a zero point of 0")
    return {"qweight": pack_int32(grid.q.T, grid.bits, 0), "qzeros": pack_int32(zeros, grid.bits, 1),
            "scales": grid.scale.half().clone(), "g_idx": grid.g_idx.to(torch.int32).clone()}  # no shared storage


def from_gptq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, g_idx: torch.Tensor | None,
              bits: int, group_size: int, v1: bool = True) -> Grid:
    """A GPTQ linear's tensors -> Grid (g_idx None: groups in order); ValueError on inconsistent shapes."""
    per = 32 // bits
    K, N = qweight.shape[0] * per, qweight.shape[1]
    G = scales.shape[0]
    if scales.dim() != 2 or scales.shape[1] != N:
        raise ValueError(f"scales has shape {tuple(scales.shape)}, expected [groups, {N}]")
    if qzeros.dim() != 2 or tuple(qzeros.shape) != (G, N // per):
        raise ValueError(f"qzeros has shape {tuple(qzeros.shape)}, expected {(G, N // per)}")
    if g_idx is None:
        g_idx = group_index(K, group_size)
    if tuple(g_idx.shape) != (K,):
        raise ValueError(f"g_idx has shape {tuple(g_idx.shape)}, expected ({K},)")
    if K and (int(g_idx.min()) < 0 or int(g_idx.max()) >= G):
        raise ValueError(f"g_idx names a group outside the {G} groups of scales")
    q = unpack_int32(qweight, bits, 0).T.to(torch.uint8).contiguous()
    zero = unpack_int32(qzeros, bits, 1) + (1 if v1 else 0)
    return Grid(q, scales.half(), zero, g_idx.to(torch.int32), bits)


def to_awq(grid: Grid) -> dict[str, torch.Tensor]:
    """qweight, qzeros, scales as AutoAWQ's GEMM layout stores them (4 bits, groups in order)."""
    if grid.bits != 4:
        raise ValueError(f"AWQ's GEMM format holds 4-bit weights, not {grid.bits}-bit")
    N = grid.q.shape[0]
    if N % 8:
        raise ValueError(f"AWQ's GEMM format needs output features in runs of 8, got {N}")
    cols = _awq_columns(N)
    return {"qweight": pack_int32(grid.q.T[:, cols], 4, 1), "qzeros": pack_int32(grid.zero[:, cols], 4, 1),
            "scales": grid.scale.half().clone()}


def from_awq(qweight: torch.Tensor, qzeros: torch.Tensor, scales: torch.Tensor, bits: int, group_size: int) -> Grid:
    """An AWQ GEMM linear's tensors -> Grid; ValueError on inconsistent shapes."""
    if bits != 4:
        raise ValueError(f"AWQ's GEMM format holds 4-bit weights, not {bits}-bit")
    K, N = qweight.shape[0], qweight.shape[1] * 8
    G = K // (K if group_size == -1 else group_size)
    if group_size != -1 and K % group_size:
        raise ValueError(f"{K} inputs are not whole groups of {group_size}")
    if tuple(scales.shape) != (G, N):
        raise ValueError(f"scales has shape {tuple(scales.shape)}, expected {(G, N)}")
    if tuple(qzeros.shape) != (G, N // 8):
        raise ValueError(f"qzeros has shape {tuple(qzeros.shape)}, expected {(G, N // 8)}")
    back = torch.argsort(_awq_columns(N))  # column -> packed position
    q = unpack_int32(qweight, 4, 1)[:, back].T.to(torch.uint8).contiguous()
    zero = unpack_int32(qzeros, 4, 1)[:, back].contiguous()
    return Grid(q, scales.half(), zero, group_index(K, group_size), bits)
