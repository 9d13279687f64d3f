"""A real RAG answer on the default model: it names a fact it cannot know and cites the chunk that holds it.

The corpus is written here; the retrieved chunks are rotated so the answer's chunk is [2], not [1], so a
citation of the first document by habit fails. One short greedy generation.
"""

import re

from zenlm.agent.rag import Retriever, build_index, rag_messages
from zenlm.engine.sampling import SamplingParams

QUESTION = "Who is the lighthouse keeper of Velmora harbor?"


def write_docs(docs):
    """Three small documents; only harbor.txt holds the answer to QUESTION."""
    docs.mkdir()
    (docs / "harbor.txt").write_text("The lighthouse keeper of Velmora harbor is named Orsolya Brandt. She has "
                                     "kept the light since 1987.\n")
    (docs / "kitchen.md").write_text("# Kitchen\n\nBread rises faster in a warm kitchen because yeast is more "
                                     "active at higher temperatures.\n")
    (docs / "bicycles.txt").write_text("Bicycles have two wheels and a chain that drives the rear wheel. Most road "
                                       "bikes weigh about eight kilograms.\n")
    return docs


def test_answer_cites_the_chunk_with_the_fact(default_llm, tmp_path):
    docs = write_docs(tmp_path / "docs")
    build_index(docs, tmp_path / "index")
    hits = Retriever(tmp_path / "index").search(QUESTION, k=3)
    assert hits[0].source == "harbor.txt"
    hits = [hits[1], hits[0], hits[2]]  # the fact is in document [2]
    answer = default_llm.chat(rag_messages(hits, QUESTION), SamplingParams(temperature=0, max_tokens=40)).text
    assert "Orsolya Brandt" in answer, answer
    cited = {int(n) for n in re.findall(r"\[(\d+)\]", answer)}
    assert cited, f"no [n] citation in {answer!r}"
    assert all(1 <= n <= len(hits) and "Orsolya Brandt" in hits[n - 1].text for n in cited), (cited, answer)
