"""Overlapping chunks of a text, cut at paragraph, line or word boundaries where it can.

chunk_text(text, size, overlap) returns Spans (start, end) in characters: each at most `size` long, each
starting `overlap` characters or fewer before the previous one ended, so a fact cut by a boundary is whole
in one of the two. Sizes are in characters (about four per token for English), not model tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

CHUNK_CHARS = 1000
OVERLAP_CHARS = 200


@dataclass(slots=True, frozen=True)
class Span:
    start: int
    end: int


def _cut(text: str, start: int, limit: int) -> int:
    """The best end in (start, limit]: after a blank line, else a newline, else a space, else limit."""
    if limit >= len(text):
        return len(text)
    floor = start + (limit - start) // 2  # never cut in the first half: chunks stay near full size
    for sep in ("\n\n", "\n", " "):
        at = text.rfind(sep, floor, limit)
        if at > start:
            return at + len(sep)
    return limit


def _resume(text: str, start: int, end: int, overlap: int) -> int:
    """Where the next chunk starts: about `overlap` before `end`, moved forward to a word start."""
    at = max(start + 1, end - overlap)
    if at >= end:
        return end
    space = text.find(" ", at, end)
    nl = text.find("\n", at, end)
    marks = [m for m in (space, nl) if m != -1]
    return min(marks) + 1 if marks else at


def chunk_text(text: str, size: int = CHUNK_CHARS, overlap: int = OVERLAP_CHARS) -> list[Span]:
    if size <= 0:
        raise ValueError(f"chunk size must be positive, got {size}")
    if not 0 <= overlap < size:
        raise ValueError(f"overlap must be in 0..{size - 1}, got {overlap}")
    spans: list[Span] = []
    start = 0
    while start < len(text):
        while start < len(text) and text[start] in " \n\t\r":  # no chunk opens with whitespace
            start += 1
        if start >= len(text):
            break
        end = _cut(text, start, start + size)
        spans.append(Span(start, end))
        if end >= len(text):
            break
        start = _resume(text, start, end, overlap)
    return spans
