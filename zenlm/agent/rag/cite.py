"""Retrieved chunks as a numbered context block, and the chat messages that ask for citations to it.

cite(hits) renders "[1] <text>" blocks in rank order; rag_system(hits) puts them under an instruction to
open the answer with the number of the document that holds it, [n] (a 0.5B model follows a citation-first
form far more reliably than "cite after each fact"), after the caller's own system message if there is one;
rag_messages(hits, question) adds the user's question. The chunk ids stay out of the block (a small model
copies them instead of answering); callers show them: sources(hits) for all, cited(answer, hits) for those
the answer names.
"""

from __future__ import annotations

import re

CITATION = re.compile(r"\[(\d+)\]")

INSTRUCTION = ("Answer from the numbered documents below. Begin your reply with the number of the document that "
               "holds the answer in square brackets, then answer in one sentence, for example: "
               "\"[4] The bridge is 40 metres long.\"")


def cite(hits) -> str:
    """The numbered context block: one entry per hit, in rank order, numbered from 1."""
    return "\n\n".join(f"[{n}] {h.text.strip()}" for n, h in enumerate(hits, start=1))


def rag_system(hits, system: str | None = None) -> str:
    block = f"{INSTRUCTION}\n\n# Documents\n\n{cite(hits)}"
    return f"{system}\n\n{block}" if system else block


def sources(hits) -> str:
    """The line shown under an answer: "[1] source#n  [2] ..."."""
    return "  ".join(f"[{n}] {h.chunk_id}" for n, h in enumerate(hits, start=1))


def cited(answer: str, hits) -> dict[int, str]:
    """{n: chunk id} for each [n] in the answer that numbers one of the hits, in order of first mention."""
    found: dict[int, str] = {}
    for m in CITATION.finditer(answer or ""):
        n = int(m.group(1))
        if 1 <= n <= len(hits) and n not in found:
            found[n] = hits[n - 1].chunk_id
    return found


def rag_messages(hits, question: str) -> list[dict]:
    return [{"role": "system", "content": rag_system(hits)}, {"role": "user", "content": question}]
