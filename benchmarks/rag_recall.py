"""Retrieval recall@5 of zen's RAG (BM25 alone, dense alone, fused) on questions made from the standard library.

The corpus is the Python standard library's top-level modules (this interpreter's own files), rewritten with
every docstring removed. Each question is the first sentence of a function's docstring; the right answer is
the chunk that holds that function's `def` line. So no question's words are copied into the corpus: this is
code search from a description, which tests the dense model and BM25 on the words the code itself uses.
--keep-docstrings indexes the files as they are (the easy case: the sentence is in the chunk).

    python benchmarks/rag_recall.py [--questions 200] [--modules 80] [--k 5] [--seed 0] [--keep-docstrings]
"""

from __future__ import annotations

import argparse
import ast
import json
import random
import re
import sysconfig
import tempfile
import time
from pathlib import Path

from zenlm.agent.rag import Retriever, build_index

MODES = ("bm25", "dense", "hybrid")


def first_sentence(doc: str) -> str | None:
    para = re.split(r"\n\s*\n", doc.strip(), maxsplit=1)[0]
    sentence = re.split(r"(?<=[.!?])\s", " ".join(para.split()), maxsplit=1)[0]
    return sentence if len(sentence.split()) >= 5 and not sentence.startswith((">>>", "(")) else None


def strip_docstrings(tree: ast.Module) -> None:
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(
                    first.value.value, str):
                node.body = node.body[1:] or [ast.Pass()]


def make_corpus(out: Path, modules: int, seed: int, keep_docstrings: bool) -> list[dict]:
    """Write the corpus files into out; return the candidate questions [{question, source, name}]."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if not p.name.startswith(("_", "test")))
    files = sorted(random.Random(seed).sample(files, min(modules, len(files))))
    questions = []
    for path in files:
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError):
            continue
        functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
        counts: dict[str, int] = {}
        for f in functions:
            counts[f.name] = counts.get(f.name, 0) + 1
        for f in functions:
            doc = ast.get_docstring(f)
            sentence = first_sentence(doc) if doc and counts[f.name] == 1 else None
            if sentence:
                questions.append({"question": sentence, "source": path.name, "name": f.name})
        if not keep_docstrings:
            strip_docstrings(tree)
        (out / path.name).write_text(ast.unparse(tree) if not keep_docstrings else path.read_text(encoding="utf-8"))
    return questions


def is_answer(hit, q: dict) -> bool:
    return hit.source == q["source"] and re.search(rf"\bdef {re.escape(q['name'])}\(", hit.text) is not None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--questions", type=int, default=200)
    ap.add_argument("--modules", type=int, default=80, help="how many stdlib modules form the corpus")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--keep-docstrings", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        docs, index = Path(tmp) / "docs", Path(tmp) / "index"
        docs.mkdir()
        candidates = make_corpus(docs, args.modules, args.seed, args.keep_docstrings)
        questions = random.Random(args.seed).sample(candidates, min(args.questions, len(candidates)))
        t = time.perf_counter()
        meta = build_index(docs, index)
        built = time.perf_counter() - t
        retriever = Retriever(index)
        found = {m: 0 for m in MODES}
        rr = {m: 0.0 for m in MODES}
        t = time.perf_counter()
        for q in questions:
            for mode in MODES:
                hits = retriever.search(q["question"], args.k, mode)
                rank = next((n for n, h in enumerate(hits, start=1) if is_answer(h, q)), None)
                found[mode] += rank is not None
                rr[mode] += 1 / rank if rank else 0.0
        searched = time.perf_counter() - t
    n = len(questions)
    result = {"corpus": f"{meta['documents']} stdlib modules, {meta['chunks']} chunks of {meta['chunk_chars']} chars "
                        f"(overlap {meta['overlap_chars']})" + (", docstrings kept" if args.keep_docstrings else
                                                               ", docstrings removed"),
              "questions": n, "k": args.k, "embedding_model": meta["embedding_model"],
              "recall": {m: round(found[m] / n, 3) for m in MODES}, "mrr": {m: round(rr[m] / n, 3) for m in MODES},
              "index_s": round(built, 1), "search_ms_per_query_all_modes": round(1000 * searched / n, 1)}
    print(f"{result['corpus']}; {n} questions")
    for m in MODES:
        print(f"  {m:7s} recall@{args.k} {result['recall'][m]:.3f}   MRR@{args.k} {result['mrr'][m]:.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
