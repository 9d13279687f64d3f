"""The tool loop (zenlm/agent/loop.py, execute.py) driven by a scripted model: answers, parallel calls, tools
that raise or hang, unknown tools, malformed arguments, the turn limit, the token budget, backend errors,
the repeat-call breaker, and the same loop through each prompt format."""

import json
import threading

import pytest
from agent_script import Script, hermes_call

from zenlm.agent import Agent, FinalAnswer, Stopped, TextDelta, Tool, ToolCall, ToolResult
from zenlm.agent.loop import ANSWER_NOW


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first number.
        b: The second number.
    """
    return a + b


def lookup(city: str) -> str:
    """Look up a city's population."""
    if city == "Atlantis":
        raise ValueError("no such city: Atlantis")
    return {"Paris": "2102650"}.get(city, "unknown")


def events_of(agent, task="What is 2 + 3?"):
    run = agent.stream(task)
    return list(run), run.result


def kinds(events):
    return [type(e).__name__ for e in events if not isinstance(e, TextDelta)]


def test_plain_answer():
    script = Script(["Hello there, friend."])
    events, result = events_of(Agent(script, tools=[add]), "Say hello.")
    assert "".join(e.text for e in events if isinstance(e, TextDelta)) == "Hello there, friend."
    assert events[-1] == FinalAnswer("Hello there, friend.", 1)
    assert (result.answer, result.turns, result.tool_calls, result.stopped, result.tokens) == (
        "Hello there, friend.", 1, 0, None, 3)
    assert result.messages == [{"role": "user", "content": "Say hello."},
                               {"role": "assistant", "content": "Hello there, friend."}]
    assert script.requests[0]["tools"] == [Tool.from_function(add).schema]
    assert script.requests[0]["max_tokens"] == 1024 and script.requests[0]["temperature"] == 0.0


def test_one_call_then_answer():
    script = Script([hermes_call("add", '{"a": 2, "b": 3}'), "2 + 3 = 5."])
    events, result = events_of(Agent(script, tools=[add], system="Be exact."))
    assert kinds(events) == ["ToolCall", "ToolResult", "FinalAnswer"]
    call, res = events[0], events[1]
    assert (call.name, json.loads(call.arguments), call.turn) == ("add", {"a": 2, "b": 3}, 1)
    assert (res.id, res.content, res.error, res.turn) == (call.id, "5", False, 1)
    assert (result.answer, result.turns, result.tool_calls) == ("2 + 3 = 5.", 2, 1)
    assert result.messages == [
        {"role": "system", "content": "Be exact."},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": call.id, "type": "function", "function": {"name": "add", "arguments": '{"a": 2, "b": 3}'}}]},
        {"role": "tool", "tool_call_id": call.id, "name": "add", "content": "5"},
        {"role": "assistant", "content": "2 + 3 = 5."}]
    assert script.requests[1]["messages"] == result.messages[:4]  # the second turn saw the result


def test_parallel_calls_run_concurrently():
    barrier = threading.Barrier(2, timeout=10)

    def meet(who: str) -> str:
        """Wait until the other call arrives too."""
        barrier.wait()  # raises BrokenBarrierError unless both calls run at the same time
        return f"{who} met"
    calls = hermes_call("meet", '{"who": "ann"}') + "\n" + hermes_call("meet", '{"who": "bob"}')
    events, result = events_of(Agent(Script([calls, "Both met."]), tools=[meet]))
    assert kinds(events) == ["ToolCall", "ToolCall", "ToolResult", "ToolResult", "FinalAnswer"]
    results = {e.content for e in events if isinstance(e, ToolResult)}
    assert results == {"ann met", "bob met"}
    ids = [e.id for e in events if isinstance(e, ToolCall)]
    tool_messages = [m for m in result.messages if m["role"] == "tool"]
    assert [m["tool_call_id"] for m in tool_messages] == ids  # results go back in call order
    assert [m["content"] for m in tool_messages] == ["ann met", "bob met"]
    assert result.tool_calls == 2 and result.answer == "Both met."


def test_a_tool_that_raises_becomes_a_result():
    script = Script([hermes_call("lookup", '{"city": "Atlantis"}'), "Atlantis does not exist."])
    events, result = events_of(Agent(script, tools=[lookup]))
    res = next(e for e in events if isinstance(e, ToolResult))
    assert res.error and res.content == "Error: lookup raised ValueError: no such city: Atlantis"
    assert script.requests[1]["messages"][-1]["content"] == res.content
    assert result.answer == "Atlantis does not exist."


def test_a_tool_that_times_out():
    release = threading.Event()

    def slow(x: int) -> int:
        release.wait(30)
        return x
    slow_tool = Tool.from_function(slow, timeout=0.2)
    script = Script([hermes_call("slow", '{"x": 1}') + hermes_call("add", '{"a": 1, "b": 1}'), "Gave up."])
    try:
        events, result = events_of(Agent(script, tools=[slow_tool, add]))
    finally:
        release.set()
    results = {e.name: e for e in events if isinstance(e, ToolResult)}
    assert results["slow"].error
    assert results["slow"].content == "Error: slow did not finish within 0.2 s and was abandoned."
    assert not results["add"].error and results["add"].content == "2"  # the other call is not held up
    assert result.answer == "Gave up." and result.tool_calls == 2


def test_agent_tool_timeout_applies_to_tools_without_their_own():
    release = threading.Event()

    def hang() -> str:
        release.wait(30)
        return "late"
    try:
        events, _ = events_of(Agent(Script([hermes_call("hang", "{}"), "ok"]), tools=[hang], tool_timeout=0.1))
    finally:
        release.set()
    assert next(e for e in events if isinstance(e, ToolResult)).content == (
        "Error: hang did not finish within 0.1 s and was abandoned.")


@pytest.mark.parametrize("call,message", [
    (hermes_call("divide", '{"a": 1, "b": 2}'), "Error: there is no tool named 'divide'; the tools are: add, lookup."),
    ('<tool_call>\n{"name": "add", "arguments": {"a": 2, "b": }}\n</tool_call>',
     "Error: bad arguments for add: the arguments are not valid JSON (Expecting value: line 1 column 15 (char 14))"),
    (hermes_call("add", '{"a": 2, "c": 3}'), "Error: bad arguments for add: unexpected argument 'c' (add takes a, b)"),
    (hermes_call("add", '{"a": 2}'), "Error: bad arguments for add: missing a required argument: 'b'"),
    ("<tool_call>\nadd(2, 3)\n</tool_call>", "Error: there is no tool named ''; the tools are: add, lookup."),
])
def test_bad_calls_become_results_and_the_loop_goes_on(call, message):
    script = Script([call, "Sorry."])
    events, result = events_of(Agent(script, tools=[add, lookup]))
    res = next(e for e in events if isinstance(e, ToolResult))
    assert res.error and res.content == message
    assert script.requests[1]["messages"][-1] == {"role": "tool", "tool_call_id": res.id, "name": res.name,
                                                  "content": message}
    assert result.answer == "Sorry." and result.turns == 2 and result.tool_calls == 1


def test_turn_limit():
    script = Script([hermes_call("add", f'{{"a": {i}, "b": 1}}') for i in range(3)])
    events, result = events_of(Agent(script, tools=[add], max_turns=3))
    assert kinds(events) == ["ToolCall", "ToolResult"] * 3 + ["Stopped"]
    assert events[-1] == Stopped("max_turns", "no final answer within 3 turns", 3)
    assert (result.answer, result.turns, result.tool_calls, result.stopped) == (None, 3, 3, "max_turns")
    assert not script.turns


def test_token_budget_cuts_a_long_answer():
    call = hermes_call("add", '{"a": 2, "b": 3}')  # 9 words
    script = Script([call, "word " * 50])
    events, result = events_of(Agent(script, tools=[add], max_tokens=20))
    assert [r["max_tokens"] for r in script.requests] == [20, 11]  # each turn gets what is left of the budget
    assert events[-1].reason == "token_budget" and result.stopped == "token_budget"
    assert result.answer is None and result.tokens == 20 and result.turns == 2


def test_token_budget_spent_by_calls():
    script = Script([hermes_call("add", '{"a": 2, "b": 3}')] * 2)
    events, result = events_of(Agent(script, tools=[add], max_tokens=7, turn_tokens=7))
    assert result.stopped == "token_budget" and result.turns == 1 and result.tool_calls == 1
    assert len(script.requests) == 1  # no turn is started with nothing left to spend


def test_turn_tokens_caps_each_turn():
    script = Script(["one two three four five"])
    _, result = events_of(Agent(script, turn_tokens=3))
    assert script.requests[0]["max_tokens"] == 3
    assert result.answer == "one two three"  # a per-turn cut (not the budget) still answers


def test_backend_errors_stop_the_run():
    script = Script([OSError("cannot reach http://127.0.0.1:9/v1/chat/completions")])
    events, result = events_of(Agent(script, tools=[add]))
    assert events == [Stopped("error", "cannot reach http://127.0.0.1:9/v1/chat/completions", 1)]
    assert result.stopped == "error" and result.answer is None


def test_stream_stops_early_and_close_closes():
    script = Script([hermes_call("add", '{"a": 2, "b": 3}'), "done"])
    closed = []
    t = Tool.from_function(add)
    t.on_close = lambda: closed.append(True)
    with Agent(script, tools=[t]) as agent:
        run = agent.stream("2 + 3?")
        assert isinstance(next(e for e in run if isinstance(e, ToolCall)), ToolCall)
        run.close()
        assert list(run) == []
        assert len(script.requests) == 1
    assert script.closed and closed == [True]


@pytest.mark.parametrize("kwargs,message", [
    ({"max_turns": 0}, "max_turns must be a positive int, got 0"),
    ({"max_tokens": -5}, "max_tokens must be a positive int, got -5"),
    ({"tool_timeout": 0}, "tool_timeout must be a positive float"),
    ({"format": "nous"}, "unknown tool format 'nous'"),
    ({"temperature": -1}, "temperature must be >= 0"),
])
def test_bad_settings(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Agent(Script([]), **kwargs)


def test_bad_model_and_task():
    with pytest.raises(ValueError, match="expected an LLM, a URL, a model name or a backend, got int"):
        Agent(42)
    with pytest.raises(ValueError, match="the task is empty"):
        Agent(Script([])).run("  ")
    with pytest.raises(ValueError, match="the task must be a string or a non-empty list of messages"):
        Agent(Script([])).run([])


FORMAT_SCRIPTS = {  # format -> (turn 1 with two calls or one, turn 2 answer, what turn 2's prompt ends with)
    "hermes": (hermes_call("add", '{"a": 2, "b": 3}'), "It is 5.", None),
    "qwen-agent": ('I will add.\n✿FUNCTION✿: add\n✿ARGS✿: {"a": 2, "b": 3}\n✿RESULT✿: 99', ": It is 5.",
                   '✿FUNCTION✿: add\n✿ARGS✿: {"a": 2, "b": 3}\n✿RESULT✿: 5\n✿RETURN✿'),
    "react": ('Thought: add them\nAction: add\nAction Input: {"a": 2, "b": 3}\nObservation: 99',
              " I now know the final answer\nFinal Answer: It is 5.",
              'Thought: add them\nAction: add\nAction Input: {"a": 2, "b": 3}\nObservation: 5\nThought:'),
}


@pytest.mark.parametrize("name", list(FORMAT_SCRIPTS))
def test_each_format_runs_the_loop(name):
    first, second, continued = FORMAT_SCRIPTS[name]
    script = Script([first, second])
    events, result = events_of(Agent(script, tools=[add], format=name))
    assert kinds(events) == ["ToolCall", "ToolResult", "FinalAnswer"]
    assert events[-1].text == "It is 5." and result.answer == "It is 5."
    assert next(e for e in events if isinstance(e, ToolResult)).content == "5"  # not the 99 the model made up
    shown = "".join(e.text for e in events if isinstance(e, TextDelta))
    assert "Action Input" not in shown and "✿ARGS✿" not in shown and "<tool_call>" not in shown
    second_prompt = script.requests[1]["messages"]
    if continued is None:
        assert script.requests[0]["tools"] and script.requests[0]["stop"] == []
        assert second_prompt[-1]["role"] == "tool"
    else:  # text formats: no native tools, stop words, and the result inside the continued assistant turn
        assert script.requests[0]["tools"] is None and script.requests[0]["stop"]
        assert second_prompt[-1]["role"] == "assistant" and second_prompt[-1]["content"].endswith(continued)
    # the conversation is the same OpenAI shape whatever the format
    assert [m["role"] for m in result.messages] == ["user", "assistant", "tool", "assistant"]
    assert result.messages[1]["tool_calls"][0]["function"] == {"name": "add", "arguments": '{"a": 2, "b": 3}'}


def test_repeated_calls_are_not_run_again_and_the_answer_is_asked_for():
    again = hermes_call("add", '{"b": 3, "a": 2}')  # the same call, its keys in another order
    script = Script([hermes_call("add", '{"a": 2, "b": 3}'), again, "It is 5."])
    events, result = events_of(Agent(script, tools=[add]))
    assert kinds(events) == ["ToolCall", "ToolResult", "FinalAnswer"]
    assert (result.answer, result.turns, result.tool_calls) == ("It is 5.", 3, 1)
    assert script.requests[2]["messages"][-1] == ANSWER_NOW and script.requests[2]["tools"] is None
    assert script.requests[1]["tools"] is not None  # withheld only after the nudge
    assert result.messages[-2:] == [ANSWER_NOW, {"role": "assistant", "content": "It is 5."}]


def test_repeats_after_the_nudge_run_into_the_turn_limit():
    script = Script([hermes_call("add", '{"a": 2, "b": 3}')] * 4)
    events, result = events_of(Agent(script, tools=[add], max_turns=4))
    assert result.stopped == "max_turns" and result.tool_calls == 1
    assert sum(m == ANSWER_NOW for m in result.messages) == 1
    assert [r["tools"] is None for r in script.requests] == [False, False, True, True]


def test_the_breaker_can_be_turned_off():
    script = Script([hermes_call("add", '{"a": 2, "b": 3}')] * 2 + ["5"])
    _, result = events_of(Agent(script, tools=[add], break_repeats=False))
    assert result.tool_calls == 2 and ANSWER_NOW not in result.messages
