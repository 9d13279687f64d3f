"""Search an index: BM25 and dense rankings, fused with reciprocal-rank fusion (or either one alone).

Retriever(index_dir).search(query, k, mode="hybrid") -> [Hit(chunk_id, text, source, score)], best first.
open_docs(path) takes an index directory or a documents directory (indexed on the spot, into a temp dir).
Each ranking looks at the top `depth` candidates (default 50) before fusion. BM25 candidates scoring 0 (no
shared term) are dropped. The score of a hybrid hit is its RRF score; of a single mode, that ranking's score.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from zenlm.agent.rag.fusion import rrf
from zenlm.agent.rag.index import BM25_DIR, VECTORS, read_chunks, read_meta
from zenlm.agent.rag.terms import terms

MODES = ("hybrid", "bm25", "dense")
DEPTH = 50


@dataclass(slots=True)
class Hit:
    chunk_id: str
    text: str
    source: str
    score: float


class Retriever:
    """An index read into memory (chunks, vectors, BM25) with the embedding model."""

    def __init__(self, index_dir: str | Path):
        import bm25s

        from zenlm.agent.rag.embed import Embedder

        self.path = Path(index_dir)
        self._tmp = None  # open_docs's temporary index directory, if any
        self.meta = read_meta(self.path)
        self.chunks = read_chunks(self.path)
        self.vectors = np.load(self.path / VECTORS)
        self.bm25 = bm25s.BM25.load(str(self.path / BM25_DIR), show_progress=False)
        self.embedder = Embedder.load()
        if self.meta["embedding_model"] != self.embedder.model_id:
            raise ValueError(f"{index_dir} was embedded with {self.meta['embedding_model']}; this zenlm embeds with "
                             f"{self.embedder.model_id}: rebuild the index")
        assert len(self.chunks) == len(self.vectors), "chunks.jsonl and embeddings.npy disagree"

    def bm25_ranking(self, query: str, depth: int = DEPTH) -> list[tuple[int, float]]:
        words = terms(query)
        if not words:
            return []
        ids, scores = self.bm25.retrieve([words], k=min(depth, len(self.chunks)), show_progress=False)
        return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if s > 0]

    def dense_ranking(self, query: str, depth: int = DEPTH) -> list[tuple[int, float]]:
        q = self.embedder.embed([query])[0]
        if not q.any():
            return []
        sims = self.vectors @ q
        top = np.argsort(-sims, kind="stable")[:depth]
        return [(int(i), float(sims[i])) for i in top]

    def search(self, query: str, k: int = 5, mode: str = "hybrid") -> list[Hit]:
        if not query.strip():
            raise ValueError("the query is empty")
        if k < 1:
            raise ValueError(f"k must be at least 1, got {k}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
        if mode == "bm25":
            ranked = self.bm25_ranking(query)
        elif mode == "dense":
            ranked = self.dense_ranking(query)
        else:
            depth = max(DEPTH, k)
            lists = [[i for i, _ in self.bm25_ranking(query, depth)], [i for i, _ in self.dense_ranking(query, depth)]]
            ranked = rrf(lists)
        return [self._hit(i, s) for i, s in ranked[:k]]

    def _hit(self, i: int, score: float) -> Hit:
        c = self.chunks[i]
        return Hit(c.id, c.text, c.source, score)


def open_docs(path: str | Path) -> Retriever:
    """A Retriever over `path`: an index directory as it is, or a documents directory indexed now into a
    temporary directory that lives as long as the Retriever."""
    import tempfile

    from zenlm.agent.rag.index import META, build_index

    path = Path(path)
    if (path / META).is_file():
        return Retriever(path)
    tmp = tempfile.TemporaryDirectory(prefix="zen-rag-")
    build_index(path, tmp.name)
    retriever = Retriever(tmp.name)
    retriever._tmp = tmp  # removed when the retriever is collected
    return retriever
