"""AWQ (Lin et al., 2023): activation-aware weight quantization, as AutoAWQ runs it on a Qwen2 block.

Per group of linears that read one input, a per-input-channel scale s = x_mean^r / w_mean^(1-r)
(normalized by sqrt(max * min)) is searched over the ratios r = 0, 1/20, ..., 19/20: each candidate
quantizes W * s and runs the group's module (the attention for q/k/v, the MLP for gate/up, the down
projection alone) on calibration inputs divided by s; the scale with the smallest output error wins,
and is folded into the op before (the RMSNorm's weight, v's rows for o_proj, up's rows for down), so the
float model computes the same thing. x_mean is the mean |x| per channel over all calibration tokens,
w_mean the mean over rows of |w| relative to its group's max. r = 0 is plain round-to-nearest, so the
search never does worse than RTN on the samples it sees. Then, optionally, each linear but q and k
gets a clipping range per output row and group (max |w| shrunk by up to half, in 20 steps) that
minimizes its own output error, and everything is rounded with AWQ's min..max zero-point grid.

The groups: input_layernorm -> q/k/v (one fused linear); v -> o_proj when heads == kv heads (with GQA
a v channel feeds several heads' o_proj inputs, and AutoAWQ skips it too); post_attention_layernorm ->
gate/up; up -> down. Blocks run in order and each block's quantized output feeds the next.
The scale search and clipping use the first `search_samples` calibration samples; the means use all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from zenlm.model import Block, Transformer
from zenlm.quant import grid
from zenlm.quant.calibration import Blocks, mlp_input
from zenlm.quant.packing import Grid

RATIOS = 20
CLIP_STEPS, CLIP_SHRINK, CLIP_TOKENS = 20, 0.5, 512


def fake_quantize(w: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """w rounded onto AWQ's grid (min..max per group, zero point) and back to float."""
    return grid.rtn(w, bits, group_size, style="awq").dequantize()


def _w_mean(w: torch.Tensor, group_size: int) -> torch.Tensor:
    """Per input channel: the mean over rows of |w| relative to the max |w| of its group [K]."""
    N, K = w.shape
    G = K if group_size == -1 else group_size
    g = w.abs().view(N, K // G, G)
    return (g / (g.amax(-1, keepdim=True) + 1e-6)).view(N, K).mean(0)


def search_scale(x_mean: torch.Tensor, w_mean: torch.Tensor, loss) -> tuple[torch.Tensor, float]:
    """The best per-channel scale over AWQ's ratio grid; loss(s) is the output error of quantizing W * s."""
    best, best_s, best_r = float("inf"), None, 0.0
    for k in range(RATIOS):
        r = k / RATIOS
        s = (x_mean.pow(r) / (w_mean.pow(1 - r) + 1e-4)).clamp(min=1e-4)
        s = s / (s.max() * s.min()).sqrt()
        s = torch.where(torch.isfinite(s), s, torch.ones_like(s))
        err = loss(s)
        if err < best:
            best, best_s, best_r = err, s, r
    return best_s, best_r


def clip_ranges(w: torch.Tensor, x: torch.Tensor, bits: int, group_size: int) -> torch.Tensor:
    """Per output row and group, the max |w| (shrunk up to CLIP_SHRINK) whose quantized output error on
    the input rows x [T, K] is least [N, K / G]."""
    N, K = w.shape
    G = K if group_size == -1 else group_size
    xg = x.reshape(-1, K // G, G).transpose(0, 1)  # [g, T, G]
    wg = w.view(N, K // G, G).permute(1, 2, 0)  # [g, G, N]
    want = xg @ wg  # [g, T, N]: each group's share of the output
    top = w.abs().view(N, K // G, G).amax(-1)  # [N, g]
    best_err, best = torch.full_like(top, float("inf")), top.clone()
    for i in range(int(CLIP_SHRINK * CLIP_STEPS)):
        m = top * (1 - i / CLIP_STEPS)
        lim = m.repeat_interleave(G, dim=1)
        q = fake_quantize(w.clamp(-lim, lim), bits, group_size)
        err = ((xg @ q.view(N, K // G, G).permute(1, 2, 0) - want) ** 2).mean(1).T  # [N, g]
        better = err < best_err
        best_err, best = torch.where(better, err, best_err), torch.where(better, m, best)
    return best


def _clip(linear: nn.Linear, x: torch.Tensor, bits: int, group_size: int, rows: slice | None = None) -> None:
    """Clip the weight (or some of its rows) to its best ranges, in place."""
    w = linear.weight.data if rows is None else linear.weight.data[rows]
    G = w.shape[1] if group_size == -1 else group_size
    step = max(1, x.reshape(-1, x.shape[-1]).shape[0] // CLIP_TOKENS)
    lim = clip_ranges(w, x.reshape(-1, x.shape[-1])[::step][:CLIP_TOKENS], bits, group_size)
    lim = lim.repeat_interleave(G, dim=1)
    w.copy_(w.clamp(-lim, lim))


class _Stats:
    """Per channel sums of |x| over all calibration tokens, and the inputs of the first samples."""

    def __init__(self):
        self.sum, self.n, self.kept = None, 0, []

    def add(self, x: torch.Tensor, keep: bool) -> None:
        flat = x.reshape(-1, x.shape[-1])
        s = flat.abs().sum(0)
        self.sum = s if self.sum is None else self.sum + s
        self.n += flat.shape[0]
        if keep:
            self.kept.append(x)

    def mean(self) -> torch.Tensor:
        return self.sum / self.n

    def inputs(self) -> torch.Tensor:
        return torch.cat(self.kept)


@torch.no_grad()
def awq_block(blocks: Blocks, block: Block, bits: int, group_size: int, search_samples: int, clip: bool) -> None:
    """Search and fold the scales of one block, clip, and leave its linears holding their float weights
    (scaled and clipped) for quantize_awq to round."""
    attn, mlp = block.self_attn, block.mlp
    h1, o_in, h2, a = _Stats(), _Stats(), _Stats(), _Stats()
    for s in blocks.spans():
        keep = s.start < search_samples
        x = blocks.x[s]
        h = block.input_layernorm(x)
        o, attn_out = blocks.attention(block, h)
        h1.add(h, keep)
        o_in.add(o, keep)
        h = block.post_attention_layernorm(x + attn_out)
        h2.add(h, keep)
        a.add(mlp_input(block, h), keep)

    def output_error(module_out, linears: list[nn.Linear], x_in: torch.Tensor, want: torch.Tensor):
        def loss(s: torch.Tensor) -> float:
            saved = [lin.weight.data for lin in linears]
            for lin in linears:
                lin.weight.data = fake_quantize(lin.weight.data * s, bits, group_size) / s
            err = (module_out(x_in) - want).pow(2).mean().item()
            for lin, w in zip(linears, saved):
                lin.weight.data = w
            return err
        return loss

    def attention_out(h: torch.Tensor) -> torch.Tensor:
        step = blocks.chunk
        return torch.cat([blocks.attention(block, h[i:i + step])[1] for i in range(0, h.shape[0], step)])

    # input_layernorm -> q, k, v
    x = h1.inputs()
    loss = output_error(attention_out, [attn.qkv_proj], x, attention_out(x))
    s, _ = search_scale(h1.mean(), _w_mean(attn.qkv_proj.weight, group_size), loss)
    block.input_layernorm.weight.div_(s)
    attn.qkv_proj.weight.mul_(s)
    x_qkv = x / s
    # v -> o_proj, only where each v channel feeds one o_proj input (no GQA)
    x_o = o_in.inputs()
    if attn.h == attn.kv:
        v = attn.qkv_proj.slices()["v_proj"]
        loss = output_error(attn.o_proj, [attn.o_proj], x_o, attn.o_proj(x_o))
        s, _ = search_scale(o_in.mean(), _w_mean(attn.o_proj.weight, group_size), loss)
        attn.qkv_proj.weight[v] /= s[:, None]
        if attn.qkv_proj.bias is not None:
            attn.qkv_proj.bias[v] /= s
        attn.o_proj.weight.mul_(s)
        x_o = x_o / s
    # post_attention_layernorm -> gate, up
    x = h2.inputs()
    loss = output_error(mlp, [mlp.gate_up_proj], x, mlp(x))
    s, _ = search_scale(h2.mean(), _w_mean(mlp.gate_up_proj.weight, group_size), loss)
    block.post_attention_layernorm.weight.div_(s)
    mlp.gate_up_proj.weight.mul_(s)
    x_gu = x / s
    # up -> down
    x = a.inputs()

    def down(t: torch.Tensor) -> torch.Tensor:
        return F.linear(t, mlp.down_proj.weight, mlp.down_proj.bias)

    loss = output_error(down, [mlp.down_proj], x, down(x))
    s, _ = search_scale(a.mean(), _w_mean(mlp.down_proj.weight, group_size), loss)
    up = mlp.gate_up_proj.slices()["up_proj"]
    mlp.gate_up_proj.weight[up] /= s[:, None]
    mlp.down_proj.weight.mul_(s)
    x_down = x / s
    if clip:  # q and k feed a softmax: AutoAWQ leaves them unclipped
        _clip(attn.qkv_proj, x_qkv, bits, group_size, attn.qkv_proj.slices()["v_proj"])
        _clip(attn.o_proj, x_o, bits, group_size)
        _clip(mlp.gate_up_proj, x_gu, bits, group_size)
        _clip(mlp.down_proj, x_down, bits, group_size)


@torch.no_grad()
def quantize_awq(model: Transformer, tokens: torch.Tensor, bits: int, group_size: int, search_samples: int = 16,
                 clip: bool = True, chunk: int = 8, progress: bool = True) -> dict[str, Grid]:
    """AWQ over a dense model's blocks on calibration tokens [S, L], in place (norms and v/up rows take the
    scales); the grids of the block linears by name."""
    blocks = Blocks(model, tokens, chunk)
    out: dict[str, Grid] = {}
    for i, block in enumerate(tqdm(model.model.layers, desc="AWQ", unit="block", disable=not progress)):
        awq_block(blocks, block, bits, group_size, search_samples, clip)
        for name in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"):
            linear = block.get_submodule(name)
            g = grid.rtn(linear.weight, bits, group_size, style="awq")
            linear.weight.data = g.dequantize()
            out[f"model.layers.{i}.{name}"] = g
        blocks.advance(block)
    return out
