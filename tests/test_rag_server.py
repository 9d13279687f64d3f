"""/v1/embeddings on a real zen serve app (tiny random chat model) over loopback, driven by the openai client:
OpenAI's response shape, float and base64 encodings, `dimensions`, the API key, bad input, and that building
the app does not load the embedding model."""

import subprocess
import sys

import httpx
import numpy as np
import openai
import pytest
import tiny_server

from zenlm.agent.rag.embed import DIMS, MODEL_ID, Embedder


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    llm = tiny_server.tiny_llm(tmp_path_factory.mktemp("tiny"))
    running = tiny_server.Running(tiny_server.app(llm, api_key="k3y"))
    yield running
    running.stop()
    llm.close()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="k3y")


def test_embeddings_match_the_model(client):
    texts = ["the cat sat on the mat", "a kitten rested on a rug", "bond yields fell"]
    res = client.embeddings.create(model=MODEL_ID, input=texts)  # the client asks for base64 by default
    assert res.object == "list" and res.model == MODEL_ID
    assert [d.index for d in res.data] == [0, 1, 2] and all(d.object == "embedding" for d in res.data)
    got = np.array([d.embedding for d in res.data], np.float32)
    assert got.shape == (3, DIMS)
    assert np.allclose(got, Embedder.load().embed(texts), atol=1e-6)
    assert res.usage.prompt_tokens == res.usage.total_tokens > 6


def test_float_encoding_and_dimensions(server):
    r = httpx.post(server.url + "/v1/embeddings", headers={"Authorization": "Bearer k3y"},
                   json={"model": "tiny", "input": "one string", "encoding_format": "float", "dimensions": 64})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["data"]) == 1 and len(body["data"][0]["embedding"]) == 64
    assert np.linalg.norm(body["data"][0]["embedding"]) == pytest.approx(1, abs=1e-5)
    assert np.allclose(body["data"][0]["embedding"], Embedder.load().embed(["one string"], 64)[0], atol=1e-6)


@pytest.mark.parametrize("payload, status, param", [
    ({"input": [1, 2, 3]}, 400, "input"),
    ({"input": []}, 400, "input"),
    ({"input": ["ok", ""]}, 400, "input"),
    ({"input": "x", "dimensions": DIMS + 1}, 400, "dimensions"),
    ({"input": "x", "model": "text-embedding-3-small"}, 404, "model"),
])
def test_bad_requests(server, payload, status, param):
    r = httpx.post(server.url + "/v1/embeddings", headers={"Authorization": "Bearer k3y"}, json=payload)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param


def test_api_key_is_required(server):
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="wrong").embeddings.create(model=MODEL_ID, input="x")


def test_app_does_not_load_the_embedding_model(tmp_path):
    code = ("import pathlib, sys, tiny_server\n"
            "llm = tiny_server.tiny_llm(pathlib.Path(sys.argv[1]))\n"
            "tiny_server.app(llm)\n"
            "print([m for m in ('wordllama', 'bm25s', 'zenlm.agent.rag.embed') if m in sys.modules])\n"
            "llm.close()\n")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120,
                         cwd=str(tmp_path), env=_env())
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _env():
    import os
    from pathlib import Path

    tests = str(Path(__file__).resolve().parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [tests, os.environ.get("PYTHONPATH")]))}
