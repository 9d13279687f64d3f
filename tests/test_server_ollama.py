"""Ollama parity on a tiny random model: curl's `-d` form (no JSON Content-Type) works, /api/tags, /api/show,
/api/ps and /api/version answer in Ollama's shapes, and the real default GGUF reports Q4_K_M as Ollama would."""

import json
import shutil
import subprocess

import httpx
import pytest
import tiny_server

from zenlm.server import model_info
from zenlm.weights.file_info import FILE_TYPES, file_info

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "stream": False,
        "options": {"num_predict": 3, "temperature": 0}}


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    llm = tiny_server.tiny_llm(tmp_path_factory.mktemp("tiny"))
    llm.generation_config = {**llm.generation_config, "temperature": 0.7, "repetition_penalty": 1.05}
    running = tiny_server.Running(tiny_server.app(llm))
    yield running.url
    running.stop()
    llm.close()


@pytest.mark.parametrize("headers", [{}, {"Content-Type": "application/x-www-form-urlencoded"},
                                     {"Content-Type": "text/plain"}])
def test_chat_and_generate_read_json_whatever_the_content_type(url, headers):
    r = httpx.post(url + "/api/chat", content=json.dumps(CHAT).encode(), headers=headers, timeout=60)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["done"] is True and body["message"]["role"] == "assistant" and body["eval_count"] <= 3
    gen = {"model": "tiny", "prompt": "ab", "raw": True, "stream": False, "options": {"num_predict": 2}}
    r = httpx.post(url + "/api/generate", content=json.dumps(gen).encode(), headers=headers, timeout=60)
    assert r.status_code == 200 and r.json()["done"] is True


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs the curl command")
def test_the_curl_command_from_ollamas_docs(url):
    out = subprocess.run(["curl", "-s", url + "/api/chat", "-d", json.dumps(CHAT)], capture_output=True, text=True,
                         timeout=60, check=True).stdout
    assert json.loads(out)["done"] is True
    streamed = subprocess.run(["curl", "-s", url + "/api/chat", "-d", json.dumps({**CHAT, "stream": True})],
                              capture_output=True, text=True, timeout=60, check=True).stdout
    lines = [json.loads(x) for x in streamed.splitlines() if x]
    assert lines[-1]["done"] is True and all(not x["done"] for x in lines[:-1])


def test_bad_json_is_still_a_clear_400(url):
    r = httpx.post(url + "/api/chat", content=b"{not json")
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    r = httpx.post(url + "/api/chat", content=b"[1, 2]")
    assert r.status_code == 400 and r.json() == {"error": "the request body must be a JSON object"}


def test_a_non_text_content_part_is_a_400_not_a_500(url):  # found by tests/test_server_fuzz.py
    parts = [{"type": "image_url", "image_url": {"url": "x"}}]
    r = httpx.post(url + "/api/chat", json={**CHAT, "messages": [{"role": "user", "content": parts}]})
    assert r.status_code == 400 and "only text content parts are supported" in r.json()["error"]


def test_tags_report_the_files_quantization_and_size(url):
    tags = httpx.get(url + "/api/tags").json()
    (m,) = tags["models"]
    assert m["name"] == m["model"] == "tiny" and m["size"] > 0 and len(m["digest"]) == 64
    assert m["details"] == {"parent_model": "", "format": "safetensors", "family": "qwen2", "families": ["qwen2"],
                            "parameter_size": "93.50K", "quantization_level": "F32"}
    assert m["modified_at"].endswith("Z")


def test_show(url):
    r = httpx.post(url + "/api/show", json={"model": "tiny"})
    assert r.status_code == 200, r.text
    show = r.json()
    assert {"modelfile", "parameters", "template", "details", "model_info", "capabilities"} <= set(show)
    assert show["details"]["quantization_level"] == "F32" and show["model_info"]["hidden_size"] == 64
    assert "FROM " in show["modelfile"]
    params = dict(line.split(None, 1) for line in show["parameters"].splitlines())
    assert params == {"temperature": "0.7", "repeat_penalty": "1.05"}
    assert httpx.post(url + "/api/show", json={"name": "tiny:latest"}).status_code == 200  # the older field
    missing = httpx.post(url + "/api/show", json={"model": "nope"})
    assert missing.status_code == 404 and "nope" in missing.json()["error"]
    assert httpx.post(url + "/api/show", json={}).json() == {"error": "model is required"}


def test_ps_and_version(url):
    (m,) = httpx.get(url + "/api/ps").json()["models"]
    assert m["name"] == "tiny" and m["size"] > 0 and m["size_vram"] == 0 and m["expires_at"]
    assert m["details"]["parameter_size"] == "93.50K"
    version = httpx.get(url + "/api/version").json()["version"]
    assert [int(x) for x in version.split(".")] >= [0, 1, 0]


def test_parameter_sizes_as_ollama_prints_them():
    assert model_info.parameter_size(494_032_768) == "494.03M"
    assert model_info.parameter_size(7_615_616_512) == "7.6B"
    assert model_info.parameter_size(93_504) == "93.50K"
    assert FILE_TYPES[15] == "Q4_K_M" and FILE_TYPES[2] == "Q4_0"


def test_the_default_gguf_reports_q4_k_m(gguf_path):
    class Served:  # what describe() reads off the LLM: its file's own details
        @staticmethod
        def file_info():
            return file_info(gguf_path)

    info = model_info.describe(Served)
    assert info.details["format"] == "gguf" and info.details["quantization_level"] == "Q4_K_M"
    assert info.details["family"] == "qwen2" and info.details["parameter_size"].endswith("M")
    assert info.size == gguf_path.stat().st_size
    brief = model_info.brief(info.metadata)
    assert brief["general.file_type"] == 15 and brief["tokenizer.ggml.tokens"] == []
