"""The web chat page (zenlm/server/ui/index.html) in headless Chromium against a real `zen serve`.

A module fixture starts `zen serve --dtype int4 --api-key KEY` on a free loopback port; Debian's chromium
(/usr/bin/chromium, never a downloaded browser) is driven by playwright. Checked: a streamed answer that the
page renders as markdown, a second turn that carries the history, stop, a wrong key (401), tool calls and the
renderer's escaping. Screenshots go to the test's tmp dir (and to docs/web-chat.png, see `_docs_screenshot`).
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from playwright import sync_api as playwright_sync  # the test extra installs it; it never downloads a browser

KEY = "web-ui-test-key"
CHROMIUM = os.environ.get("ZEN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ANSWER_TIMEOUT_MS = 300_000  # two shared CPU cores: a 0.5B int4 answer takes seconds, a loaded machine minutes
DOCS_SHOT = Path(__file__).resolve().parent.parent / "docs" / "web-chat.png"

ASSISTANT = '.msg[data-role="assistant"]'

# Installed before the page's own script: keeps a copy of the raw bytes of every chat response the page reads,
# so the test can parse the SSE itself and compare with what the page assembled (CDP keeps no streamed bodies).
RECORD_RAW_RESPONSES = """
window.__raw = [];
const pageFetch = window.fetch;
window.fetch = async (...args) => {
  const res = await pageFetch(...args);
  if (!String(args[0]).endsWith('/v1/chat/completions') || !res.body) return res;
  const [mine, theirs] = res.body.tee();
  const entry = {text: '', done: false};
  window.__raw.push(entry);
  (async () => {
    const reader = theirs.getReader(), decoder = new TextDecoder();
    for (;;) { const {value, done} = await reader.read(); if (done) break; entry.text += decoder.decode(value, {stream: true}); }
  })().catch(() => {}).finally(() => { entry.done = true; });
  return new Response(mine, {status: res.status, statusText: res.statusText, headers: res.headers});
};
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, key: str | None = None) -> tuple[int, bytes]:
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A real `zen serve` subprocess; yields its base URL and shuts it down with SIGINT (as Ctrl-C would)."""
    port = _free_port()
    log = tmp_path_factory.mktemp("zen_serve") / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "zenlm", "serve", "--port", str(port), "--api-key", KEY,
                                 "--dtype", "int4"], stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 600
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"zen serve exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
            try:
                if _get(base + "/health")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"zen serve did not answer /health within 600 s:\n{log.read_text()[-4000:]}")
            time.sleep(0.5)
        yield base
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).exists(), (f"{CHROMIUM} is missing: install Debian's chromium "
                                     "(apt-get install -y chromium); nothing downloads a browser")
    with playwright_sync.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


@pytest.fixture
def page(browser, server):
    """A fresh browser context (empty localStorage) on the chat page; fails the test on any uncaught JS error."""
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    pg = context.new_page()
    pg.set_default_timeout(ANSWER_TIMEOUT_MS)
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    pg.add_init_script(RECORD_RAW_RESPONSES)
    pg.goto(server + "/")
    yield pg
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def _model_id(server) -> str:
    status, body = _get(server + "/v1/models", KEY)
    assert status == 200, body
    return json.loads(body)["data"][0]["id"]


def _set_up(page, server, *, key=KEY, temperature="0", max_tokens="64"):
    page.fill("#api-key", key)
    if key == KEY:
        page.wait_for_function("id => document.getElementById('model-name').textContent === id", arg=_model_id(server))
    page.fill("#temperature", temperature)
    page.fill("#max-tokens", max_tokens)


def _send(page, text):
    """Types a message and sends it; returns the network response of the chat request (headers received)."""
    page.fill("#prompt", text)
    with page.expect_response(lambda r: r.url.endswith("/v1/chat/completions")) as info:
        page.press("#prompt", "Enter")
    return info.value


def _last_answer(page):
    return page.locator(ASSISTANT).last


def _raw_body(page, k: int) -> str:
    """The raw body of the k-th chat response the page read (k=-1: the latest), once it has ended."""
    page.wait_for_function("k => window.__raw.at(k) && window.__raw.at(k).done", arg=k)
    return page.evaluate("k => window.__raw.at(k).text", k)


def _streamed_content(sse_body: str) -> tuple[str, int]:
    """What a client should assemble from an SSE body: the joined content deltas, and how many there were."""
    text, n = "", 0
    for line in sse_body.splitlines():
        if not line.startswith("data:") or line[5:].strip() == "[DONE]":
            continue
        for choice in json.loads(line[5:]).get("choices", []):
            piece = (choice.get("delta") or {}).get("content")
            if piece:
                text, n = text + piece, n + 1
    return text, n


def _docs_screenshot(page):
    """docs/web-chat.png is the README's picture: written when missing, or refreshed with ZEN_UPDATE_SCREENSHOT=1
    (so ordinary test runs leave the working tree clean)."""
    if not DOCS_SHOT.exists() or os.environ.get("ZEN_UPDATE_SCREENSHOT") == "1":
        DOCS_SHOT.parent.mkdir(exist_ok=True)
        page.screenshot(path=str(DOCS_SHOT))


def test_streamed_answer_is_rendered_and_the_second_turn_keeps_history(page, server, tmp_path):
    _set_up(page, server, max_tokens="96")
    page.fill("#system-prompt", "You are a concise coding assistant. Put code in fenced code blocks.")
    question = "Write a Python function that returns the square of a number."
    response = _send(page, question)
    request = response.request.post_data_json
    assert request["stream"] is True and request["temperature"] == 0 and request["max_tokens"] == 96
    assert request["messages"] == [{"role": "system", "content": page.input_value("#system-prompt")},
                                   {"role": "user", "content": question}]
    assert response.request.headers["authorization"] == f"Bearer {KEY}"

    # Text shows up while the answer is still streaming, and the stop button is offered meanwhile.
    page.wait_for_function("""sel => { const m = [...document.querySelectorAll(sel)].pop();
        return m && m.dataset.state === 'streaming' && m.querySelector('.msg-body').textContent.trim().length > 0; }""",
                           arg=ASSISTANT)
    assert page.is_visible("#stop") and page.is_hidden("#send")
    page.wait_for_selector(ASSISTANT + '[data-state="done"]')
    assert page.is_visible("#send") and page.is_hidden("#stop")

    # The page assembled exactly the content deltas the server sent.
    sse_text, n_deltas = _streamed_content(_raw_body(page, 0))
    assert n_deltas >= 3, "the answer did not arrive as a stream of deltas"
    history = page.evaluate("zenChat.state.history")
    assert history[0] == {"role": "user", "content": question}
    assert history[1]["role"] == "assistant" and history[1]["content"] == sse_text and sse_text.strip()

    # Rendered as markdown: a code block holds the code, no fence characters are left in the visible text.
    answer = _last_answer(page)
    body = answer.locator(".msg-body")
    assert "```" in sse_text, f"the model was asked for a fenced code block but wrote:\n{sse_text}"
    code = body.locator(".code pre code")
    assert code.count() >= 1
    assert "def " in code.first.inner_text() or "lambda" in code.first.inner_text()
    assert "```" not in body.inner_text()
    assert "finish: " in answer.locator(".meta").inner_text()
    page.screenshot(path=str(tmp_path / "web-chat-first-turn.png"))
    _docs_screenshot(page)

    # The second turn sends the whole conversation and adds to it.
    follow_up = "Now add a docstring to it."
    response2 = _send(page, follow_up)
    assert response2.request.post_data_json["messages"][1:] == [
        {"role": "user", "content": question}, {"role": "assistant", "content": sse_text},
        {"role": "user", "content": follow_up}]
    page.wait_for_function(
        "sel => { const m = document.querySelectorAll(sel); return m.length === 2 && m[1].dataset.state === 'done'; }",
        arg=ASSISTANT)
    second, _ = _streamed_content(_raw_body(page, 1))
    assert second.strip() and page.evaluate("zenChat.state.history.length") == 4
    assert page.locator(".msg").count() == 4
    page.screenshot(path=str(tmp_path / "web-chat-second-turn.png"))

    # "New chat" forgets everything.
    page.click("#new-chat")
    assert page.evaluate("zenChat.state.history") == [] and page.locator(".msg").count() == 0


def test_stop_ends_the_answer_and_keeps_what_arrived(page, server, tmp_path):
    _set_up(page, server, temperature="0.7", max_tokens="1024")
    _send(page, "Write a long, detailed tutorial on Python generators with many examples.")
    page.wait_for_function("""sel => { const m = [...document.querySelectorAll(sel)].pop();
        return m && m.dataset.state === 'streaming' && m.querySelector('.msg-body').textContent.trim().length > 20; }""",
                           arg=ASSISTANT)
    page.click("#stop")
    page.wait_for_selector(ASSISTANT + '[data-state="stopped"]', timeout=10_000)
    assert page.is_visible("#send") and page.is_hidden("#stop")
    assert "Stopped" in _last_answer(page).locator(".meta").inner_text()
    history = page.evaluate("zenChat.state.history")
    assert [m["role"] for m in history] == ["user", "assistant"] and len(history[1]["content"]) > 20
    page.screenshot(path=str(tmp_path / "web-chat-stopped.png"))

    # The partial answer stays part of the conversation for the next turn.
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "16")
    response = _send(page, "Thanks, that is enough.")
    sent = response.request.post_data_json["messages"]
    assert sent[-2] == {"role": "assistant", "content": history[1]["content"]}
    page.wait_for_function(
        "sel => { const m = document.querySelectorAll(sel); return m.length === 2 && m[1].dataset.state === 'done'; }",
        arg=ASSISTANT)
    assert page.evaluate("zenChat.state.history.length") == 4


def test_a_wrong_api_key_shows_the_401(page, server, tmp_path):
    _set_up(page, server, key="not-the-key")
    page.wait_for_function("document.getElementById('model-name').textContent === 'API key needed'")
    assert "401" in page.inner_text("#banner")
    response = _send(page, "Hello?")
    assert response.status == 401
    page.wait_for_selector(ASSISTANT + '[data-state="error"]')
    error = _last_answer(page).locator(".err").inner_text()
    assert error.startswith("401") and "API key" in error
    # The question is not kept in the conversation; its text goes back into the box for another try.
    assert page.evaluate("zenChat.state.history") == []
    assert page.input_value("#prompt") == "Hello?"
    assert page.locator('.msg[data-role="user"].unsent').count() == 1
    page.screenshot(path=str(tmp_path / "web-chat-401.png"))
    # The right key is remembered for the next visit.
    page.fill("#api-key", KEY)
    page.reload()
    assert page.input_value("#api-key") == KEY


def test_the_code_interpreter_switch_says_when_the_server_has_it_off(page, server):
    _set_up(page, server)
    page.check("#code-interpreter")
    page.fill("#prompt", "Plot a sine wave.")
    with page.expect_response(lambda r: r.url.endswith("/v1/code_interpreter")) as info:
        page.press("#prompt", "Enter")
    assert info.value.status == 403
    page.wait_for_selector(ASSISTANT + '[data-state="error"]')
    error = _last_answer(page).locator(".err").inner_text()
    assert error.startswith("403") and "--enable-code-interpreter" in error and "API key was refused" not in error


def test_tool_calls_are_shown(page, server, tmp_path):
    _set_up(page, server, max_tokens="64")
    page.click("#tools-example")
    page.select_option("#tool-choice", "required")
    response = _send(page, "What is the weather in Paris right now?")
    request = response.request.post_data_json
    assert request["tools"][0]["function"]["name"] == "get_weather" and request["tool_choice"] == "required"
    page.wait_for_selector(ASSISTANT + '[data-state="done"]')
    assert '"tool_calls"' in _raw_body(page, 0)
    card = _last_answer(page).locator(".tool-call")
    assert card.count() >= 1
    assert card.first.locator(".tool-name").inner_text() == "get_weather"
    args = json.loads(card.first.locator(".tool-args").inner_text())
    assert isinstance(args.get("city"), str) and args["city"]
    call = page.evaluate("zenChat.state.history")[-1]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == args
    assert call["id"] and call["type"] == "function"
    page.screenshot(path=str(tmp_path / "web-chat-tool-call.png"))

    # Results typed under the cards go back as `tool` messages (one per call, in order) and the model answers.
    calls = page.evaluate("zenChat.state.history")[-1]["tool_calls"]
    inputs = page.locator(".tool-results input")
    assert inputs.count() == len(calls)
    for k in range(len(calls)):
        inputs.nth(k).fill(f'{{"temp_c": {20 + k}}}')
    page.select_option("#tool-choice", "none")
    page.fill("#max-tokens", "32")
    with page.expect_response(lambda r: r.url.endswith("/v1/chat/completions")) as info:
        page.click(".tool-results button[type=submit]")
    sent = info.value.request.post_data_json["messages"]
    assert sent[-len(calls):] == [{"role": "tool", "tool_call_id": c["id"], "content": f'{{"temp_c": {20 + k}}}'}
                                  for k, c in enumerate(calls)]
    assert page.locator('.msg[data-role="tool"]').count() == len(calls) and page.locator(".tool-results").count() == 0
    page.wait_for_function(
        "sel => { const m = document.querySelectorAll(sel); return m.length === 2 && m[1].dataset.state !== 'streaming'; }",
        arg=ASSISTANT)
    assert _last_answer(page).get_attribute("data-state") == "done"


HOSTILE = [
    "<script>window.pwned = 1</script>",
    "<img src=x onerror=\"window.pwned = 1\">",
    "[click](javascript:window.pwned=1)",
    "[click](JaVaScRiPt:window.pwned=1)",
    "[x](data:text/html,<script>window.pwned=1</script>)",
    '[x](https://example.com/" onmouseover="window.pwned=1)',
    "```html\n<script>window.pwned = 1</script>\n```",
    "`<b onclick=\"window.pwned=1\">`",
    "**<svg onload=window.pwned=1>**",
    "| a | <img src=x onerror=window.pwned=1> |\n|---|---|\n| <script>x</script> | b |",
]


def test_markdown_renderer_escapes_html_and_formats(page):
    for src in HOSTILE:
        html = page.evaluate("""src => { const d = document.createElement('div'); d.id = 'probe';
            d.innerHTML = zenChat.renderMarkdown(src); document.body.append(d); return d.innerHTML; }""", src)
        found = page.evaluate("""() => { const d = document.getElementById('probe');
            const bad = [...d.querySelectorAll('script, img, svg, iframe, object, embed, b')].map(e => e.tagName);
            const attrs = [...d.querySelectorAll('*')].flatMap(e => [...e.attributes].map(a => a.name))
                .filter(n => n.startsWith('on'));
            const links = [...d.querySelectorAll('a')].map(a => a.getAttribute('href'));
            d.remove(); return {bad, attrs, links}; }""")
        assert found["bad"] == [] and found["attrs"] == [], (src, html)
        assert all(h.startswith("https://") for h in found["links"]), (src, found["links"])
        assert "<script" not in html and "<img" not in html, html
    assert page.evaluate("window.pwned") is None

    render = lambda src: page.evaluate("src => zenChat.renderMarkdown(src)", src)  # noqa: E731
    assert render("# Title\n\nSome **bold**, *italic* and `code`.") == (
        "<h1>Title</h1><p>Some <strong>bold</strong>, <em>italic</em> and <code>code</code>.</p>")
    assert render("- one\n- two\n  1. inner\n\n3. three") == (
        "<ul><li>one</li><li>two<ol><li>inner</li></ol></li></ul><ol start=\"3\"><li>three</li></ol>")
    html = render("```python\nif a < b:\n    print('x')\n```")
    assert html.startswith('<div class="code">') and "language-python" in html and "&lt;" in html
    text = page.evaluate("""h => { const d = document.createElement('div'); d.innerHTML = h;
        return d.querySelector('pre code').textContent; }""", html)
    assert text == "if a < b:\n    print('x')"
    assert render("[docs](https://docs.python.org/3/)") == (
        '<p><a href="https://docs.python.org/3/" target="_blank" rel="noopener noreferrer">docs</a></p>')
    assert render("call __init__ and snake_case_name") == "<p>call __init__ and snake_case_name</p>"
    # An answer cut off inside a fence (still streaming) renders its code so far.
    assert "<pre><code>partial" in render("```\npartial")
