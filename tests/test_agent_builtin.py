"""The `python` tool adapter (zenlm/agent/builtin.py) against a small fake session with the sandbox's
interface (run(code) -> CellResult, close()): output formatting and head/tail truncation, figures,
errors and timeouts, fenced code, one session per tool kept across calls, and closing.
The real sandbox's own tests live with it; this checks only the adapter."""

import json
from dataclasses import dataclass, field

import pytest
from agent_script import Script, hermes_call

from zenlm.agent import Agent, ToolResult
from zenlm.agent.builtin import builtin_tools, extract_code, python_tool, truncate


@dataclass
class Cell:
    stdout: str = ""
    stderr: str = ""
    images: list = field(default_factory=list)
    error: str | None = None
    timed_out: bool = False


class FakeSession:
    """Answers each cell from a dict of code -> Cell, and records what ran."""

    def __init__(self, answers: dict):
        self.answers, self.ran, self.closed = answers, [], False

    def run(self, code: str) -> Cell:
        self.ran.append(code)
        return self.answers[code]

    def close(self) -> None:
        self.closed = True


def test_truncate_keeps_head_and_tail():
    text = "".join(f"{i:04d}\n" for i in range(1000))  # 5000 characters
    cut = truncate(text, 200)
    assert cut.startswith("0000\n0001\n") and cut.endswith("0998\n0999\n")
    assert "[4800 characters omitted]" in cut
    assert truncate("short", 200) == "short"


def test_extract_code():
    assert extract_code("```python\nx = 1\nprint(x)\n```") == "x = 1\nprint(x)"
    assert extract_code("```\nprint(2)```") == "print(2)"
    assert extract_code("print(3)") == "print(3)"


def test_cells_as_the_model_reads_them():
    png = b"\x89PNG\r\n\x1a\n" + b"\0" * 100
    session = FakeSession({
        "print(6 * 7)": Cell(stdout="42\n"),
        "x = 1": Cell(),
        "1/0": Cell(stderr="warning: careful\n", error="ZeroDivisionError: division by zero"),
        "plot()": Cell(stdout="done\n", images=[png]),
        "while True: pass": Cell(timed_out=True, error="timed out after 30 s"),
        "print('x' * 10000)": Cell(stdout="x" * 10000 + "\n"),
    })
    t = python_tool(session, max_output=400)
    assert t.name == "python" and t.parameters["required"] == ["code"]
    assert t.description == "Run Python code in a stateful sandbox and return what it prints."
    assert t.fn(code="print(6 * 7)").text == "42"
    assert t.fn(code="x = 1").text == "The code ran and printed nothing."
    assert t.fn(code="1/0").text == "stderr:\nwarning: careful\nerror:\nZeroDivisionError: division by zero"
    out = t.fn(code="plot()")
    assert out.text == f"done\n[figure 1: a PNG image of {len(png)} bytes, shown to the user]" and out.images == [png]
    assert t.fn(code="while True: pass").text == (
        "error:\ntimed out after 30 s\nThe cell ran past its time limit and was stopped; variables defined so far "
        "may be lost.")
    long = t.fn(code="print('x' * 10000)").text
    assert len(long) < 500 and "[9600 characters omitted]" in long
    assert t.fn(code="```python\nprint(6 * 7)\n```").text == "42"  # the fence is taken off
    assert session.ran.count("print(6 * 7)") == 2


def test_the_agent_runs_cells_in_one_session_and_gets_figures():
    png = b"\x89PNG fake"
    session = FakeSession({"total = sum(range(10))": Cell(), "print(total)": Cell(stdout="45\n"),
                           "show()": Cell(images=[png])})
    script = Script([hermes_call("python", json.dumps({"code": "total = sum(range(10))"})),
                     hermes_call("python", json.dumps({"code": "print(total)"})),
                     hermes_call("python", json.dumps({"code": "show()"})),
                     "The sum is 45."])
    with Agent(script, tools=[python_tool(session)]) as agent:
        run = agent.stream("Sum 0..9 and plot it.")
        results = [e for e in run if isinstance(e, ToolResult)]
    assert [r.content for r in results][:2] == ["The code ran and printed nothing.", "45"]
    assert results[2].images == [png]
    assert session.ran == ["total = sum(range(10))", "print(total)", "show()"]
    assert run.result.answer == "The sum is 45."
    assert not session.closed  # a session passed in belongs to the caller


def test_timeout_leaves_room_for_the_sandbox_to_report():
    t = python_tool(FakeSession({}), timeout=5.0)
    assert t.timeout == 20.0  # the sandbox's own per-cell kill comes first


def test_bad_settings_and_names():
    with pytest.raises(ValueError, match="timeout must be positive"):
        python_tool(FakeSession({}), timeout=0)
    with pytest.raises(ValueError, match="max_output must be at least 100"):
        python_tool(FakeSession({}), max_output=10)
    with pytest.raises(ValueError, match="unknown tool 'shell'; the built-in tools are: python"):
        builtin_tools(["python", "shell"])
    assert [t.name for t in builtin_tools(["python"])] == ["python"]


def test_the_python_tool_on_the_real_sandbox_keeps_state_and_returns_figures():
    """No fake: cells run in zenlm.agent.sandbox's confined kernel, one session across calls."""
    cells = ["import math\nprimes = [n for n in range(2, 8000) if all(n % p for p in range(2, math.isqrt(n) + 1))]",
             "print(sum(primes[:1000]))", "import matplotlib.pyplot as plt\nplt.plot(primes[:50])\nplt.show()",
             "open('/etc/hostname-copy', 'w')"]
    script = Script([hermes_call("python", json.dumps({"code": c})) for c in cells] + ["The sum is 3682913."])
    with Agent(script, tools=["python"]) as agent:
        run = agent.stream("Sum the first 1000 primes, plot the first 50.")
        results = [e for e in run if isinstance(e, ToolResult)]
    assert results[0].content == "The code ran and printed nothing."
    assert results[1].content == "3682913"  # the state of the first cell, kept by the second
    assert results[2].images and results[2].images[0].startswith(b"\x89PNG")
    assert "error:" in results[3].content  # outside its work directory the sandbox refuses to write
    assert run.result.answer == "The sum is 3682913."
