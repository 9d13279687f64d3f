"""Prefix affinity: which replica last took each prompt prefix, and the replica a new request should go to.

A route key (bridge.route_key) is cut into blocks of `block_chars` characters; block k's hash chains over
blocks 0..k, so one lookup per block finds the longest prefix a replica has seen. The rule (the same shape
as Ray's PrefixCacheAffinityRouter, matching characters as a proxy for zenlm's token-block prefix cache):
  - the replica owning the longest matched prefix gets the request, if the match is at least `min_match`
    characters and that replica has at most `imbalance` more requests in flight than the least-loaded one;
  - otherwise the least-loaded replica does, ties going to the one owning the fewest prefix blocks.
The table is bounded (least recently used blocks go first). Plain Python: router.py wraps it for Ray Serve.
"""

from __future__ import annotations

import random
from collections import Counter, OrderedDict
from collections.abc import Hashable, Iterable


class PrefixTable:
    def __init__(self, block_chars: int = 32, min_match: int = 128, imbalance: int = 4, max_blocks: int = 200_000):
        if block_chars < 1 or min_match < 0 or imbalance < 0 or max_blocks < 1:
            raise ValueError("block_chars and max_blocks must be >= 1, min_match and imbalance >= 0")
        self.block_chars, self.min_match, self.imbalance = block_chars, min_match, imbalance
        self.max_blocks = max_blocks
        self.owner: OrderedDict[int, Hashable] = OrderedDict()  # block hash -> replica
        self.owned: Counter = Counter()  # replica -> blocks it owns

    def hashes(self, key: str) -> list[tuple[int, int]]:
        """(chained hash, characters covered) for each block of key, the last one possibly partial."""
        out, h, n = [], 0, self.block_chars
        for start in range(0, len(key), n):
            h = hash((h, key[start:start + n]))
            out.append((h, min(start + n, len(key))))
        return out

    def longest_match(self, key: str, replicas: Iterable[Hashable]) -> tuple[Hashable | None, int]:
        """The replica among `replicas` owning the longest prefix of key, and that prefix's length in characters."""
        live, best, length = set(replicas), None, 0
        for h, covered in self.hashes(key):
            r = self.owner.get(h)
            if r is None:
                break  # chained: no later block can match either
            if r in live:
                best, length = r, covered
        return best, length

    def rank(self, key: str, loads: dict[Hashable, int]) -> list[Hashable]:
        """All replicas of `loads` (replica -> requests in flight), best first."""
        assert loads, "rank() needs at least one replica"
        least = min(loads.values())
        order = sorted(loads, key=lambda r: (loads[r], self.owned[r], random.random()))
        if key:
            best, length = self.longest_match(key, loads)
            if best is not None and length >= min(self.min_match, len(key)) and loads[best] - least <= self.imbalance:
                order.remove(best)
                order.insert(0, best)
        return order

    def record(self, key: str, replica: Hashable) -> None:
        """`replica` now holds key's prefix in its cache."""
        for h, _ in self.hashes(key):
            old = self.owner.get(h)
            if old is not None:
                self.owned[old] -= 1
            self.owner[h] = replica
            self.owner.move_to_end(h)
            self.owned[replica] += 1
        while len(self.owner) > self.max_blocks:
            _, r = self.owner.popitem(last=False)
            self.owned[r] -= 1

    def forget(self, replica: Hashable) -> None:
        """A replica that died: its cache went with it."""
        for h in [h for h, r in self.owner.items() if r == replica]:
            del self.owner[h]
        self.owned.pop(replica, None)
