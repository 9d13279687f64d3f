"""Round-to-nearest onto a grouped integer grid: the scale and zero point of a group, and RTN itself.

Two ways to pick a group's grid, each as its format's reference quantizer does it:
- "gptq" (AutoGPTQ's): the range is widened to include 0; sym takes +-max|w| with the zero point in
  the middle (2**(bits-1)); asym rounds the zero point from the minimum (kept >= 1, so GPTQ's v1
  format, which stores it minus one, can hold it).
- "awq" (AutoAWQ's, zero_point): min..max of the group, zero point clamped to [0, 2**bits - 1].
Scales are rounded to fp16 before the integers are chosen, so the grid is exactly what is stored.
GPTQ's error compensation and AWQ's scale search live in gptq.py and awq.py.
"""

from __future__ import annotations

import torch

from zenlm.quant.packing import Grid, group_index


def params(w: torch.Tensor, bits: int, sym: bool, style: str = "gptq") -> tuple[torch.Tensor, torch.Tensor]:
    """Scale (fp16-representable, float32) and zero point (float32 integers) per row of w [N, C]."""
    maxq = (1 << bits) - 1
    lo, hi = w.amin(-1), w.amax(-1)
    if style == "awq":
        scale = ((hi - lo).clamp(min=1e-5) / maxq).half().float()
        zero = (-torch.round(lo / scale)).clamp(0, maxq)
        return scale, zero
    lo, hi = lo.clamp(max=0), hi.clamp(min=0)
    if sym:
        hi = torch.maximum(lo.abs(), hi)
        lo = torch.where(lo < 0, -hi, lo)
    flat = (lo == 0) & (hi == 0)
    lo, hi = torch.where(flat, -1.0, lo), torch.where(flat, 1.0, hi)
    scale = ((hi - lo) / maxq).half().float()
    scale = torch.where(scale > 0, scale, torch.finfo(torch.float16).tiny)  # a range below fp16's
    if sym:
        return scale, torch.full_like(scale, (maxq + 1) // 2)
    return scale, torch.round(-lo / scale).clamp(1, maxq)


def quantize(w: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, bits: int) -> torch.Tensor:
    """Integers q = clamp(round(w / scale) + zero) for w [N, C] and per-row scale, zero [N] (float32)."""
    return (torch.round(w / scale[:, None]) + zero[:, None]).clamp(0, (1 << bits) - 1)


def rtn(w: torch.Tensor, bits: int, group_size: int, sym: bool = True, style: str = "gptq") -> Grid:
    """Round-to-nearest of a float weight [N, K] in groups of group_size inputs (-1: whole rows)."""
    N, K = w.shape
    G = K if group_size == -1 else group_size
    if K % G:
        raise ValueError(f"{K} inputs are not whole groups of {G}")
    w = w.float()
    scales, zeros, qs = [], [], []
    for start in range(0, K, G):
        s, z = params(w[:, start:start + G], bits, sym, style)
        qs.append(quantize(w[:, start:start + G], s, z, bits))
        scales.append(s)
        zeros.append(z)
    return Grid(torch.cat(qs, 1).to(torch.uint8), torch.stack(scales).half(), torch.stack(zeros).to(torch.int16),
                group_index(K, group_size), bits)
