"""Retrieved chunks as a numbered context block, and the chat messages that ask for citations to it.

cite(hits) renders "[1] (source: a.md#0)\n<text>" blocks; rag_messages(hits, question) gives a system
message holding them plus the instruction to cite [n], and the user's question.
"""

from __future__ import annotations

INSTRUCTION = ("Answer the question using the numbered documents below. After each fact you use, cite its document "
               "number in square brackets, like [1]. If the documents do not contain the answer, say so.")


def cite(hits) -> str:
    """The numbered context block: one entry per hit, in rank order, numbered from 1."""
    return "\n\n".join(f"[{n}] (source: {h.chunk_id})\n{h.text.strip()}" for n, h in enumerate(hits, start=1))


def rag_system(hits) -> str:
    return f"{INSTRUCTION}\n\n# Documents\n\n{cite(hits)}"


def rag_messages(hits, question: str) -> list[dict]:
    return [{"role": "system", "content": rag_system(hits)}, {"role": "user", "content": question}]
