"""The agent on the real default model (zen-Coder-0.5B-Instruct, int4): once in process, once through a real
`zen serve` subprocess with the OpenAI-compatible backend. The tool is a lookup of a made-up city, so the
answer can only come from the tool's result; the model must call it with the right argument."""

import json
import time

import pytest
import serve_process

from zenlm.agent import Agent, FinalAnswer, ToolCall, ToolResult

TASK = "How many people live in Zorbaville?"
POPULATION = 48213


def make_lookup(calls: list):
    def city_population(city: str) -> int:
        """Look up the population of a city.

        Args:
            city: The city's name.
        """
        calls.append(city)
        return POPULATION if city.strip().lower() == "zorbaville" else 0
    return city_population


def check(run, calls: list, started: float) -> None:
    events = list(run)
    result = run.result
    print(f"\n{run.result.turns} turns, {result.tool_calls} tool calls, {result.tokens} tokens, "
          f"{time.monotonic() - started:.1f} s; answer {result.answer!r}")
    tool_calls = [e for e in events if isinstance(e, ToolCall)]
    assert tool_calls and tool_calls[0].name == "city_population"
    assert json.loads(tool_calls[0].arguments) == {"city": "Zorbaville"}
    assert calls and calls[0] == "Zorbaville"
    assert any(isinstance(e, ToolResult) and e.content == str(POPULATION) for e in events)
    assert isinstance(events[-1], FinalAnswer) and result.answer is not None
    assert str(POPULATION) in result.answer.replace(",", "")  # the answer uses the result


@pytest.fixture(scope="module")
def int4_llm():
    from zenlm.engine.llm import LLM

    return LLM("default", dtype="int4", progress=False)


def test_real_model_in_process(int4_llm):
    calls = []
    started = time.monotonic()
    agent = Agent(int4_llm, tools=[make_lookup(calls)], max_turns=4, turn_tokens=96)
    check(agent.stream(TASK), calls, started)


def test_real_model_through_zen_serve(gguf_path, tmp_path):
    proc, url = serve_process.start(["--model", str(gguf_path), "--dtype", "int4"], tmp_path / "serve.txt")
    try:
        calls = []
        started = time.monotonic()
        with Agent(url + "/v1", tools=[make_lookup(calls)], max_turns=4, turn_tokens=96) as agent:
            check(agent.stream(TASK), calls, started)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_real_model_computes_with_the_sandboxed_python_tool(int4_llm):
    """An exact answer the model cannot know by heart, from the code interpreter (the real sandbox)."""
    started = time.monotonic()
    agent = Agent(int4_llm, tools=["python"], max_turns=4, turn_tokens=256)
    run = agent.stream("What is 123456789 * 987654321? Use the python tool to compute it.")
    events = list(run)
    print(f"\n{run.result.turns} turns, {run.result.tool_calls} tool calls, {time.monotonic() - started:.1f} s; "
          f"answer {run.result.answer!r}")
    assert any(isinstance(e, ToolResult) and "121932631112635269" in e.content for e in events)
    assert run.result.answer is not None and "121932631112635269" in run.result.answer.replace(",", "")
