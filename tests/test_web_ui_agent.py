"""The web chat's code-interpreter switch in headless Chromium against a real `zen serve --enable-code-interpreter`
on the default model: the switch sends the conversation to /v1/code_interpreter, the server runs the agent loop
with the python tool in the sandbox, and the page shows the call, its result and the figure the code drew as
cards. Debian's chromium driven by playwright (see test_web_ui.py, whose browser fixture this reuses)."""

import os
from pathlib import Path

import pytest
import serve_process
from test_web_ui import ANSWER_TIMEOUT_MS, browser  # noqa: F401 - the module's browser fixture

KEY = "code-interpreter-key"
ANSWER = '.msg[data-role="assistant"][data-mode="code-interpreter"]'
SHOT = Path(__file__).resolve().parent.parent / "docs" / "web-chat-code-interpreter.png"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("zen_serve") / "serve.log"
    proc, url = serve_process.start(["--api-key", KEY, "--dtype", "int4", "--enable-code-interpreter"], log,
                                    timeout=600)
    yield url
    proc.terminate()
    proc.wait(timeout=60)


def test_the_switch_runs_code_and_shows_the_figure(browser, server, tmp_path):  # noqa: F811
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(2 * ANSWER_TIMEOUT_MS)  # a tool call, a cell and a second turn
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(server + "/")
    page.fill("#api-key", KEY)
    page.fill("#temperature", "0")
    page.fill("#max-tokens", "320")
    page.check("#code-interpreter")
    page.fill("#prompt", "Plot y = x**2 for x from 0 to 10 with matplotlib.")
    with page.expect_response(lambda r: r.url.endswith("/v1/code_interpreter")) as info:
        page.press("#prompt", "Enter")
    response = info.value
    assert response.status == 200 and response.request.headers["authorization"] == f"Bearer {KEY}"
    assert response.request.post_data_json["messages"][-1]["content"].startswith("Plot y = x**2")
    answer = page.locator(ANSWER).last
    figure = answer.locator(".tool-call.result img.figure").first
    try:
        figure.wait_for()  # the figure's card comes once the code has run; the model may still be answering
    finally:
        page.screenshot(path=str(tmp_path / "code-interpreter.png"))
        print(answer.inner_text())
    assert answer.locator(".tool-call:not(.result) .tool-name").first.text_content() == "python"
    assert "plt" in answer.locator(".tool-call:not(.result) pre").first.text_content()
    assert page.evaluate("img => img.complete && img.naturalWidth > 100 && img.naturalHeight > 100",
                         figure.element_handle())
    assert not answer.locator(".err").count(), answer.inner_text()
    if not SHOT.exists() or os.environ.get("ZEN_UPDATE_SCREENSHOT") == "1":
        page.screenshot(path=SHOT)
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
