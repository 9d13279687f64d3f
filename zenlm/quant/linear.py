"""Weight-only quantized linears (4, 5 or 8 bits, groups of 32), swapped into a model in place.

QLinear keeps the weight as unsigned integers q with an fp16 scale d and offset m per group of 32
inputs (w = d * q + m; the layout is kernels/csrc/linear.c's) and runs zenlm's own CPU kernel (zenlm.kernels):
activations are quantized to int8 per group on the fly. On a GPU with Triton it repacks once into
kernels/gpu_linear.py's row layout and multiplies from the codes, never making a float weight. Without a
C compiler, or on a GPU without Triton, it dequantizes and calls F.linear: slower, same weights.
`quantize_model` swaps every nn.Linear; a linear whose input width is not a multiple of 32 stays in
float. Training-time quantization (QLoRA) is not here.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import zenlm.kernels as kernels
from zenlm.kernels import gpu_linear
from zenlm.model import SwiGLULinear

GROUP, TILE = 32, 16  # inputs per scale, rows per tile (kernels/csrc/linear.c)
MODES = {"int4": 4, "int8": 8}


_BIT = 1 << torch.arange(8, dtype=torch.uint8)


def _tile(q: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 q [Np, K] -> kernels/csrc/linear.c's byte layout [tiles, K/32 * bytes per block]."""
    Np, K = q.shape
    T = Np // TILE
    if bits == 5:  # the low four bits as a 4-bit block, then per quad a 64-bit mask of the fifth bits
        fifth = (q >> 4).view(T, TILE, K // GROUP, 8, 4).permute(0, 2, 3, 1, 4).reshape(T, K // GROUP, 8, 8, 8)
        masks = (fifth * _BIT).sum(-1, dtype=torch.uint8).view(T, K // GROUP, 64)  # bit row * 4 + j
        return torch.cat([_tile(q & 15, 4).view(T, K // GROUP, -1), masks], -1).view(T, -1)
    b = q.view(T, TILE, K // GROUP, 8, 4).permute(0, 2, 3, 1, 4)  # [t, g, quad, row, j]
    if bits == 4:
        b = b[:, :, 0::2] | b[:, :, 1::2] << 4  # quad 2o low nibble, 2o + 1 high
    return b.reshape(T, -1)


def _untile(qs: torch.Tensor, bits: int, K: int) -> torch.Tensor:
    """The inverse of _tile: [tiles, ...] -> uint8 q [Np, K]."""
    T = qs.shape[0]
    if bits == 5:
        blocks = qs.view(T, K // GROUP, -1)
        low = _untile(blocks[..., :-64].reshape(T, -1), 4, K)
        fifth = (blocks[..., -64:].reshape(T, K // GROUP, 8, 8, 1) & _BIT.to(qs.device)).ne(0).to(torch.uint8)
        fifth = fifth.view(T, K // GROUP, 8, TILE, 4).permute(0, 3, 1, 2, 4).reshape(T * TILE, K)
        return low | fifth << 4
    if bits == 4:
        b = qs.view(T, K // GROUP, 4, 1, TILE, 4)
        b = torch.cat([b & 15, b >> 4], dim=3).view(T, K // GROUP, 8, TILE, 4)
    else:
        b = qs.view(T, K // GROUP, 8, TILE, 4)
    return b.permute(0, 3, 1, 2, 4).reshape(T * TILE, K)


def group_codes(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """kernels/csrc/linear.c's zen_quantize in torch, untiled: float [N, K] -> q uint8 [N, K], d and m fp16
    [N, K/32]. Per group, the min..max range or (below 8 bits) the shrunken one with the least error."""
    N, K = w.shape
    g = w.view(N, K // GROUP, GROUP)
    lo, hi = g.amin(-1, keepdim=True), g.amax(-1, keepdim=True)
    levels, best = (1 << bits) - 1, None
    for t in range(1 if bits == 8 else 12):
        s = 1 - 0.02 * t
        d = ((hi - lo) * s / levels).half().float()
        m = (lo * s).half().float()
        q = ((g - m) * torch.where(d > 0, 1 / d, 0)).round().clamp(0, levels)
        err = (q * d + m - g).pow(2).sum(-1, keepdim=True)
        if best is None:
            best = (err, q, d, m)
        else:
            better = err < best[0]
            best = tuple(torch.where(better, new, old) for new, old in zip((err, q, d, m), best))
    _, q, d, m = best
    return q.to(torch.uint8).view(N, K), d.view(N, -1).half(), m.view(N, -1).half()


def _pack_rows(q: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """uint8 codes [N, K] -> kernels/gpu_linear.py's row layout: the codes (8 bits) or nibble pairs, and
    the fifth bits of 5-bit codes [N, K/8] (else None)."""
    if bits == 8:
        return q.contiguous(), None
    low = q & 15
    fifth = None
    if bits == 5:
        fifth = ((q >> 4).view(q.shape[0], -1, 8) * _BIT.to(q.device)).sum(-1, dtype=torch.uint8)
    return (low[:, 0::2] | low[:, 1::2] << 4).contiguous(), fifth


def _unpack_rows(qs: torch.Tensor, qh: torch.Tensor | None, bits: int) -> torch.Tensor:
    """The inverse of _pack_rows: uint8 codes [R, K]."""
    if bits == 8:
        return qs
    q = torch.stack([qs & 15, qs >> 4], -1).view(qs.shape[0], -1)
    if qh is not None:
        q |= ((qh[..., None] & _BIT.to(qh.device)).ne(0).to(torch.uint8) << 4).view(q.shape)
    return q


def _tiled(q: torch.Tensor, d: torch.Tensor, m: torch.Tensor, bits: int):
    """Untiled codes (rows padded to whole tiles) -> the kernel's (qs, d, m) layout."""
    N = q.shape[0]
    T = N // TILE
    d, m = (t.view(T, TILE, -1).transpose(1, 2).contiguous() for t in (d, m))  # [tiles, groups, 16]
    return _tile(q, bits), d, m


def _quantize_torch(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """kernels/csrc/linear.c's zen_quantize in torch, tiled ([N, K] with N a whole number of tiles)."""
    return _tiled(*group_codes(w, bits), bits)


class QLinear(nn.Module):
    """y = x @ W^T + bias with W quantized; QLinear(K, N, bits, bias) makes an empty one on meta
    (to be filled by load_state_dict(assign=True)), QLinear.from_float quantizes a weight.
    With glu (an MLP's down projection, model.SwiGLULinear's contract) the input is [gate, up], 2K
    wide, and the kernel multiplies by silu(gate) * up."""

    def __init__(self, K: int, N: int, bits: int, bias: bool, device: torch.device | str = "meta",
                 glu: bool = False):
        super().__init__()
        assert bits in (4, 5, 8) and K % GROUP == 0, f"need 4, 5 or 8 bits and K % {GROUP} == 0, got {bits}, {K}"
        T = -(-N // TILE)
        self.register_buffer("qs", torch.empty(T, K * TILE * bits // 8, dtype=torch.uint8, device=device))
        self.register_buffer("d", torch.empty(T, K // GROUP, TILE, dtype=torch.float16, device=device))
        self.register_buffer("m", torch.empty(T, K // GROUP, TILE, dtype=torch.float16, device=device))
        self.register_buffer("bias", torch.empty(N, device=device) if bias else None)
        self.register_buffer("qh", None)  # the fifth bits, in the row layout of 5-bit codes
        self.bits, self.in_features, self.out_features, self.glu = bits, K, N, glu
        self.layout = "tiles"  # kernels/csrc/linear.c's; "rows": kernels/gpu_linear.py's (to_rows)

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None, bits: int, glu: bool = False) -> QLinear:
        N, K = weight.shape
        q = cls(K, N, bits, bias is not None, device="cpu", glu=glu)
        w = weight.detach().to(device="cpu", dtype=torch.float32).contiguous()
        if not kernels.available():
            q.qs, q.d, q.m = _quantize_torch(F.pad(w, (0, 0, 0, q.qs.shape[0] * TILE - N)), bits)
        else:
            q.qs, q.d, q.m = kernels.quantize(w, bits)
        if bias is not None:
            q.bias.copy_(bias.detach().float())
        return q.to(weight.device)

    @classmethod
    def from_codes(cls, q: torch.Tensor, d: torch.Tensor, m: torch.Tensor, bits: int, bias: torch.Tensor | None,
                   glu: bool = False) -> QLinear:
        """A weight given as its integers q [N, K] and fp16 d, m [N, K/32] (w = d * q + m per group of 32),
        e.g. a GGUF file's own blocks (weights/transcode.py): nothing is re-quantized."""
        N, K = q.shape
        assert int(q.max()) < 1 << bits, f"codes of {bits} bits hold integers below {1 << bits}"
        out = cls(K, N, bits, bias is not None, device="cpu", glu=glu)
        pad = out.qs.shape[0] * TILE - N
        out.qs, out.d, out.m = _tiled(*(F.pad(t, (0, 0, 0, pad)) for t in (q, d, m)), bits)
        if bias is not None:
            out.bias.copy_(bias.detach().float())
        return out

    def spec(self) -> list:
        """What it takes to rebuild this module empty: [kind, K, N, bits, has_bias]."""
        kind = "swiglu" if self.glu else "linear"
        return [kind, self.in_features, self.out_features, self.bits, self.bias is not None]

    def codes(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The weight as from_codes takes it: integers q uint8 [N, K], fp16 d and m [N, K/32] (w = d * q + m)."""
        K, N = self.in_features, self.out_features
        if self.layout == "rows":
            return _unpack_rows(self.qs, self.qh, self.bits), self.d, self.m
        d, m = (t.transpose(1, 2).reshape(-1, K // GROUP)[:N] for t in (self.d, self.m))
        return _untile(self.qs, self.bits, K)[:N], d, m

    def to_rows(self) -> QLinear:
        """Repack in place, on the module's device, into the GPU kernel's row layout (kernels/gpu_linear.py):
        the same integers and scales, so the same weights; the tiled buffers are dropped."""
        if self.layout == "tiles":
            q, d, m = self.codes()
            self.d, self.m = d.contiguous(), m.contiguous()
            self.qs, self.qh = _pack_rows(q, self.bits)
            self.layout = "rows"
        return self

    def dequantize(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The float32 weight [N, K], or only the given rows [R, K]."""
        K, N = self.in_features, self.out_features
        if rows is not None and self.layout == "tiles" and self.qs.device.type == "cpu" and kernels.available():
            rows = rows.reshape(-1).to(device="cpu", dtype=torch.int64).contiguous()
            return kernels.dequant_rows(self.qs, self.d, self.m, self.bits, K, N, rows)
        if self.layout == "rows" and rows is not None:  # an embedding lookup unpacks only its rows' codes
            rows = rows.reshape(-1).to(self.qs.device)
            q = _unpack_rows(self.qs[rows], None if self.qh is None else self.qh[rows], self.bits)
            d, m, rows = self.d[rows], self.m[rows], None
        else:
            q, d, m = self.codes()
        if rows is not None:
            rows = rows.reshape(-1).to(q.device)
            q, d, m = q[rows], d[rows], m[rows]
        g = q.view(q.shape[0], -1, GROUP).float() * d.float()[..., None] + m.float()[..., None]
        return g.view(q.shape[0], K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._run(x, glu=self.glu)

    def swiglu(self, gate_up: torch.Tensor) -> torch.Tensor:
        """self(silu(gate) * up) for gate_up = [gate, up] along the last dim (an MLP's down projection):
        the kernel makes its input while quantizing it, with no tensors in between."""
        return self._run(gate_up, glu=True)

    def _run(self, x: torch.Tensor, glu: bool) -> torch.Tensor:
        shape, K, N = x.shape, self.in_features, self.out_features
        if x.device.type == "cpu" and self.layout == "tiles" and kernels.available():
            x2 = x.reshape(-1, shape[-1])
            if x2.dtype not in (torch.float32, torch.bfloat16):
                x2 = x2.float()
            y = kernels.linear(x2.contiguous(), self.qs, self.d, self.m, self.bits, K, N, self.bias, glu)
            return y.view(*shape[:-1], N)
        if glu:
            gate, up = x.chunk(2, dim=-1)
            x = F.silu(gate) * up
        bias = None if self.bias is None else self.bias.to(x.dtype)
        if x.is_cuda and gpu_linear.available():
            self.to_rows()
            y = gpu_linear.linear(x.reshape(-1, K), self.qs, self.qh, self.d, self.m, self.bits, N)
            y = y if bias is None else y + bias
        else:
            y = F.linear(x.reshape(-1, K), self.dequantize().to(x.dtype), bias)
        return y.view(*shape[:-1], N)

    def extra_repr(self) -> str:
        glu = ", glu=True" if self.glu else ""
        return f"in_features={self.in_features}, out_features={self.out_features}, bits={self.bits}{glu}"


class QEmbedding(nn.Module):
    """An embedding table kept quantized like QLinear's weight; a lookup dequantizes only its rows."""

    def __init__(self, table: QLinear, dtype: torch.dtype):
        super().__init__()
        self.table, self.dtype = table, dtype

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if tokens.is_cuda:  # a row gather from the packed codes, not an untiling of the whole table
            self.table.to_rows()
        return self.table.dequantize(tokens.reshape(-1)).to(self.dtype).view(*tokens.shape, -1)

    def spec(self) -> list:
        return ["embedding", self.table.in_features, self.table.out_features, self.table.bits, str(self.dtype)]


def is_quantized(module: nn.Module) -> bool:
    return isinstance(module, (QLinear, QEmbedding))


def quantize_linear(linear: nn.Linear, mode: str) -> nn.Module:
    """A quantized copy of a linear (a SwiGLULinear keeps its [gate, up] input); one whose width the
    kernel cannot take is returned as it is, frozen."""
    if mode not in MODES:
        raise ValueError(f"unknown quantization {mode!r}; choose one of {', '.join(MODES)}")
    if linear.in_features % GROUP:
        return linear.requires_grad_(False)
    return QLinear.from_float(linear.weight, linear.bias, MODES[mode], glu=isinstance(linear, SwiGLULinear))


def quantize_model(model: nn.Module, mode: str) -> nn.Module:
    """Swap every nn.Linear (lm_head included, even when tied) for a quantized one, in place."""
    for name, child in list(model.named_modules()):
        if isinstance(child, nn.Linear):
            model.set_submodule(name, quantize_linear(child, mode))
    return model
