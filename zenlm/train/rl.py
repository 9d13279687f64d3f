"""RL objectives for the one training loop: GRPO and PPO losses and the pieces they are made of.

Everything is per completion token, at label positions (the label at position i is token i + 1, so a
token's log-prob, its value estimate and its advantage all sit where its label sits). Pieces: token
log-probs with entropies (chunked, no [B, T, V] logits kept), group-relative advantages, GAE, the
clipped policy ratio objective, PPO's clipped value loss and the k3 estimate of KL(policy || reference).
Losses return sums over completion tokens; the loop divides by the global token count.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from zenlm.train.data import IGNORE, Batch
from zenlm.train.losses import CHUNK, Forward, LossOut, _compute_dtype


@dataclass(slots=True)
class RolloutBatch(Batch):
    """A batch of sampled completions: per-token tensors [B, T] at label positions (0 elsewhere)."""
    advantages: torch.Tensor | None = None
    old_logps: torch.Tensor | None = None  # the policy that sampled (before this step's updates)
    ref_logps: torch.Tensor | None = None  # the frozen reference
    returns: torch.Tensor | None = None  # PPO: GAE advantages + old values
    old_values: torch.Tensor | None = None  # PPO

    def to(self, device) -> RolloutBatch:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return RolloutBatch(move(self.tokens), move(self.labels), move(self.positions), move(self.docs), self.pairs,
                            move(self.advantages), move(self.old_logps), move(self.ref_logps), move(self.returns),
                            move(self.old_values))


# ---- pieces ----------------------------------------------------------------------------------
def token_logps_entropy(h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                        chunk: int = CHUNK) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p(label), entropy of the next-token distribution) per position, h [B, T, C] -> two [B, T],
    0 where the label is IGNORE. Chunks are recomputed in backward; the entropy carries no gradient."""
    B, T, C = h.shape
    flat_h, flat_y = h.reshape(-1, C), labels.reshape(-1)
    keep = (flat_y != IGNORE).nonzero()[:, 0]
    dt = _compute_dtype(h)

    def piece(hc: torch.Tensor, yc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = (hc.to(dt) @ weight.to(dt).t()).float()
        lse = torch.logsumexp(logits, dim=-1)
        ent = lse - (logits.softmax(-1) * logits).sum(-1)
        return logits.gather(1, yc[:, None])[:, 0] - lse, ent.detach()

    hk, yk = flat_h[keep], flat_y[keep]
    parts = [torch.utils.checkpoint.checkpoint(piece, hk[s:s + chunk], yk[s:s + chunk], use_reentrant=False)
             for s in range(0, len(keep), chunk)]
    lp = torch.zeros(B * T, dtype=torch.float32, device=h.device)
    ent = torch.zeros(B * T, dtype=torch.float32, device=h.device)
    if parts:
        lp = lp.index_put((keep,), torch.cat([p[0] for p in parts]))
        ent = ent.index_put((keep,), torch.cat([p[1] for p in parts]))
    return lp.view(B, T), ent.view(B, T)


def group_advantages(rewards: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """GRPO: rewards [P * G] (G samples of each prompt, adjacent) -> (r - group mean) / (group std + eps),
    std with Bessel's correction; a group whose samples all score the same gets 0."""
    if group_size < 2 or rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of {group_size} (need >= 2)")
    r = rewards.float().view(-1, group_size)
    return ((r - r.mean(1, keepdim=True)) / (r.std(1, keepdim=True) + eps)).view(-1)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float = 1.0,
        lam: float = 0.95) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over each row's masked (completion) positions, [B, T] each;
    the value after a row's last token is 0 (the episode ends). Returns (advantages, returns = A + V),
    0 off the mask."""
    B, T = rewards.shape
    adv = torch.zeros(B, T, dtype=torch.float32, device=rewards.device)
    next_v = torch.zeros(B, dtype=torch.float32, device=rewards.device)
    next_a = torch.zeros_like(next_v)
    m = mask.bool()
    for t in range(T - 1, -1, -1):
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        a = delta + gamma * lam * next_a
        adv[:, t] = torch.where(m[:, t], a, 0.0)
        next_v = torch.where(m[:, t], values[:, t].float(), next_v)
        next_a = torch.where(m[:, t], a, next_a)
    return adv, torch.where(m, adv + values, 0.0)


def whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked entries; 0 elsewhere."""
    m = mask.bool()
    v = x[m]
    if v.numel() < 2:
        return torch.where(m, x, 0.0)
    return torch.where(m, (x - v.mean()) / (v.std() + eps), 0.0)


def clipped_policy_loss(logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                        clip: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per token: max(-ratio * A, -clamp(ratio, 1 - clip, 1 + clip) * A) with ratio = exp(logp - old);
    also whether the clipped term was taken (a float 0/1)."""
    ratio = torch.exp(logps - old_logps)
    plain, clipped = -ratio * advantages, -ratio.clamp(1 - clip, 1 + clip) * advantages
    return torch.maximum(plain, clipped), (clipped > plain).float()


def clipped_value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor,
                       clip: float) -> torch.Tensor:
    """Per token: 0.5 * max((V - R)^2, (V_old + clamp(V - V_old, -clip, clip) - R)^2)."""
    v_clip = old_values + (values - old_values).clamp(-clip, clip)
    return 0.5 * torch.maximum((values - returns) ** 2, (v_clip - returns) ** 2)


def kl_k3(logps: torch.Tensor, ref_logps: torch.Tensor) -> torch.Tensor:
    """Per token k3 estimate of KL(policy || reference) on the policy's samples: e^(ref-lp) - (ref-lp) - 1 >= 0."""
    d = ref_logps - logps
    return torch.exp(d) - d - 1


# ---- the losses the loop takes ---------------------------------------------------------------
class GRPO:
    """Clipped ratio objective on group-relative advantages plus kl_coef * KL(policy || reference), per
    completion token; counts completion tokens. Metrics: kl, entropy, clip_fraction (per token)."""

    def __init__(self, clip: float = 0.2, kl_coef: float = 0.04):
        if clip <= 0 or kl_coef < 0:
            raise ValueError(f"GRPO needs clip > 0 and kl_coef >= 0, got {clip} and {kl_coef}")
        self.clip, self.kl_coef = clip, kl_coef

    def count(self, batch: Batch) -> int:
        return batch.valid_tokens

    def __call__(self, forward: Forward, head: torch.Tensor, batch: RolloutBatch) -> LossOut:
        mask = (batch.labels != IGNORE).float()
        logps, ent = token_logps_entropy(forward(batch), head, batch.labels)
        pg, clipped = clipped_policy_loss(logps, batch.old_logps, batch.advantages, self.clip)
        kl = kl_k3(logps, batch.ref_logps)
        total = ((pg + self.kl_coef * kl) * mask).sum()
        return LossOut(total, {"kl": float((kl.detach() * mask).sum()), "entropy": float((ent * mask).sum()),
                               "clip_fraction": float((clipped * mask).sum())})


class PPO:
    """Clipped policy objective on GAE advantages (the KL penalty is in the per-token rewards, made by the
    rollout stage) plus vf_coef * clipped value loss of `value_head` on the policy's hidden states.
    Metrics: kl, entropy, clip_fraction, value_loss (per token)."""

    def __init__(self, value_head: nn.Module, clip: float = 0.2, value_clip: float = 0.2, vf_coef: float = 0.1):
        if clip <= 0 or value_clip <= 0 or vf_coef < 0:
            raise ValueError("PPO needs clip > 0, value_clip > 0 and vf_coef >= 0")
        self.value_head, self.clip, self.value_clip, self.vf_coef = value_head, clip, value_clip, vf_coef

    def count(self, batch: Batch) -> int:
        return batch.valid_tokens

    def __call__(self, forward: Forward, head: torch.Tensor, batch: RolloutBatch) -> LossOut:
        mask = (batch.labels != IGNORE).float()
        h = forward(batch)
        logps, ent = token_logps_entropy(h, head, batch.labels)
        pg, clipped = clipped_policy_loss(logps, batch.old_logps, batch.advantages, self.clip)
        values = self.value_head(h).float()[..., 0]
        vl = clipped_value_loss(values, batch.old_values, batch.returns, self.value_clip)
        total = ((pg + self.vf_coef * vl) * mask).sum()
        kl = kl_k3(logps.detach(), batch.ref_logps)
        return LossOut(total, {"kl": float((kl * mask).sum()), "entropy": float((ent * mask).sum()),
                               "clip_fraction": float((clipped * mask).sum()),
                               "value_loss": float((vl.detach() * mask).sum())})
