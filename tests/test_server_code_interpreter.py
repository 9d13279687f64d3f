"""/v1/code_interpreter over real HTTP on a tiny-model server: off by default (403 before the body is read), the
API key like every /v1 route, bad bodies, and with the switch on a run whose python call draws a figure in the
real sandbox and streams as events. The model's turns come from a script (agent_script.Script) standing in for
the engine backend."""

import base64
import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import tiny_server
from agent_script import Script, hermes_call
from test_web_ui import browser  # noqa: F401 - headless Chromium (Debian's), for the page test

import zenlm.agent.backends
from zenlm.server.app import create_app
from zenlm.server.generate import ServerState

KEY = "ci-key"
PLOT = ("import matplotlib.pyplot as plt\\nplt.plot([0, 1, 2], [0, 1, 4])\\nplt.title('squares')\\nplt.show()\\n"
        "print('drawn')")


@pytest.fixture(scope="module")
def llm(tmp_path_factory):
    llm = tiny_server.tiny_llm(tmp_path_factory.mktemp("tiny"))
    yield llm
    llm.close()


def serve(llm, enabled: bool, api_key: str | None = None):
    return tiny_server.Running(create_app(ServerState(llm, "tiny", api_key, code_interpreter=enabled)))


@pytest.fixture(scope="module")
def off(llm):
    running = serve(llm, False)
    yield running.url
    running.stop()


@pytest.fixture(scope="module")
def on(llm):
    running = serve(llm, True, KEY)
    yield running.url
    running.stop()


def events(response) -> list:
    out = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_off_by_default(off):
    r = httpx.post(off + "/v1/code_interpreter", json={"messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 403
    error = r.json()["error"]
    assert error["code"] == "code_interpreter_disabled" and "--enable-code-interpreter" in error["message"]
    assert httpx.post(off + "/v1/code_interpreter", content=b"not json").status_code == 403  # before the body
    assert httpx.get(off + "/v1/code_interpreter").json() == {"enabled": False}


def test_the_api_key_guards_it(on):
    body = {"messages": [{"role": "user", "content": "hi"}]}
    assert httpx.post(on + "/v1/code_interpreter", json=body).status_code == 401
    wrong = {"Authorization": "Bearer nope"}
    assert httpx.post(on + "/v1/code_interpreter", json=body, headers=wrong).status_code == 401
    assert httpx.get(on + "/v1/code_interpreter").status_code == 401
    ok = httpx.get(on + "/v1/code_interpreter", headers={"Authorization": f"Bearer {KEY}"})
    assert ok.json() == {"enabled": True}


@pytest.mark.parametrize("body, message", [
    ({"messages": []}, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_turns": 0}, "max_turns"),
    ({"messages": [{"role": "user", "content": "hi"}], "model": "other"}, "does not exist"),
])
def test_bad_bodies_are_4xx(on, body, message):
    r = httpx.post(on + "/v1/code_interpreter", json=body, headers={"Authorization": f"Bearer {KEY}"})
    assert 400 <= r.status_code < 500 and message in r.json()["error"]["message"], r.text


def test_a_run_streams_the_call_its_figure_and_the_answer(on, monkeypatch):
    script = Script([hermes_call("python", json.dumps({"code": PLOT.replace("\\n", "\n")})),
                     "I drew the squares of 0, 1 and 2."])
    monkeypatch.setattr(zenlm.agent.backends, "AsyncEngineBackend", lambda llm: script)
    body = {"messages": [{"role": "user", "content": "Plot the squares of 0, 1, 2."}]}
    with httpx.stream("POST", on + "/v1/code_interpreter", json=body, timeout=120,
                      headers={"Authorization": f"Bearer {KEY}"}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        got = events(r)
    assert got[-1] == "[DONE]"
    kinds = [e["type"] for e in got[:-1] if e["type"] != "text"]
    assert kinds == ["tool_call", "tool_result", "answer"], got
    call, result, answer = [e for e in got[:-1] if e["type"] != "text"]
    assert call["name"] == "python" and "plt.plot" in json.loads(call["arguments"])["code"]
    assert result["id"] == call["id"] and not result["error"] and "drawn" in result["content"]
    assert len(result["images"]) == 1 and base64.b64decode(result["images"][0]).startswith(b"\x89PNG\r\n\x1a\n")
    assert answer["text"] == "I drew the squares of 0, 1 and 2." and answer["turn"] == 2
    system = script.requests[0]["messages"][0]
    assert system["role"] == "system" and "python" in system["content"]  # the server's default system message


def test_the_page_draws_the_cards_and_the_figure(on, monkeypatch, browser):  # noqa: F811
    """The page's side, in headless Chromium, with the same scripted turns."""
    script = Script([hermes_call("python", json.dumps({"code": PLOT.replace("\\n", "\n")})), "Here is the plot."])
    monkeypatch.setattr(zenlm.agent.backends, "AsyncEngineBackend", lambda llm: script)
    context = browser.new_context()
    page = context.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(on + "/")
    page.fill("#api-key", KEY)
    page.check("#code-interpreter")
    page.fill("#prompt", "Plot the squares.")
    page.press("#prompt", "Enter")
    answer = page.locator('.msg[data-mode="code-interpreter"][data-state="done"]')
    answer.wait_for(timeout=120_000)
    assert answer.locator(".tool-call:not(.result) pre").inner_text().startswith("import matplotlib.pyplot as plt")
    assert "drawn" in answer.locator(".tool-call.result pre").inner_text()
    assert page.evaluate("img => img.complete && img.naturalWidth > 100",
                         answer.locator("img.figure").element_handle())
    assert "Here is the plot." in answer.inner_text() and "1 tool call" in answer.inner_text()
    assert page.evaluate("zenChat.state.history") == [{"role": "user", "content": "Plot the squares."},
                                                      {"role": "assistant", "content": "Here is the plot."}]
    context.close()
    assert not errors, errors


def test_the_async_engine_backend_submits_to_the_running_engine_loop(llm):
    """The backend the route uses: turns go to the AsyncLLM's own engine thread from a worker thread (as the route
    calls it; the test's own thread may hold another test's event loop); a turn left early is aborted and the
    next one still runs."""

    def turns():
        backend = zenlm.agent.backends.AsyncEngineBackend(llm)
        pieces = list(backend.generate([{"role": "user", "content": "hi"}], None, [], 12, 0.0))
        assert pieces[-1].tokens == 12 and pieces[-1].finish_reason == "length"
        assert all(p.tokens == 0 for p in pieces[:-1]) and sum(len(p.text) > 0 for p in pieces) >= 1
        early = backend.generate([{"role": "user", "content": "hi"}], None, [], 50, 0.0)
        next(early)
        early.close()
        assert list(backend.generate([{"role": "user", "content": "hi"}], None, [], 5, 0.0))[-1].tokens == 5

    with ThreadPoolExecutor(1) as pool:
        pool.submit(turns).result()
