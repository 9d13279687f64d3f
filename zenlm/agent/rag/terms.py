"""Terms for BM25: lowercase word pieces, identifiers split at underscores and camelCase, stopwords dropped.

`read_file` gives "read", "file" and the whole "read_file", so a question in words and a query naming the
identifier both match. Numbers stay as they are. No stemming.
"""

from __future__ import annotations

import re

WORD = re.compile(r"[A-Za-z0-9_]+")
PIECE = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
STOPWORDS = frozenset(
    "a an and are as at be but by for if in into is it no not of on or such that the their then there these they "
    "this to was will with what which who how does do from can".split()
)


def terms(text: str) -> list[str]:
    out = []
    for word in WORD.findall(text):
        pieces = [p.lower() for p in PIECE.findall(word)]
        whole = word.lower().strip("_")
        out.extend(p for p in pieces if p not in STOPWORDS)
        if len(pieces) > 1 and whole:
            out.append(whole)
    return out
