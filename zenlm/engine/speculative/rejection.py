"""Exact acceptance of drafted tokens against the target model's next-token distributions.

Greedy: keep the drafts that equal the target's argmax, then the target's own token. Sampled: the
speculative rejection sampler (Leviathan et al. 2023; Chen et al. 2023): accept draft x with probability
min(1, p(x) / q(x)); at the first rejection draw from normalize(max(0, p - q)); if every draft is kept,
draw a bonus token from p. A deterministic proposer (n-gram) has q = a point mass on its draft.
The output token at each position is then distributed exactly as p. Pure torch over given rows.
"""

from __future__ import annotations

import torch


def accept_greedy(targets: list[int], drafts: list[int]) -> list[int]:
    """targets: the target's argmax after the last token and after each draft (len(drafts) + 1 of them).
    Returns the kept drafts and the target's next token."""
    assert len(targets) == len(drafts) + 1, "one target token per draft, and one more"
    n = 0
    while n < len(drafts) and drafts[n] == targets[n]:
        n += 1
    return drafts[:n] + [targets[n]]


def accept_sampled(p: torch.Tensor, drafts: list[int], q: torch.Tensor | None,
                   generator: torch.Generator | None = None) -> list[int]:
    """p [k + 1, V]: the target's (warped) probabilities after the last token and after each draft;
    q [k, V]: the proposer's probabilities each draft was drawn from, or None for a point mass.
    Returns the kept drafts and one token drawn from the residual (or, all kept, from p's last row)."""
    k = len(drafts)
    assert p.shape[0] == k + 1 and (q is None or q.shape[0] == k), "p needs k + 1 rows and q k rows"
    u = torch.rand(k, generator=generator, device=p.device).tolist() if k else []
    for j, x in enumerate(drafts):
        px = float(p[j, x])
        qx = 1.0 if q is None else float(q[j, x])
        if u[j] * qx < px:  # u < p/q: accepted with probability min(1, p(x)/q(x))
            continue
        if q is None:
            residual = p[j].clone()
            residual[x] = 0  # max(0, p - onehot(x))
        else:
            residual = (p[j] - q[j]).clamp_(min=0)
        if not float(residual.sum()) > 0:  # p == q up to rounding: a rejection had probability ~0
            residual = p[j]
        return drafts[:j] + [int(torch.multinomial(residual, 1, generator=generator))]
    return list(drafts) + [int(torch.multinomial(p[k], 1, generator=generator))]
