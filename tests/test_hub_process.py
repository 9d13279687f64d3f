"""Hub names across processes: a `zen pull` killed mid-file resumes where it stopped; `zen serve NAME` pulls on
first use and lists the name in /v1/models and /api/tags (the real openai client); a terminal is asked before
a download; and the default model needs no hub at all."""

import hashlib
import os
import pty
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import openai
import serve_process
from hub_models import hub_env, published  # noqa: F401 - fixtures

from zenlm.weights import store

ZEN = [sys.executable, "-m", "zenlm"]


def test_a_killed_download_resumes_where_it_stopped(hub_env, tmp_path):
    hub = hub_env.hub
    repo = hub.repos["Org/Big-GGUF"]
    blob = hub.sha256(repo.commits[repo.refs["main"]]["big-q8_0.gguf"])
    release = threading.Event()
    hub.stall[blob] = (12 << 20, release)  # 12 MiB, then silence: huggingface_hub has written 10 MiB
    partial = Path(os.environ["HF_HOME"]) / "hub" / "models--Org--Big-GGUF" / "blobs" / f"{blob}.incomplete"
    with open(tmp_path / "pull.log", "w") as log:
        proc = subprocess.Popen([*ZEN, "pull", "Org/Big-GGUF"], stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    deadline = time.time() + 120
    while not (partial.exists() and partial.stat().st_size >= 10 << 20) and time.time() < deadline:
        assert proc.poll() is None, (tmp_path / "pull.log").read_text()
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    del hub.stall[blob]
    release.set()
    assert partial.stat().st_size == 10 << 20 and not partial.with_suffix("").exists()
    hub.log.clear()
    local = store.pull("Org/Big-GGUF", progress=False)
    assert hashlib.sha256(local.path.read_bytes()).hexdigest() == blob and not partial.exists()
    assert [r["range"] for r in hub.requests("GET") if r["cdn"]] == [f"bytes={10 << 20}-"]


def test_serve_pulls_a_name_on_first_use_and_lists_it(hub_env, tmp_path):
    name = "Org/Tiny-GGUF:q4_0"
    proc, url = serve_process.start(["--model", name, "--dtype", "float32"], tmp_path / "serve.log")
    try:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
        assert [m.id for m in client.models.list()] == [name]
        done = client.completions.create(model=name, prompt="hello", max_tokens=3, temperature=0)
        assert done.usage.completion_tokens == 3
        tags = httpx.get(f"{url}/api/tags").json()["models"]
        assert [t["name"] for t in tags] == [name] and tags[0]["details"]["quantization_level"] == "Q4_0"
    finally:
        proc.terminate()
        proc.wait(30)
    assert [e.name for e in store.entries()] == [name]


def ask(argv: list[str], answer: bytes) -> subprocess.CompletedProcess:
    """Run zen with a terminal on stdin, typing `answer`."""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.Popen([*ZEN, *argv], stdin=follower, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        os.write(leader, answer)
        out, err = proc.communicate(timeout=300)
    finally:
        os.close(follower)
        os.close(leader)
    return subprocess.CompletedProcess(argv, proc.returncode, out.decode(), err.decode())


def test_a_terminal_is_asked_before_a_download(hub_env):
    argv = ["generate", "hello", "--raw", "--model", "Org/Tiny-GGUF:q4_0", "--dtype", "float32", "--max-tokens", "2"]
    no = ask(argv, b"n\n")
    question = "Org/Tiny-GGUF:q4_0 is not downloaded: fetch 1 file(s), "
    assert no.returncode == 1 and question in no.stderr and no.stdout == ""
    assert "zen: error: Org/Tiny-GGUF:q4_0 is not downloaded; `zen pull Org/Tiny-GGUF:q4_0` fetches it" in no.stderr
    assert not (Path(os.environ["HF_HOME"]) / "hub" / "models--Org--Tiny-GGUF" / "blobs").exists()
    yes = ask(argv, b"\n")
    assert yes.returncode == 0 and question in yes.stderr and yes.stdout.strip()
    again = ask(argv, b"")  # downloaded now: no question
    assert again.returncode == 0 and "not downloaded" not in again.stderr


def test_the_default_model_needs_no_hub(tmp_path):
    code = ("import sys; from zenlm.weights.registry import resolve; s = resolve('default'); "
            "assert s.path.is_file(), s; assert 'huggingface_hub' not in sys.modules; print('ok')")
    env = os.environ | {"HF_ENDPOINT": "http://127.0.0.1:9", "HF_HOME": str(tmp_path)}
    env.pop("HF_HUB_OFFLINE", None)
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
