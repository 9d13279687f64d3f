"""Weight-only quantized matmul for GPUs, in Triton: y = x @ W^T, W read from its 4-, 5- or 8-bit codes.

The weight stays packed in GPU memory and is dequantized tile by tile in registers, inside the matmul; no
float copy of W is ever made. The "rows" layout it reads (quant/linear.py converts to it once, on the device):

- 8 bits: uint8 codes [N, K];
- 4 bits: uint8 [N, K/2], input 2j in the low nibble of byte j and 2j + 1 in the high one;
- 5 bits: the low four bits as for 4 bits, plus uint8 [N, K/8] of fifth bits (input 8j + i in bit i of byte j);
- d, m: fp16 [N, K/32]; w = d * q + m for each group of 32 inputs.

Float32 activations are multiplied in IEEE float32 (the CPU path's numbers up to summation order); bfloat16
and float16 ones in that type with a float32 accumulator. Under TRITON_INTERPRET=1 the same kernel runs on
CPU tensors, which is how the test suite checks it on machines without a GPU.
"""

from __future__ import annotations

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # no Triton: QLinear dequantizes on the GPU instead
    triton = None


def available() -> bool:
    return triton is not None


if triton is not None:

    @triton.jit
    def _qmm(x_ptr, q_ptr, h_ptr, d_ptr, m_ptr, y_ptr, M, N, K: tl.constexpr, stride_x, stride_y,
             BITS: tl.constexpr, IEEE: tl.constexpr, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
        rm = tl.program_id(0) * BM + tl.arange(0, BM)
        rn = tl.program_id(1) * BN + tl.arange(0, BN)
        rk = tl.arange(0, BK)
        row_ok, col_ok = rm[:, None] < M, rn[None, :] < N
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for k0 in range(0, K, BK):  # K is a compile-time constant: one build per layer shape
            k = k0 + rk
            x = tl.load(x_ptr + rm[:, None] * stride_x + k[None, :], mask=row_ok & (k[None, :] < K), other=0.0)
            kk = k[:, None]  # the tile of W^T: [BK inputs, BN outputs]
            ok = col_ok & (kk < K)
            if BITS == 8:
                q = tl.load(q_ptr + rn[None, :] * K + kk, mask=ok, other=0).to(tl.int32)
            else:
                b = tl.load(q_ptr + rn[None, :] * (K // 2) + kk // 2, mask=ok, other=0).to(tl.int32)
                q = (b >> ((kk & 1) * 4)) & 15
                if BITS == 5:
                    h = tl.load(h_ptr + rn[None, :] * (K // 8) + kk // 8, mask=ok, other=0).to(tl.int32)
                    q = q | (((h >> (kk & 7)) & 1) << 4)
            g = rn[None, :] * (K // 32) + kk // 32
            d = tl.load(d_ptr + g, mask=ok, other=0.0).to(tl.float32)
            m = tl.load(m_ptr + g, mask=ok, other=0.0).to(tl.float32)
            w = q.to(tl.float32) * d + m
            if IEEE:
                acc += tl.dot(x.to(tl.float32), w, input_precision="ieee")
            else:
                acc += tl.dot(x, w.to(x.dtype))
        tl.store(y_ptr + rm[:, None] * stride_y + rn[None, :], acc.to(y_ptr.dtype.element_ty), mask=row_ok & col_ok)


def linear(x: torch.Tensor, q: torch.Tensor, h: torch.Tensor | None, d: torch.Tensor, m: torch.Tensor,
           bits: int, N: int) -> torch.Tensor:
    """x [M, K] (float32, bfloat16 or float16, rows contiguous) times the packed W [N, K]^T -> y [M, N] in x's
    dtype. A decode step (small M) takes narrow output tiles so that many programs share the weight's read."""
    M, K = x.shape
    x = x.contiguous()
    y = torch.empty(M, N, dtype=x.dtype, device=x.device)
    BM = 16 if M <= 16 else 64
    BN = 32 if M <= 16 else 64
    grid = (triton.cdiv(M, BM), triton.cdiv(N, BN))
    _qmm[grid](x, q, q if h is None else h, d, m, y, M, N, K, x.stride(0), y.stride(0),
               BITS=bits, IEEE=x.dtype == torch.float32, BM=BM, BN=BN, BK=32)
    return y
