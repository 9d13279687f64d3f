"""Reciprocal-rank fusion: several rankings of the same items into one, each item scoring sum 1 / (k + rank).

rank starts at 1; k = 60 as in Cormack et al. (2009) and Qwen-Agent. Ties keep first-seen order.
"""

from __future__ import annotations

RRF_K = 60


def rrf(rankings: list[list[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """[(item, fused score)] best first."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda kv: -kv[1])
