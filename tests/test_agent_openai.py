"""The agent against an OpenAI-compatible URL (zenlm/agent/backends.py OpenAIBackend), over real loopback HTTP
to a scripted server: streamed content and tool-call deltas, parallel calls, a text format's continuation,
usage, the API key, and HTTP and connection failures."""

import json

import pytest
import tiny_server
from openai_script import content, scripted_app, tool_call

from zenlm.agent import Agent, FinalAnswer, Stopped, TextDelta, ToolCall, ToolResult
from zenlm.agent.backends import OpenAIBackend


def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@pytest.fixture
def serve():
    running = []

    def start(turns, usage=True):
        app, requests = scripted_app(turns, usage)
        running.append(tiny_server.Running(app))
        return running[-1].url, requests
    yield start
    for r in running:
        r.stop()


def test_parallel_tool_call_deltas_then_answer(serve):
    url, requests = serve([
        content("Adding both.") + tool_call(0, "call_a", "add", '{"a": 2,', ' "b": 3}')
        + tool_call(1, "call_b", "add", '{"a": 4, "b": 5}'),
        content("5", " and 9."),
    ])
    with Agent(url + "/v1", tools=[add], api_key="sk-test") as agent:
        run = agent.stream("What are 2 + 3 and 4 + 5?")
        events = list(run)
    result = run.result
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [("add", {"a": 2, "b": 3}), ("add", {"a": 4, "b": 5})]
    assert sorted(e.content for e in events if isinstance(e, ToolResult)) == ["5", "9"]
    assert events[-1] == FinalAnswer("5 and 9.", 2)
    assert "".join(e.text for e in events if isinstance(e, TextDelta)).startswith("Adding both.")
    first, second = requests[0]["body"], requests[1]["body"]
    assert first["model"] == "scripted" and first["stream"] is True
    assert first["tools"] == [agent.tools[0].schema] and "stop" not in first
    assert requests[0]["headers"]["authorization"] == "Bearer sk-test"
    assert [m["role"] for m in second["messages"]] == ["user", "assistant", "tool", "tool"]
    assert second["messages"][1]["content"] == "Adding both."
    assert [m["content"] for m in second["messages"][2:]] == ["5", "9"]
    assert result.tokens == 7 * 6 + 7 * 2  # completion_tokens from each turn's usage chunk
    assert (result.turns, result.tool_calls) == (2, 2)


def test_text_format_continues_inside_the_user_message(serve):
    url, requests = serve([
        content("Thought: add\nAction: add\nAction Input: ", '{"a": 2, "b": 3}\n'),
        content(" I now know the final answer\nFinal Answer: 5"),
    ], usage=False)
    result = Agent(url, tools=[add], format="react").run("What is 2 + 3?")
    assert result.answer == "5" and result.tool_calls == 1
    first, second = requests[0]["body"], requests[1]["body"]
    assert "tools" not in first and first["stop"] == ["Observation:", "Observation:\n"]
    assert [m["role"] for m in second["messages"]] == ["user"]  # no chat server can continue an assistant turn
    assert second["messages"][0]["content"].endswith(
        'Question: What is 2 + 3?\n\nThought: add\nAction: add\nAction Input: {"a": 2, "b": 3}\nObservation: 5\n'
        "Thought:")
    assert result.tokens == 2 + 1  # without usage: a token a chunk


def test_http_error_stops_the_run(serve):
    url, _ = serve([400])
    events = list(Agent(url, tools=[add], model="scripted").stream("hi"))
    assert len(events) == 1 and isinstance(events[0], Stopped) and events[0].reason == "error"
    assert "answered HTTP 400" in events[0].message and "scripted failure" in events[0].message


def test_unreachable_server():
    with pytest.raises(OSError, match=r"cannot reach http://127.0.0.1:9/v1/models"):
        Agent("http://127.0.0.1:9", tools=[add])
    events = list(Agent("http://127.0.0.1:9/v1", tools=[add], model="m").stream("hi"))
    assert events[-1].reason == "error" and "cannot reach http://127.0.0.1:9/v1/chat/completions" in events[-1].message


def test_bad_url():
    with pytest.raises(ValueError, match="must start with http:// or https://"):
        OpenAIBackend("127.0.0.1:8000")
