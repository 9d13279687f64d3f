"""Cut a loaded Transformer down to one tensor-parallel rank's shard, in place (Megatron-style).

Column-parallel (output rows kept): the fused q/k/v (+ bias) by heads, the fused gate/up by MLP columns.
Row-parallel (input columns kept), followed by an all-reduce: o_proj and down_proj. Norms and rope are
replicated. The embedding is replicated (a lookup is cheap and needs no collective); the head is
vocab-parallel, each rank's logits gathered to rank 0, and a tied head is a view of the embedding's rows.
Float linears and QLinear (int4/int8/auto) both shard: a QLinear is cut in code space (rows any way,
inputs on its 32-wide group boundaries) and rebuilt from its own codes, so nothing is re-quantized.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from zenlm.model import Attention, PackedLinear, Transformer
from zenlm.parallel.plan import TPPlan
from zenlm.quant.linear import GROUP, QLinear


class RowParallel(nn.Module):
    """A linear over this rank's input columns; the all-reduce sums the ranks' partial outputs."""

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.inner(x).contiguous()
        dist.all_reduce(y)
        return y


class VocabParallelHead(nn.Module):
    """The output head over this rank's vocabulary rows; rank 0 gathers every rank's logits [.., V]."""

    def __init__(self, inner: nn.Module, plan: TPPlan):
        super().__init__()
        self.inner, self.plan = inner, plan

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.plan
        y = self.inner(x)  # [.., rows on this rank]
        pad = p.vocab_rows - y.shape[-1]  # the last rank may hold fewer rows: gather needs equal sizes
        y = torch.nn.functional.pad(y, (0, pad)).contiguous() if pad else y.contiguous()
        parts = [torch.empty_like(y) for _ in range(p.tp)] if p.rank == 0 else None
        dist.gather(y, parts, dst=0)
        return torch.cat(parts, dim=-1)[..., :p.vocab] if p.rank == 0 else y


def _index(ranges: list[range], device) -> torch.Tensor:
    return torch.cat([torch.arange(r.start, r.stop, device=device) for r in ranges])


def keep_rows(m: nn.Module, ranges: list[range]) -> nn.Module:
    """Column-parallel: the linear keeping only these output rows (in this order)."""
    if isinstance(m, QLinear):
        idx = _index(ranges, m.qs.device).cpu()
        q, d, s = (t[idx] for t in m.codes())
        bias = None if m.bias is None else m.bias[idx.to(m.bias.device)]
        return QLinear.from_codes(q, d, s, m.bits, bias, glu=m.glu).to(m.qs.device)
    if type(m) not in (nn.Linear, PackedLinear):
        raise ValueError(f"cannot shard a {type(m).__name__} by output rows")
    idx = _index(ranges, m.weight.device)
    m.weight = nn.Parameter(m.weight.detach().index_select(0, idx), requires_grad=False)
    if m.bias is not None:
        m.bias = nn.Parameter(m.bias.detach().index_select(0, idx), requires_grad=False)
    m.out_features = len(idx)
    return m


def keep_cols(m: nn.Module, cols: range, keep_bias: bool) -> nn.Module:
    """Row-parallel: the linear over only these input columns; the bias stays on one rank (keep_bias)."""
    if isinstance(m, QLinear):
        if cols.start % GROUP or len(cols) % GROUP:
            raise ValueError(f"a quantized linear shards its inputs in groups of {GROUP}: columns "
                             f"{cols.start}..{cols.stop} of {m.in_features} do not fall on group boundaries")
        q, d, s = m.codes()
        g = slice(cols.start // GROUP, cols.stop // GROUP)
        bias = m.bias if keep_bias else None
        return QLinear.from_codes(q[:, cols.start:cols.stop], d[:, g], s[:, g], m.bits, bias,
                                  glu=m.glu).to(m.qs.device)
    if not isinstance(m, nn.Linear):
        raise ValueError(f"cannot shard a {type(m).__name__} by input columns")
    m.weight = nn.Parameter(m.weight.detach()[:, cols.start:cols.stop].contiguous(), requires_grad=False)
    if m.bias is not None and not keep_bias:
        m.bias = None
    m.in_features = len(cols)
    return m


def shard(model: Transformer, p: TPPlan) -> Transformer:
    """Make `model` rank p.rank's shard, in place; its config becomes the shard's (model.config's head and
    MLP widths are this rank's, so the engine's KV cache holds only this rank's KV heads)."""
    c = model.config
    D, width = c.head_dim, c.intermediate_size
    H, KV = c.num_heads * D, c.num_kv_heads * D
    heads = range(p.head_range.start * D, p.head_range.stop * D)
    kv = range(p.kv_range.start * D, p.kv_range.stop * D)
    inter = p.inter_range
    for block in model.model.layers:
        attn: Attention = block.self_attn
        qkv = [heads, range(H + kv.start, H + kv.stop), range(H + KV + kv.start, H + KV + kv.stop)]
        attn.qkv_proj = keep_rows(attn.qkv_proj, qkv)
        if isinstance(attn.qkv_proj, PackedLinear):
            attn.qkv_proj.shards = {"q_proj": len(heads), "k_proj": len(kv), "v_proj": len(kv)}
        attn.o_proj = RowParallel(keep_cols(attn.o_proj, heads, p.rank == 0))
        attn.h, attn.kv = p.heads, p.kv_heads
        mlp = block.mlp
        mlp.gate_up_proj = keep_rows(mlp.gate_up_proj, [inter, range(width + inter.start, width + inter.stop)])
        if isinstance(mlp.gate_up_proj, PackedLinear):
            mlp.gate_up_proj.shards = {"gate_proj": p.inter, "up_proj": p.inter}
        mlp.down_proj = RowParallel(keep_cols(mlp.down_proj, inter, p.rank == 0))
    head, embed = model.lm_head, model.model.embed_tokens
    if isinstance(head, nn.Linear) and isinstance(embed, nn.Embedding) and head.weight is embed.weight:
        rows = p.vocab_range  # tied: a view of the replicated embedding's rows, no copy
        head = nn.Linear(c.hidden_size, len(rows), bias=False, device="meta")
        head.weight = nn.Parameter(embed.weight.detach()[rows.start:rows.stop], requires_grad=False)
    else:
        head = keep_rows(head, [p.vocab_range])
    model.lm_head = VocabParallelHead(head, p)
    model.config = p.local_config(c)
    return model
