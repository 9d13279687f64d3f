"""Agent(..., docs=INDEX): the retrieved chunks go into the system message, numbered, with the citation
instruction; the result lists them and maps each [n] the answer names to its chunk. A scripted model checks
the plumbing; one short greedy run on the default model checks that the answer cites the chunk with the fact."""

import pytest
from agent_script import Script
from test_rag_answer import QUESTION, write_docs

from zenlm.agent import Agent
from zenlm.agent.rag import Retriever, build_index
from zenlm.agent.rag.cite import INSTRUCTION


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("docs")
    docs = write_docs(root / "docs")
    build_index(docs, root / "index")
    return root / "index"


def test_chunks_numbered_in_the_system_message_and_citations_mapped(index):
    script = Script(["[1] The keeper is Orsolya Brandt [1], see also [9]."])
    with Agent(script, docs=index, docs_k=2, system="Be brief.") as agent:
        result = agent.run(QUESTION)
    system = script.requests[0]["messages"][0]
    assert system["role"] == "system" and system["content"].startswith("Be brief.\n\n" + INSTRUCTION)
    assert "[1] The lighthouse keeper of Velmora harbor is named Orsolya Brandt." in system["content"]
    assert "[3]" not in system["content"]  # docs_k=2
    assert [h.chunk_id for h in result.sources][0] == "harbor.txt#0" and len(result.sources) == 2
    assert result.citations == {1: "harbor.txt#0"}  # [9] numbers no chunk
    assert result.messages[0] == system


def test_docs_without_a_system_message_and_a_retriever_object(index):
    script = Script(["Bread rises faster when warm [1]."])
    agent = Agent(script, docs=Retriever(index), docs_k=1)
    result = agent.run([{"role": "user", "content": "Why does bread rise faster in a warm kitchen?"}])
    assert [m["role"] for m in script.requests[0]["messages"]] == ["system", "user"]
    assert result.citations == {1: "kitchen.md#0"}


def test_docs_errors(index, tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        Agent(Script([]), docs=tmp_path / "missing")
    with pytest.raises(ValueError, match="docs_k"):
        Agent(Script([]), docs=index, docs_k=0)


def test_real_answer_cites_the_chunk_with_the_fact(default_llm, index):
    with Agent(default_llm, docs=index, docs_k=3, max_tokens=60, turn_tokens=60) as agent:
        result = agent.run(QUESTION)
    assert "Orsolya Brandt" in result.answer, result.answer
    assert result.citations, f"no [n] citation in {result.answer!r}"
    assert set(result.citations.values()) == {"harbor.txt#0"}, (result.citations, result.answer)
