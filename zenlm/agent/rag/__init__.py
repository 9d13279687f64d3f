"""RAG: load documents, chunk them with overlap, index them (BM25 + dense), retrieve with rank fusion, cite.

build_index(DIR, OUT) writes an index directory; Retriever(OUT).search(query, k) returns Hits; cite(hits)
renders them as a numbered context block ([1], [2], ...) for a prompt. Heavy imports (bm25s, the embedding
model, pypdf) happen inside the functions that need them; importing this package costs nothing.
"""

from zenlm.agent.rag.cite import cite, cited, rag_messages, rag_system, sources
from zenlm.agent.rag.index import build_index
from zenlm.agent.rag.retriever import Hit, Retriever, open_docs

__all__ = ["Hit", "Retriever", "build_index", "cite", "cited", "open_docs", "rag_messages", "rag_system", "sources"]
