"""`zen rag index DIR --output INDEX` builds a retrieval index; `zen rag query INDEX "question"` searches it.

query prints the hits as the numbered context block a prompt would get (cite()), or with --json one JSON
object {"query", "mode", "hits": [{"rank", "chunk_id", "source", "score", "text"}]}.
"""

from __future__ import annotations

import json
import sys


def cmd_rag_index(args) -> int:
    from zenlm.agent.rag import build_index

    meta = build_index(args.dir, args.output, args.chunk_chars, args.overlap_chars)
    print(f"indexed {meta['chunks']} chunks from {meta['documents']} files into {args.output} "
          f"(BM25 + {meta['embedding_model']})", file=sys.stderr)
    return 0


def cmd_rag_query(args) -> int:
    from zenlm.agent.rag import Retriever, cite

    hits = Retriever(args.index).search(args.question, args.k, args.mode)
    if args.json:
        rows = [{"rank": n, "chunk_id": h.chunk_id, "source": h.source, "score": h.score, "text": h.text}
                for n, h in enumerate(hits, start=1)]
        print(json.dumps({"query": args.question, "mode": args.mode, "hits": rows}, ensure_ascii=False))
    else:
        print(cite(hits) if hits else "(no matching chunks)")
    return 0


def add(sub) -> None:
    rag = sub.add_parser("rag", help="retrieval over your documents: build an index, query it")
    rsub = rag.add_subparsers(dest="rag_command", required=True)
    i = rsub.add_parser("index", help="index txt, md, html, pdf and source files under DIR")
    i.add_argument("dir")
    i.add_argument("--output", "-o", required=True, help="the index directory to write")
    i.add_argument("--chunk-chars", type=int, default=1000, help="chunk size in characters (default 1000)")
    i.add_argument("--overlap-chars", type=int, default=200, help="overlap between chunks (default 200)")
    i.set_defaults(func=cmd_rag_index)
    q = rsub.add_parser("query", help="the chunks of INDEX that best answer a question")
    q.add_argument("index")
    q.add_argument("question")
    q.add_argument("--k", type=int, default=5, help="how many chunks (default 5)")
    q.add_argument("--mode", choices=("hybrid", "bm25", "dense"), default="hybrid",
                   help="BM25 and dense fused with reciprocal-rank fusion (default), or either alone")
    q.add_argument("--json", action="store_true", help="one JSON object on stdout")
    q.set_defaults(func=cmd_rag_query)
