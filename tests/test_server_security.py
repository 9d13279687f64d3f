"""zen serve's safe defaults on a tiny random model: CORS (loopback origins only unless allowed), the Host check
against DNS rebinding, the request-body limit (413), the API key, token-id prompts out of range (400), and
the `zen serve` flags that set them (one real process)."""

import asyncio
import os
import subprocess
import sys

import httpx
import pytest
import serve_process
import tiny_server

from zenlm.server.app import key_matches
from zenlm.server.security import Security, is_loopback_origin, split_host

EVIL = "http://evil.example"
PREFLIGHT = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "content-type"}
CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    llm = tiny_server.tiny_llm(tmp_path_factory.mktemp("tiny"))
    yield llm
    llm.close()


@pytest.fixture(scope="module")
def serve(llm):
    """serve(security, api_key) -> base URL of a running app over the shared tiny model."""
    running = []

    def start(security=None, api_key=None) -> str:
        running.append(tiny_server.Running(tiny_server.app(llm, security, api_key)))
        return running[-1].url

    yield start
    for r in running:
        r.stop()


@pytest.fixture(scope="module")
def url(serve):
    return serve()  # the defaults


def assert_refused(r: httpx.Response, status: int, code: str):
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code
    assert "access-control-allow-origin" not in r.headers


# ---- CORS --------------------------------------------------------------------------------------

def test_cross_origin_preflight_is_refused_by_default(url):
    r = httpx.options(url + "/v1/chat/completions", headers={"Origin": EVIL, **PREFLIGHT})
    assert_refused(r, 403, "origin_not_allowed")
    assert "evil.example" in r.json()["error"]["message"]


def test_a_request_from_a_foreign_origin_never_runs(url):
    # a "simple" cross-origin POST needs no preflight: it must be refused, not just left unreadable
    r = httpx.post(url + "/api/generate", content=b'{"model": "tiny", "prompt": "x"}',
                   headers={"Origin": EVIL, "Content-Type": "text/plain"})
    assert r.status_code == 403 and r.json() == {"error": "origin not allowed: 'http://evil.example' "
                                                          "(allow it with --allowed-origins)"}


@pytest.mark.parametrize("origin", ["http://localhost:3000", "http://127.0.0.1:8080", "http://[::1]:5173",
                                    "https://localhost", "http://127.0.0.1", "http://app.localhost:3000"])
def test_loopback_origins_pass(url, origin):
    r = httpx.options(url + "/v1/chat/completions", headers={"Origin": origin, **PREFLIGHT})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
    r = httpx.post(url + "/v1/chat/completions", json=CHAT, headers={"Origin": origin}, timeout=60)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin


def test_an_allowed_origin_passes_and_others_still_do_not(serve):
    url = serve(Security.for_bind("127.0.0.1", allowed_origins="https://app.example, http://tool.example:81"))
    for origin in ("https://app.example", "http://tool.example:81"):
        r = httpx.options(url + "/v1/models", headers={"Origin": origin, **PREFLIGHT})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == origin
    for origin in (EVIL, "http://app.example", "http://tool.example"):  # scheme and port are part of an origin
        assert_refused(httpx.options(url + "/v1/models", headers={"Origin": origin, **PREFLIGHT}), 403,
                       "origin_not_allowed")


def test_star_allows_any_origin(serve, monkeypatch):
    monkeypatch.setenv("ZEN_ALLOWED_ORIGINS", "*")  # the env var, when the flag is not given
    url = serve(Security.for_bind("127.0.0.1"))
    r = httpx.options(url + "/v1/models", headers={"Origin": EVIL, **PREFLIGHT})
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "*"


def test_same_origin_pages_pass_on_any_host(serve):
    # bound to 0.0.0.0 and opened as http://192.168.1.5:8000/: the page's own fetches carry that Origin
    url = serve(Security.for_bind("0.0.0.0"))
    same = {"Host": "192.168.1.5:8000", "Origin": "http://192.168.1.5:8000"}
    assert httpx.get(url + "/v1/models", headers=same).status_code == 200
    r = httpx.get(url + "/v1/models", headers={"Host": "192.168.1.5:8000", "Origin": "http://192.168.1.5:9000"})
    assert_refused(r, 403, "origin_not_allowed")


def test_origin_rules():
    assert all(map(is_loopback_origin, ["http://localhost", "https://127.0.0.1:1", "http://[::1]:80",
                                        "http://127.1.2.3:9", "http://app.localhost:3000"]))
    assert not any(map(is_loopback_origin, ["http://localhost.evil.example", "ftp://localhost", "null",
                                            "http://127.0.0.1.evil.example", "http://[::2]", "file://"]))
    with pytest.raises(ValueError, match="needs a scheme"):
        Security(allowed_origins=["app.example"])


# ---- Host check (DNS rebinding) ----------------------------------------------------------------

def test_a_foreign_host_is_refused_on_loopback(url):
    for host in ("evil.example", "evil.example:8000", "192.168.1.5", "localhost.evil.example"):
        assert_refused(httpx.get(url + "/v1/models", headers={"Host": host}), 403, "host_not_allowed")
    r = httpx.post(url + "/api/chat", json=CHAT, headers={"Host": "evil.example"})
    assert r.status_code == 403 and r.json()["error"].startswith("host not allowed: 'evil.example'")
    for host in ("localhost:8000", "127.0.0.1", "[::1]:8000", "LOCALHOST"):
        assert httpx.get(url + "/v1/models", headers={"Host": host}).status_code == 200


def test_the_host_check_follows_the_bind_address(serve):
    assert Security.for_bind("127.0.0.1").check_host and Security.for_bind("::1").check_host
    assert Security.for_bind("localhost").check_host and not Security.for_bind("0.0.0.0").check_host
    open_url = serve(Security.for_bind("0.0.0.0"))
    assert httpx.get(open_url + "/v1/models", headers={"Host": "my-box.lan:8000"}).status_code == 200
    listed = serve(Security.for_bind("127.0.0.1", allowed_hosts="my-box.lan"))
    assert httpx.get(listed + "/v1/models", headers={"Host": "my-box.lan:8000"}).status_code == 200
    assert httpx.get(listed + "/v1/models", headers={"Host": "other.lan"}).status_code == 403
    assert [split_host(h) for h in ("[::1]:80", "A.b:1", "::1", "x")] == ["::1", "a.b", "::1", "x"]


# ---- body size -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small(serve):
    return serve(Security(max_body_bytes=4096))


def test_a_body_over_the_limit_gets_413(small):
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 5000}]}
    r = httpx.post(small + "/v1/chat/completions", json=big)
    assert r.status_code == 413
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == "request_too_large"
    assert "over the 4 KiB limit" in err["message"]
    r = httpx.post(small + "/api/chat", json={**big, "stream": False})  # Ollama's routes: Ollama's shape
    assert r.status_code == 413 and r.json() == {"error": "the request body is over the 4 KiB limit "
                                                          "(zen serve --max-body-bytes)"}
    assert httpx.post(small + "/v1/chat/completions", json=CHAT, timeout=60).status_code == 200


def test_a_chunked_body_that_grows_past_the_limit_gets_413(small):
    def chunks():  # no Content-Length: the limit is counted as the body arrives
        for _ in range(8):
            yield b" " * 1024

    r = httpx.post(small + "/v1/completions", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    pieces = iter([b'{"model": "tiny", ', b'"prompt": "a", "max_tokens": 1}'])
    ok = httpx.post(small + "/v1/completions", content=pieces, headers={"Content-Type": "application/json"}, timeout=60)
    assert ok.status_code == 200, ok.text
    assert httpx.get(small + "/health").json() == {"status": "ok"}


def test_the_client_reads_the_413_instead_of_a_reset(serve):
    # the server reads and drops the rest of an oversized body before it answers and hangs up; bodies
    # bigger than the socket buffers, or the client would not notice the hang-up
    url = serve(Security(max_body_bytes=1 << 20))
    body = b" " * ((1 << 20) + 1)

    async def pieces():  # chunked
        for i in range(0, len(body), 65536):
            yield body[i:i + 65536]

    async def main():
        async with httpx.AsyncClient(base_url=url, timeout=60) as c:
            for _ in range(20):
                assert (await c.post("/v1/completions", content=body)).status_code == 413
                assert (await c.post("/v1/completions", content=pieces())).status_code == 413

    asyncio.run(main())


def test_the_default_limit_is_16_mib(url):
    r = httpx.post(url + "/v1/completions", content=b"x" * (16 * 1024 * 1024 + 1),
                   headers={"Content-Type": "application/json"}, timeout=60)
    assert r.status_code == 413 and "16 MiB" in r.json()["error"]["message"]
    with pytest.raises(ValueError, match="at least 1 byte"):
        Security(max_body_bytes=0)


# ---- API key, token ids ------------------------------------------------------------------------------

def test_api_key_comparison(serve):
    assert key_matches("s3cret", "s3cret") and not key_matches("s3cre", "s3cret")
    assert not key_matches("s3cret-and-more", "s3cret") and not key_matches("", "s3cret")
    url = serve(api_key="s3cret")
    for token, status in (("s3cret", 200), ("s3cre", 401), ("s3cret" * 50, 401), ("S3CRET", 401), ("x", 401)):
        r = httpx.get(url + "/v1/models", headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == status, token


@pytest.mark.parametrize("prompt, bad", [([1, 2, 259], 259), ([[1, 2], [3, 100000]], 100000), ([5, -1], -1),
                                         ([[4], [2**40]], 2**40)])
def test_token_id_prompts_out_of_the_vocabulary_get_400(url, prompt, bad):
    r = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": prompt, "max_tokens": 2})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == "prompt" and f"token id {bad} is outside the vocabulary" in err["message"]
    assert "0..258" in err["message"]
    assert httpx.get(url + "/health").json() == {"status": "ok"}
    ok = httpx.post(url + "/v1/completions", json={"model": "tiny", "prompt": [[1, 2], [258]], "max_tokens": 2},
                    timeout=60)
    assert ok.status_code == 200 and len(ok.json()["choices"]) == 2


# ---- the flags, on a real `zen serve` ------------------------------------------------------------

@pytest.mark.slow  # starts processes
def test_zen_serve_flags(llm, tmp_path):
    env = {**os.environ, "ZEN_ALLOWED_ORIGINS": EVIL}  # the flag wins over the env var
    proc, url = serve_process.start(["--model", str(llm.path), "--dtype", "float32", "--allowed-origins",
                                     "https://app.example", "--max-body-bytes", "2048"], tmp_path / "stderr.txt", env)
    try:
        r = httpx.options(url + "/v1/models", headers={"Origin": "https://app.example", **PREFLIGHT})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"
        assert httpx.options(url + "/v1/models", headers={"Origin": EVIL, **PREFLIGHT}).status_code == 403
        assert httpx.get(url + "/v1/models", headers={"Host": "evil.example"}).status_code == 403
        assert httpx.post(url + "/v1/completions", content=b"x" * 2049).status_code == 413
        assert httpx.get(url + "/health").json() == {"status": "ok"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    bad = subprocess.run([sys.executable, "-m", "zenlm", "serve", "--allowed-origins", "app.example"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "allowed origin 'app.example' needs a scheme" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "zenlm", "serve", "--max-waiting", "0"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--max-waiting must be at least 1, got 0" in bad.stderr
    bad = subprocess.run([sys.executable, "-m", "zenlm", "serve", "--kv-cache-tokens", "3"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0 and "--kv-cache-tokens must be at least 16 (one block), got 3" in bad.stderr
