"""Losses over final hidden states: chunked linear + cross-entropy, per-token log-probs, and DPO.

The output projection onto the 151,936-token vocabulary is done a chunk of tokens at a time and
only for tokens that carry a label; full [N, V] logits never exist. Cross-entropy computes its
gradients in the forward pass (3 matmuls, no stored logits). A loss returns a SUM and says what to
divide it by (`count`), so the loop can normalise by the count over micro-batches and ranks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from zenlm.train.data import IGNORE, Batch

CHUNK = 512  # tokens per chunk of logits: two [CHUNK, V] bf16 buffers are 0.3 GB at V = 151,936


def _compute_dtype(h: torch.Tensor) -> torch.dtype:
    dev = h.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else h.dtype


class _LinearCE(torch.autograd.Function):
    """sum_i CE(h_i @ W.T, y_i) for labelled rows; grads w.r.t. h and W made in the forward pass.

    Per chunk: logits in the compute dtype (bf16 under autocast) into a reused buffer, one fused
    softmax (fp32 inside the kernel) into a second buffer, loss = -log p[label], gradient p - onehot.
    Reusing the two [chunk, V] buffers avoids fresh page-faulted allocations, which cost more than
    the softmax itself on CPU.
    """

    @staticmethod
    def forward(ctx, h, w, y, chunk: int, dt: torch.dtype):  # h [N, C], w [V, C], y [N]
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        N, V = h.shape[0], w.shape[0]
        wd = w.to(dt)
        wt = wd.t()
        n0 = min(chunk, N)
        logits = torch.empty(n0, V, dtype=dt, device=h.device)  # reused [chunk, V] buffers
        probs = torch.empty(n0, V, dtype=dt, device=h.device)
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        gh = torch.empty_like(h) if need_h else None
        gw = torch.zeros(w.shape, dtype=torch.float32, device=w.device) if need_w else None
        gw_part = torch.empty(w.shape, dtype=dt, device=w.device) if need_w else None
        tiny = torch.finfo(torch.float32).tiny
        for s in range(0, N, chunk):
            hc, yc = h[s:s + chunk].to(dt), y[s:s + chunk]
            n = hc.shape[0]
            z, p = logits[:n], probs[:n]
            torch.mm(hc, wt, out=z)
            torch.ops.aten._softmax.out(z, -1, False, out=p)
            rows = torch.arange(n, device=h.device)
            p_label = p[rows, yc].float()
            total -= p_label.clamp_min(tiny).log().sum()
            if need_h or need_w:
                p[rows, yc] = (p_label - 1.0).to(dt)  # d loss / d logits = softmax - onehot
                if need_h:
                    gh[s:s + chunk] = (p @ wd).to(h.dtype)
                if need_w:
                    torch.mm(p.t(), hc, out=gw_part)
                    gw += gw_part
        ctx.save_for_backward(gh, gw)
        ctx.w_dtype = w.dtype
        return total

    @staticmethod
    def backward(ctx, grad):
        gh, gw = ctx.saved_tensors
        return (None if gh is None else gh * grad.to(gh.dtype),
                None if gw is None else (gw * grad).to(ctx.w_dtype),
                None, None, None)


def linear_cross_entropy(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                         chunk: int = CHUNK) -> torch.Tensor:
    """Summed next-token CE of hidden states h [..., C] through the head weight [V, C]; labels [...]."""
    h, labels = h.reshape(-1, h.shape[-1]), labels.reshape(-1)
    keep = (labels != IGNORE).nonzero()[:, 0]
    return _LinearCE.apply(h[keep], weight, labels[keep], chunk, _compute_dtype(h))


def linear_token_logps(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                       chunk: int = CHUNK) -> torch.Tensor:
    """log p(label) per position, h [B, T, C] -> [B, T], 0 where the label is IGNORE.

    Chunks are recomputed in backward (torch.utils.checkpoint), so no [B, T, V] logits are kept.
    """
    B, T, C = h.shape
    flat_h, flat_y = h.reshape(-1, C), labels.reshape(-1)
    keep = (flat_y != IGNORE).nonzero()[:, 0]
    dt = _compute_dtype(h)

    def piece(hc: torch.Tensor, yc: torch.Tensor) -> torch.Tensor:
        logits = (hc.to(dt) @ weight.to(dt).t()).float()
        return logits.gather(1, yc[:, None])[:, 0] - torch.logsumexp(logits, dim=-1)

    hk, yk = flat_h[keep], flat_y[keep]
    parts = [torch.utils.checkpoint.checkpoint(piece, hk[s:s + chunk], yk[s:s + chunk], use_reentrant=False)
             for s in range(0, len(keep), chunk)]
    out = torch.zeros(B * T, dtype=torch.float32, device=h.device)
    if parts:
        out = out.index_put((keep,), torch.cat(parts))
    return out.view(B, T)


# ---- the losses the loop takes ---------------------------------------------------------------
# Forward(batch) -> final hidden states [B, T, C]; given to a loss with the head weight.
Forward = Callable[[Batch], torch.Tensor]


@dataclass(slots=True)
class LossOut:
    total: torch.Tensor  # summed loss, to be divided by the global count
    metrics: dict[str, float]  # summed too (the loop divides by the same count)


class CrossEntropy:
    """Next-token CE summed over labelled tokens; normalised by the number of labelled tokens."""

    def count(self, batch: Batch) -> int:
        return batch.valid_tokens

    def __call__(self, forward: Forward, head: torch.Tensor, batch: Batch) -> LossOut:
        return LossOut(linear_cross_entropy(forward(batch), head, batch.labels), {})


def dpo_loss(pi_c, pi_r, ref_c, ref_r, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    """Sigmoid DPO per pair: -log sigma(beta * ((pi_c - pi_r) - (ref_c - ref_r))), optionally smoothed."""
    z = beta * ((pi_c - pi_r) - (ref_c - ref_r))
    return -F.logsigmoid(z) * (1 - label_smoothing) - F.logsigmoid(-z) * label_smoothing


class DPO:
    """DPO against a frozen reference. `reference(batch)` gives the reference's hidden states and
    head weight (a frozen copy, or the same model with its LoRA adapters disabled)."""

    def __init__(self, reference: Callable[[Batch], tuple[torch.Tensor, torch.Tensor]], beta: float = 0.1,
                 label_smoothing: float = 0.0):
        if beta <= 0:
            raise ValueError(f"DPO beta must be positive, got {beta}")
        self.reference, self.beta, self.smoothing = reference, beta, label_smoothing

    def count(self, batch: Batch) -> int:
        return batch.pairs

    def __call__(self, forward: Forward, head: torch.Tensor, batch: Batch) -> LossOut:
        P = batch.pairs
        assert P * 2 == batch.tokens.shape[0], "a DPO batch is chosen rows then rejected rows"
        logps = linear_token_logps(forward(batch), head, batch.labels).sum(-1)  # [2P]
        with torch.no_grad():
            h_ref, w_ref = self.reference(batch)
            ref = linear_token_logps(h_ref, w_ref, batch.labels).sum(-1)
        losses = dpo_loss(logps[:P], logps[P:], ref[:P], ref[P:], self.beta, self.smoothing)
        chosen = self.beta * (logps[:P] - ref[:P]).detach()
        rejected = self.beta * (logps[P:] - ref[P:]).detach()
        return LossOut(losses.sum(), {"rewards_chosen": float(chosen.sum()), "rewards_rejected": float(rejected.sum()),
                                      "reward_accuracy": float((chosen > rejected).float().sum())})
