"""The GPU path of quantized linears: QLinear's row layout holds the same weights as its tiles, and the Triton
kernel (zenlm/kernels/gpu_linear.py) multiplies from the packed codes correctly at 4, 5 and 8 bits.

Without a GPU the kernel runs in Triton's interpreter (TRITON_INTERPRET=1, CPU tensors, in a child process
since the variable is read at import); with one, the same checks run on CUDA through QLinear itself, and
a whole quantized model's greedy tokens on CUDA are compared with its CPU run.
"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from zenlm.quant.linear import QLinear


def codes(N: int, K: int, bits: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    q = torch.randint(0, 1 << bits, (N, K), generator=g, dtype=torch.uint8)
    d = (torch.rand(N, K // 32, generator=g) * 0.02 + 0.001).half()
    m = (torch.randn(N, K // 32, generator=g) * 0.05).half()
    return q, d, m


@pytest.mark.parametrize("bits", [4, 5, 8])
def test_row_layout_holds_the_same_weights(bits):
    q, d, m = codes(40, 96, bits)  # 40 rows: not a whole number of 16-row tiles
    lin = QLinear.from_codes(q, d, m, bits, torch.randn(40))
    want, some = lin.dequantize(), lin.dequantize(torch.tensor([39, 0, 7]))
    exact = (q.view(40, 3, 32).float() * d.float()[..., None] + m.float()[..., None]).view(40, 96)
    assert torch.equal(want, exact)
    lin.to_rows()
    assert lin.layout == "rows" and lin.d.shape == (40, 3) and (lin.qh is not None) == (bits == 5)
    assert lin.qs.shape == (40, 96 if bits == 8 else 48)
    assert torch.equal(lin.dequantize(), want) and torch.equal(lin.dequantize(torch.tensor([39, 0, 7])), some)
    x = torch.randn(3, 96)
    torch.testing.assert_close(lin(x), x @ want.T + lin.bias)  # off the kernel's layout: the torch path


KERNEL_CHECK = textwrap.dedent("""
    import torch
    from zenlm.kernels import gpu_linear
    from zenlm.quant.linear import QLinear
    from tests.test_gpu_linear import codes
    for bits in (4, 5, 8):
        for M in (1, 5, 33):
            q, d, m = codes(48, 96, bits, seed=bits * 100 + M)
            lin = QLinear.from_codes(q, d, m, bits, None)
            w = lin.dequantize()
            lin.to_rows()
            x = torch.randn(M, 96, generator=torch.Generator().manual_seed(M))
            y = gpu_linear.linear(x, lin.qs, lin.qh, lin.d, lin.m, bits, 48)
            assert y.shape == (M, 48) and y.dtype == torch.float32
            torch.testing.assert_close(y, x @ w.T, rtol=1e-5, atol=1e-5)
            yb = gpu_linear.linear(x.half(), lin.qs, lin.qh, lin.d, lin.m, bits, 48)  # the interpreter has no bf16
            assert yb.dtype == torch.float16
            torch.testing.assert_close(yb.float(), x.half().float() @ w.half().float().T, rtol=2e-2, atol=2e-2)
    print("ok")
""")


def test_triton_kernel_in_the_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": os.getcwd()}
    out = subprocess.run([sys.executable, "-c", KERNEL_CHECK], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA half of the device-parameterised checks")


@cuda
@pytest.mark.parametrize("bits", [4, 5, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_qlinear_on_cuda_reads_the_codes(bits, dtype):
    q, d, m = codes(304, 896, bits)
    lin = QLinear.from_codes(q, d, m, bits, torch.randn(304))
    w, bias = lin.dequantize(), lin.bias.clone()
    lin = lin.cuda()
    for M in (1, 7, 130):
        x = torch.randn(M, 896, device="cuda", dtype=dtype)
        y = lin(x)
        assert lin.layout == "rows" and y.dtype == dtype
        want = x.float() @ w.cuda().to(dtype).float().T + bias.cuda()  # the kernel rounds W to x's type
        tol = 1e-4 if dtype == torch.float32 else 1e-2
        torch.testing.assert_close(y.float(), want, rtol=tol, atol=tol * 10)
    glu = QLinear.from_codes(q[:, :448], d[:, :14], m[:, :14], bits, None, glu=True).cuda()
    gate_up = torch.randn(2, 896, device="cuda", dtype=dtype)
    gate, up = gate_up.chunk(2, -1)
    want = (torch.nn.functional.silu(gate) * up).float() @ glu.dequantize().to(dtype).float().T
    torch.testing.assert_close(glu(gate_up).float(), want, rtol=tol, atol=tol * 10)
