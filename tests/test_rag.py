"""RAG without the language model: loaders (txt, md, html, pdf, source), chunking with overlap, BM25 terms,
reciprocal-rank fusion, the bundled embedding model (offline), index files, Retriever, cite, `zen rag`."""

import json
import subprocess
import sys

import numpy as np
import pytest

from zenlm.agent.rag import Retriever, build_index, cite, open_docs, rag_messages
from zenlm.agent.rag.chunking import chunk_text
from zenlm.agent.rag.embed import DIMS, MODEL_ID, Embedder
from zenlm.agent.rag.fusion import rrf
from zenlm.agent.rag.index import read_chunks
from zenlm.agent.rag.loaders import html_text, load_directory, load_file
from zenlm.agent.rag.terms import terms
from zenlm.cli import main

FACT = "The Quindle reactor on planet Zorblax runs on purple salt harvested from the Vantor marshes."


def pdf_bytes(lines: list[str]) -> bytes:
    """A one-page PDF whose content stream shows `lines` in Helvetica, with a correct xref table."""
    ops = ["BT /F1 12 Tf 72 720 Td 14 TL"] + [f"({s}) Tj T*" for s in lines] + ["ET"]
    stream = "\n".join(ops).encode()
    objects = [b"<< /Type /Catalog /Pages 2 0 R >>",
               b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
               b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 5 0 R >> >> "
               b"/Contents 4 0 R >>",
               b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
               b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"]
    out, offsets = bytearray(b"%PDF-1.4\n"), []
    for n, obj in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + obj + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return bytes(out)


@pytest.fixture(scope="module")
def docs(tmp_path_factory):
    d = tmp_path_factory.mktemp("docs")
    (d / "reactor.md").write_text(f"# Reactors\n\n{FACT}\n")
    (d / "pets.html").write_text("<html><head><title>Pets</title><style>p {color: red}</style></head><body>"
                                 "<p>Cats like fish &amp; warm milk.</p><script>var hidden = 1;</script></body></html>")
    (d / "notes.txt").write_text("Bicycles have two wheels and a chain that drives the rear wheel.\n")
    (d / "code.py").write_text("def parse_config_file(path):\n    return open(path).read().split('=')\n")
    (d / "manual.pdf").write_bytes(pdf_bytes(["The Hollow Lantern opens at dawn.", "Tickets cost nine pebbles."]))
    (d / "image.png").write_bytes(b"\x89PNG not text")  # skipped: unknown suffix
    (d / ".hidden").mkdir()
    (d / ".hidden" / "secret.txt").write_text("never indexed")
    (d / "empty.txt").write_text("  \n")
    return d


@pytest.fixture(scope="module")
def index(docs, tmp_path_factory):
    out = tmp_path_factory.mktemp("index")
    build_index(docs, out)
    return out


def test_loaders_read_each_kind(docs):
    loaded = {d.source: d.text for d in load_directory(docs)}
    assert sorted(loaded) == ["code.py", "manual.pdf", "notes.txt", "pets.html", "reactor.md"]
    assert FACT in loaded["reactor.md"]
    assert "Cats like fish & warm milk." in loaded["pets.html"]
    assert "hidden" not in loaded["pets.html"] and "color" not in loaded["pets.html"]
    assert "The Hollow Lantern opens at dawn." in loaded["manual.pdf"]
    assert "Tickets cost nine pebbles." in loaded["manual.pdf"]
    assert "def parse_config_file" in loaded["code.py"]


def test_loader_errors(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        load_directory(tmp_path / "missing")
    (tmp_path / "x.bin").write_bytes(b"\0")
    with pytest.raises(ValueError, match="unsupported file type"):
        load_file(tmp_path / "x.bin")


def test_html_text_keeps_blocks_apart():
    assert html_text("<h1>Title</h1><p>one&nbsp;two</p><ul><li>a</li><li>b</li></ul>").split("\n") == \
        ["Title", "", "one\xa0two", "", "a", "", "b"]


def test_chunks_cover_the_text_and_overlap():
    words = [f"word{i}" for i in range(3000)]
    text = "\n\n".join(" ".join(words[i:i + 40]) for i in range(0, 3000, 40))
    spans = chunk_text(text, size=500, overlap=100)
    assert len(spans) > 10
    assert spans[0].start == 0 and spans[-1].end == len(text)
    for a, b in zip(spans, spans[1:]):
        assert 0 < b.start < a.end, "consecutive chunks overlap"
        assert a.end - b.start <= 100 + 20
        assert b.end - b.start <= 500
        assert text[b.start - 1] in " \n", "chunks start at a word"
    for w in words:  # every word is whole in some chunk
        assert any(w in text[s.start:s.end].split() for s in spans)


def test_chunking_edge_cases():
    assert chunk_text("") == []
    assert [(s.start, s.end) for s in chunk_text("short text")] == [(0, 10)]
    assert all(s.end - s.start <= 7 for s in chunk_text("x" * 50, size=7, overlap=2))
    with pytest.raises(ValueError, match="overlap"):
        chunk_text("abc", size=10, overlap=10)
    with pytest.raises(ValueError, match="chunk size"):
        chunk_text("abc", size=0, overlap=0)


def test_terms_split_identifiers():
    assert terms("The parse_config_file reads HTTPServer config") == \
        ["parse", "config", "file", "parse_config_file", "reads", "http", "server", "httpserver", "config"]


def test_rrf_sums_reciprocal_ranks():
    fused = rrf([[3, 1, 2], [1, 4]], k=60)
    assert [item for item, _ in fused] == [1, 3, 4, 2]
    assert fused[0][1] == pytest.approx(1 / 62 + 1 / 61)
    assert fused[1][1] == pytest.approx(1 / 61)


def test_embedder_vectors():
    e = Embedder.load()
    v = e.embed(["the cat sat on the mat", "a kitten rested on a rug", "quarterly bond yields fell sharply"])
    assert v.shape == (3, DIMS) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    assert v[0] @ v[1] > v[0] @ v[2] and v[0] @ v[1] > v[1] @ v[2]
    cut = e.embed(["the cat sat on the mat"], dims=64)
    assert cut.shape == (1, 64) and np.linalg.norm(cut) == pytest.approx(1, abs=1e-5)
    assert np.allclose(cut[0], v[0, :64] / np.linalg.norm(v[0, :64]), atol=1e-5)
    with pytest.raises(ValueError, match="dimensions"):
        e.embed(["x"], dims=DIMS + 1)


def test_embedder_loads_with_no_network():
    """Sockets raise in the child: the weights and tokenizer must come from the installed wheel."""
    code = ("import socket\n"
            "def no(*a, **k): raise OSError('network used')\n"
            "socket.socket.connect = no; socket.create_connection = no; socket.getaddrinfo = no\n"
            "from zenlm.agent.rag.embed import Embedder\n"
            "print(Embedder.load().embed(['offline']).shape)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", **_pythonpath()})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"(1, {DIMS})"


def _pythonpath():
    import os

    return {k: os.environ[k] for k in ("PYTHONPATH", "HOME") if k in os.environ}


def test_index_files(index):
    meta = json.loads((index / "meta.json").read_text())
    assert meta["embedding_model"] == MODEL_ID and meta["dims"] == DIMS and meta["documents"] == 5
    chunks = read_chunks(index)
    assert meta["chunks"] == len(chunks) == np.load(index / "embeddings.npy").shape[0]
    assert {c.source for c in chunks} == {"code.py", "manual.pdf", "notes.txt", "pets.html", "reactor.md"}
    assert all(c.id == f"{c.source}#0" for c in chunks)


@pytest.mark.parametrize("mode", ["hybrid", "bm25", "dense"])
def test_search_finds_the_fact(index, mode):
    hits = Retriever(index).search("What does the Quindle reactor run on?", k=3, mode=mode)
    assert hits[0].chunk_id == "reactor.md#0" and hits[0].source == "reactor.md"
    assert FACT in hits[0].text
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_search_other_kinds(index):
    r = Retriever(index)
    assert r.search("how much do tickets cost", k=1)[0].source == "manual.pdf"
    assert r.search("what do cats like to drink", k=1)[0].source == "pets.html"
    assert r.search("parse config file", k=1, mode="bm25")[0].source == "code.py"
    assert r.search("zzqx unknownword", k=5, mode="bm25") == []


def test_search_errors(index, tmp_path):
    r = Retriever(index)
    with pytest.raises(ValueError, match="empty"):
        r.search("  ")
    with pytest.raises(ValueError, match="k must"):
        r.search("x", k=0)
    with pytest.raises(ValueError, match="mode"):
        r.search("x", mode="sparse")
    with pytest.raises(ValueError, match="not a RAG index"):
        Retriever(tmp_path)
    with pytest.raises(ValueError, match="no readable text"):
        build_index(tmp_path, tmp_path / "out")


def test_cite_numbers_the_hits(index):
    hits = Retriever(index).search("reactor fuel", k=2)
    block = cite(hits)
    assert block == f"[1] {hits[0].text.strip()}\n\n[2] {hits[1].text.strip()}"
    system, user = rag_messages(hits, "What fuel?")
    assert system["role"] == "system" and block in system["content"] and "[1]" in system["content"]
    assert user == {"role": "user", "content": "What fuel?"}


def test_open_docs_indexes_a_directory(docs, index):
    r = open_docs(docs)
    assert r.path != docs and (r.path / "meta.json").is_file()
    assert r.search("Vantor marshes salt", k=1)[0].chunk_id == "reactor.md#0"
    assert open_docs(index).path == index


def test_cli_index_and_query(docs, tmp_path, capsys):
    assert main(["rag", "index", str(docs), "--output", str(tmp_path / "idx"), "--chunk-chars", "300"]) == 0
    assert "indexed" in capsys.readouterr().err
    assert main(["rag", "query", str(tmp_path / "idx"), "Quindle reactor fuel", "--k", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["mode"] == "hybrid" and [h["rank"] for h in out["hits"]] == [1, 2]
    assert out["hits"][0]["chunk_id"] == "reactor.md#0" and FACT in out["hits"][0]["text"]
    assert main(["rag", "query", str(tmp_path / "idx"), "Quindle reactor fuel", "--k", "1"]) == 0
    assert capsys.readouterr().out.startswith(f"[1] # Reactors\n\n{FACT}")
    assert main(["rag", "query", str(tmp_path / "nothing"), "q"]) == 1
    assert "not a RAG index" in capsys.readouterr().err
    assert main(["rag", "index", str(docs), "--output", str(tmp_path / "bad"), "--overlap-chars", "2000"]) == 1
    assert "overlap" in capsys.readouterr().err


class RecordingLLM:
    """Stands in for the model in `zen chat --docs`: records the messages it gets, answers with a citation."""

    path = __import__("pathlib").Path("recording")

    def __init__(self):
        self.calls = []

    def stream_chat(self, messages, params):
        self.calls.append(messages)
        yield "It runs on purple salt [1]."


def test_chat_docs_puts_numbered_chunks_in_the_system_message(docs, monkeypatch, capsys):
    import zenlm.cli.chat as chat

    llm = RecordingLLM()
    lines = iter(["What does the Quindle reactor run on?", "And what do cats like?"])

    def fake_input(prompt):
        try:
            return next(lines)
        except StopIteration:
            raise EOFError from None

    monkeypatch.setattr(chat, "load_llm", lambda args: llm)
    monkeypatch.setattr("builtins.input", fake_input)
    assert main(["chat", "--docs", str(docs), "--k", "2", "--system", "Be brief."]) == 0
    out = capsys.readouterr()
    assert out.out.count("It runs on purple salt [1].") == 2
    assert "sources: [1] reactor.md#0  [2] " in out.err and "sources: [1] pets.html#0" in out.err
    first, second = llm.calls
    assert first[0]["role"] == "system" and first[0]["content"].startswith("Be brief.\n\n")
    assert f"\n[1] # Reactors\n\n{FACT}\n\n[2] " in first[0]["content"] and "\n[3] " not in first[0]["content"]
    assert first[1:] == [{"role": "user", "content": "What does the Quindle reactor run on?"}]
    assert "\n[1] Cats like fish & warm milk." in second[0]["content"]  # retrieved again for the new turn
    assert [m["role"] for m in second[1:]] == ["user", "assistant", "user"]
