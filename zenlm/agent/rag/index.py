"""Build and read an index directory: chunks (JSON lines), BM25 (bm25s files), dense vectors (.npy), meta.json.

build_index(docs_dir, out_dir) loads every readable file, chunks it with overlap, scores the chunks with
BM25 and embeds them, and writes:
    meta.json        format, embedding model id and dims, chunk size and overlap, counts
    chunks.jsonl     one {"id", "source", "start", "end", "text"} per chunk, in index order
    embeddings.npy   [chunks, dims] float32, unit rows
    bm25/            bm25s.BM25.save output over terms.terms(chunk text)
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from zenlm.agent.rag.chunking import CHUNK_CHARS, OVERLAP_CHARS, chunk_text
from zenlm.agent.rag.loaders import load_directory
from zenlm.agent.rag.terms import terms

FORMAT = 1
META, CHUNKS, VECTORS, BM25_DIR = "meta.json", "chunks.jsonl", "embeddings.npy", "bm25"


@dataclass(slots=True)
class Chunk:
    id: str  # "source#n", n counting the chunks of that source from 0
    source: str
    start: int  # character offsets into the source's extracted text
    end: int
    text: str


def chunk_documents(docs_dir: str | Path, size: int = CHUNK_CHARS, overlap: int = OVERLAP_CHARS) -> list[Chunk]:
    chunks = []
    for doc in load_directory(docs_dir):
        for n, span in enumerate(chunk_text(doc.text, size, overlap)):
            chunks.append(Chunk(f"{doc.source}#{n}", doc.source, span.start, span.end, doc.text[span.start:span.end]))
    return chunks


def build_index(docs_dir: str | Path, out_dir: str | Path, size: int = CHUNK_CHARS,
                overlap: int = OVERLAP_CHARS) -> dict:
    """Index every readable file under docs_dir into out_dir; returns meta.json's content."""
    import bm25s

    from zenlm.agent.rag.embed import Embedder

    logging.getLogger("bm25s").setLevel(logging.WARNING)  # it logs each build step at DEBUG
    chunks = chunk_documents(docs_dir, size, overlap)
    if not chunks:
        raise ValueError(f"{docs_dir}: no readable text files (txt, md, html, pdf, source) with any text")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    embedder = Embedder.load()
    vectors = embedder.embed([c.text for c in chunks])
    bm25 = bm25s.BM25()
    bm25.index([terms(c.text) for c in chunks], show_progress=False)
    bm25.save(str(out / BM25_DIR), show_progress=False)
    np.save(out / VECTORS, vectors)
    with open(out / CHUNKS, "w", encoding="utf-8") as f:
        for c in chunks:
            f.write(json.dumps(asdict(c), ensure_ascii=False) + "\n")
    meta = {"format": FORMAT, "embedding_model": embedder.model_id, "dims": int(vectors.shape[1]),
            "chunk_chars": size, "overlap_chars": overlap, "documents": len({c.source for c in chunks}),
            "chunks": len(chunks), "root": str(Path(docs_dir).resolve())}
    (out / META).write_text(json.dumps(meta, indent=2) + "\n")
    return meta


def read_meta(index_dir: str | Path) -> dict:
    path = Path(index_dir) / META
    if not path.is_file():
        raise ValueError(f"{index_dir}: not a RAG index (no {META}); build one with `zen rag index DIR --output INDEX`")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{index_dir}: index format {meta.get('format')!r}, this zenlm reads format {FORMAT}")
    return meta


def read_chunks(index_dir: str | Path) -> list[Chunk]:
    with open(Path(index_dir) / CHUNKS, encoding="utf-8") as f:
        return [Chunk(**json.loads(line)) for line in f if line.strip()]
