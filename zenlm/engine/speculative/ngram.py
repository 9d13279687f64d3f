"""N-gram prompt lookup: draft the tokens that followed the latest earlier occurrence of the context's tail.

For n from max_n down to min_n, look for the last n tokens (prompt + output so far) earlier in the same
sequence; the first n with a match drafts the (up to k) tokens that followed it. No model, no state:
strong where the output copies its input (code edits, RAG answers), silent where nothing repeats.
"""

from __future__ import annotations

from array import array

WIDTH = array("i").itemsize  # bytes per token id in the searched buffer


class NgramProposer:
    deterministic = True  # a point-mass q: the rejection sampler needs no probabilities

    def __init__(self, max_n: int = 4, min_n: int = 1):
        if not 1 <= min_n <= max_n:
            raise ValueError(f"n-gram sizes need 1 <= min_n <= max_n, got min_n={min_n}, max_n={max_n}")
        self.max_n, self.min_n = max_n, min_n

    def propose(self, seq, k: int) -> tuple[list[int], None]:
        return lookup(seq.all_ids, k, self.max_n, self.min_n), None

    def release(self, live: set[int]) -> None:
        """Nothing is kept per sequence."""


def lookup(ids: list[int], k: int, max_n: int = 4, min_n: int = 1) -> list[int]:
    """Up to k tokens that followed the latest earlier match of the longest matching tail n-gram; [] if none."""
    L = len(ids)
    if L < 2 or k < 1:
        return []
    buf = array("i", ids).tobytes()  # bytes.rfind is a C search; hits off a WIDTH boundary are skipped
    for n in range(min(max_n, L - 1), min_n - 1, -1):
        pattern, end = buf[-n * WIDTH:], (L - 1) * WIDTH  # a match ends before the last token
        pos = buf.rfind(pattern, 0, end)
        while pos > 0 and pos % WIDTH:
            pos = buf.rfind(pattern, 0, pos + len(pattern) - 1)
        if pos >= 0 and pos % WIDTH == 0:
            start = pos // WIDTH + n
            return ids[start:start + k]
    return []
