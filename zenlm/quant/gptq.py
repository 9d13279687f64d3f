"""GPTQ (Frantar et al., 2022): quantize a linear column by column, each column's rounding error pushed
onto the columns not yet quantized through the inverse Hessian of its inputs, H = 2 X X^T / n.

`gptq` does one weight: dead inputs zeroed, optional act-order (columns by decreasing H diagonal),
dampening (a fraction of the mean diagonal added), the upper Cholesky factor of H^-1, then blocks of
columns with the error compensation inside a block done column by column and applied to the columns
after the block at once (the "lazy batch" update). Group scales and zero points are chosen when a
group's first column is reached, from the weights as compensated so far.

`quantize_gptq` runs it over a dense model's blocks in order, true-sequentially: q/k/v (one fused
linear: one input, one Hessian), then o_proj on the attention of the quantized q/k/v, then gate/up,
then down; each block's output with its quantized weights is the next block's input. Fused linears are
quantized whole (rows never interact in GPTQ), so their members share the act-order their one input
gives them. `quantize_rtn` is the same grid with plain rounding and no data.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm import tqdm

from zenlm.model import Transformer
from zenlm.quant import grid
from zenlm.quant.calibration import Blocks, Gram, mlp_input
from zenlm.quant.packing import Grid

LINEARS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")


def inverse_factor(H: torch.Tensor) -> torch.Tensor:
    """The upper Cholesky factor U of H^-1 (H^-1 = U^T U) for a positive definite H: with R upper and
    H = R R^T (the Cholesky factor of H with its order reversed), U = R^-1; one factorization and one
    triangular inverse instead of inverting H and factorizing again. In float64: a Hessian from real
    activations spans many orders of magnitude, and fp32 loses the directions calibration rarely sees."""
    flip = torch.arange(H.shape[0] - 1, -1, -1)
    R = torch.linalg.cholesky(H.double()[flip][:, flip])[flip][:, flip]
    return torch.linalg.solve_triangular(R, torch.eye(H.shape[0], dtype=torch.float64), upper=True).float()


def gptq(w: torch.Tensor, H: torch.Tensor, bits: int, group_size: int, sym: bool = True, act_order: bool = False,
         damp: float = 0.01, block: int = 128) -> Grid:
    """Quantize w [N, K] given the Hessian H [K, K] of its inputs; returns the grid (g_idx scattered
    under act-order, as GPTQ writes it). Columns are rows here (w transposed) so each is contiguous."""
    N, K = w.shape
    G = K if group_size == -1 else group_size
    if K % G:
        raise ValueError(f"{K} inputs are not whole groups of {G}")
    W, H = w.detach().float().T.contiguous(), H.float().clone()  # W [K, N]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[dead] = 0
    perm = torch.argsort(torch.diag(H), descending=True) if act_order else torch.arange(K)
    W, H = W[perm], H[perm][:, perm]
    H += damp * torch.diag(H).mean() * torch.eye(K)
    Hinv = inverse_factor(H)
    Q = torch.zeros(K, N)
    scales, zeros = torch.zeros(K // G, N), torch.zeros(K // G, N)
    s = z = None
    for i1 in range(0, K, block):
        i2 = min(i1 + block, K)
        W1, Err = W[i1:i2].clone(), torch.zeros(i2 - i1, N)
        Hinv1 = Hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = i1 + i
            if col % G == 0:  # a group starts: its grid from its weights as compensated so far
                ahead = torch.cat([W1[i:], W[i2:]])[:G]
                s, z = grid.params(ahead.T, bits, sym)
                scales[col // G], zeros[col // G] = s, z
            q = torch.clamp(torch.round(W1[i] / s) + z, 0, (1 << bits) - 1)
            Q[col] = q
            err = (W1[i] - s * (q - z)) / Hinv1[i, i]
            W1[i:].sub_(Hinv1[i, i:, None] * err[None])
            Err[i] = err
        W[i2:] -= Hinv[i1:i2, i2:].T @ Err
    g_idx = torch.empty(K, dtype=torch.int32)
    g_idx[perm] = torch.arange(K, dtype=torch.int32) // G
    q = torch.empty(K, N)
    q[perm] = Q
    return Grid(q.T.to(torch.uint8).contiguous(), scales.half(), zeros.to(torch.int16), g_idx, bits)


def _set(linear: nn.Linear, g: Grid) -> None:
    """The linear computes with its quantized weight from now on."""
    linear.weight.data = g.dequantize().to(linear.weight.dtype)


def block_linears(model: Transformer) -> dict[str, nn.Linear]:
    """The linears GPTQ/AWQ/RTN quantize: every projection inside the blocks (MoE routers excepted)."""
    from zenlm.weights.load import UNQUANTIZED

    return {n: m for n, m in model.model.layers.named_modules(prefix="model.layers")
            if isinstance(m, nn.Linear) and n.rpartition(".")[2] not in UNQUANTIZED}


def quantize_rtn(model: Transformer, bits: int, group_size: int, sym: bool = True) -> dict[str, Grid]:
    """Round every block linear to the nearest grid point (GPTQ's grid), in place; the grids by linear name."""
    out = {}
    for name, linear in block_linears(model).items():
        out[name] = grid.rtn(linear.weight, bits, group_size, sym)
        _set(linear, out[name])
    return out


@torch.no_grad()
def quantize_gptq(model: Transformer, tokens: torch.Tensor, bits: int, group_size: int, sym: bool = True,
                  act_order: bool = False, damp: float = 0.01, chunk: int = 8,
                  progress: bool = True) -> dict[str, Grid]:
    """GPTQ over a dense model's blocks on calibration tokens [S, L], in place; the grids by linear name."""
    blocks = Blocks(model, tokens, chunk)
    out: dict[str, Grid] = {}

    def run(linear: nn.Linear, gram: Gram, name: str) -> None:
        out[name] = gptq(linear.weight, gram.hessian(), bits, group_size, sym, act_order, damp)
        _set(linear, out[name])

    for i, block in enumerate(tqdm(model.model.layers, desc="GPTQ", unit="block", disable=not progress)):
        prefix = f"model.layers.{i}"
        attn, mlp = block.self_attn, block.mlp
        gram = Gram(attn.qkv_proj.in_features)
        for s in blocks.spans():
            gram.add(block.input_layernorm(blocks.x[s]))
        run(attn.qkv_proj, gram, f"{prefix}.self_attn.qkv_proj")
        gram, o_in = Gram(attn.o_proj.in_features), []
        for s in blocks.spans():
            o_in.append(blocks.attention(block, block.input_layernorm(blocks.x[s]))[0])
            gram.add(o_in[-1])
        run(attn.o_proj, gram, f"{prefix}.self_attn.o_proj")
        x2 = [blocks.x[s] + attn.o_proj(o) for s, o in zip(blocks.spans(), o_in)]
        del o_in
        gram = Gram(mlp.gate_up_proj.in_features)
        for x in x2:
            gram.add(block.post_attention_layernorm(x))
        run(mlp.gate_up_proj, gram, f"{prefix}.mlp.gate_up_proj")
        gram, a = Gram(mlp.down_proj.in_features), []
        for x in x2:
            a.append(mlp_input(block, block.post_attention_layernorm(x)))
            gram.add(a[-1])
        run(mlp.down_proj, gram, f"{prefix}.mlp.down_proj")
        down = mlp.down_proj
        blocks.x = torch.cat([x + nn.functional.linear(h, down.weight, down.bias) for x, h in zip(x2, a)])
        del x2, a
    return out
