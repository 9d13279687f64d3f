"""GPTQ/AWQ grids -> zenlm's QLinear, exactly (up to fp16 rounding of the offset), no re-quantizing.

A group of G inputs with scale s and zero point z is w = s * (q - z), so each of its 32-wide blocks is
QLinear's w = d * q + m with d = s (fp16 already) and m = -s * z (rounded to fp16); q is kept as it is.
This needs groups of whole 32-input blocks: G a multiple of 32, or -1.

Act-order (GPTQ's desc_act) scatters a group's inputs over K (g_idx). Its QLinear holds the inputs
sorted by group, and PermutedInput gathers the activations into that order before the kernel: exact,
at the cost of one gather of x per call. (Regrouping each original 32-block instead would mix up to
32 groups' scales in one block, which one fp16 scale and offset cannot represent without rounding
every weight again.) The members of a fused linear (q/k/v, gate/up) share one input order; GPTQ gives
them the same one, since they see the same inputs and so the same Hessian.
"""

from __future__ import annotations

import torch
from torch import nn

from zenlm.quant.linear import GROUP, TILE, QLinear, _tile
from zenlm.quant.packing import Grid


class PermutedInput(nn.Module):
    """A QLinear fed its input features in act-order: y = linear(x[..., index]). For a down projection
    (glu: x = [gate, up]) index reorders both halves alike, so silu(gate) * up is reordered too."""

    def __init__(self, linear: QLinear, index: torch.Tensor):
        super().__init__()
        self.linear = linear
        self.register_buffer("index", index)

    @classmethod
    def empty(cls, linear: QLinear) -> PermutedInput:
        """One to be filled by load_state_dict(assign=True), on meta."""
        n = linear.in_features * (2 if linear.glu else 1)
        return cls(linear, torch.empty(n, dtype=torch.int64, device="meta"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.index_select(-1, self.index))

    def spec(self) -> list:
        return ["permuted", self.linear.spec()]

    def dequantize(self) -> torch.Tensor:
        """The float32 weight [N, K] in the original input order."""
        w = self.linear.dequantize()
        return w[:, torch.argsort(self.index[:self.linear.in_features])]


def input_order(g_idx: torch.Tensor) -> torch.Tensor | None:
    """The input order that makes groups contiguous (a stable sort by group), or None if they already are."""
    if bool((g_idx[1:] >= g_idx[:-1]).all()):
        return None
    return torch.argsort(g_idx.long(), stable=True)


def block_groups(g_idx: torch.Tensor) -> torch.Tensor | None:
    """Each 32-input block's group [K / 32], or None when some block holds inputs of two groups."""
    K = g_idx.shape[0]
    if K % GROUP:
        return None
    b = g_idx.long().view(K // GROUP, GROUP)
    return b[:, 0] if bool((b == b[:, :1]).all()) else None


def to_module(grids: list[Grid], bias: torch.Tensor | None, glu: bool = False) -> nn.Module | None:
    """The members' grids (rows stacked in this order) as one QLinear, wrapped in PermutedInput for
    act-order; None when they cannot be held exactly (members in different input orders, groups that
    are not whole 32-blocks, or a bit width QLinear has not)."""
    bits, K = grids[0].bits, grids[0].q.shape[1]
    if bits not in (4, 8) or any(g.bits != bits or g.q.shape[1] != K for g in grids):
        return None
    orders = [input_order(g.g_idx) for g in grids]
    order = orders[0]
    if any((o is None) != (order is None) or (o is not None and not torch.equal(o, order)) for o in orders[1:]):
        return None
    q, d, m = [], [], []
    for g in grids:
        blocks = block_groups(g.g_idx if order is None else g.g_idx[order])
        if blocks is None:
            return None
        s = g.scale[blocks].T.float()  # [N, K / 32]
        q.append(g.q if order is None else g.q[:, order])
        d.append(s)
        m.append(-s * g.zero[blocks].T.float())
    q, d, m = torch.cat(q), torch.cat(d), torch.cat(m)
    N = q.shape[0]
    lin = QLinear(K, N, bits, bias is not None, device="cpu", glu=glu)
    T = lin.qs.shape[0]
    pad = T * TILE - N
    q = torch.cat([q, q.new_zeros(pad, K)])
    d, m = (torch.cat([t, t.new_zeros(pad, K // GROUP)]) for t in (d, m))
    lin.qs = _tile(q.to(torch.uint8).contiguous(), bits).contiguous()
    lin.d, lin.m = (t.view(T, TILE, K // GROUP).transpose(1, 2).half().contiguous() for t in (d, m))
    if bias is not None:
        lin.bias.copy_(bias.float())
    if order is None:
        return lin
    index = torch.cat([order, order + K]) if glu else order
    return PermutedInput(lin, index.long().contiguous())
