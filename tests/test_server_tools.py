"""Tool-call parsing (zenlm/server/tools.py) on golden texts, whole and streamed in every split.

The streamed deltas, joined the way OpenAI clients join them (by tool_calls[].index), must give the
same calls and content as parsing the finished text; ids and names arrive once per call.
"""

import json

import pytest

from zenlm.server.tools import ToolStream, parse

TOOLS = {"get_weather", "get_time", "ping"}

CASES = [  # (text, content, [(name, arguments as a Python value)])
    ('{"name": "get_weather", "arguments": {"city": "Paris"}}', None, [("get_weather", {"city": "Paris"})]),
    ('Let me check.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Pa{r}is \\"x\\""}}\n</tool_call>',
     "Let me check.\n", [("get_weather", {"city": 'Pa{r}is "x"'})]),
    ('<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
     '<tool_call>\n{"name": "get_time", "arguments": {"timezone": "Asia/Tokyo"}}\n</tool_call>',
     None, [("get_weather", {"city": "Paris"}), ("get_time", {"timezone": "Asia/Tokyo"})]),
    ('```json\n{"name": "get_weather", "arguments": {"city": "Zürich ☀"}}\n```', None,
     [("get_weather", {"city": "Zürich ☀"})]),
    ('{"name": "get_weather", "arguments": {"city": "Paris"}}\n{"name": "ping", "arguments": {}}', None,
     [("get_weather", {"city": "Paris"}), ("ping", {})]),
    ('<tool_call>\n{"name": "ping"}\n</tool_call>', None, [("ping", {})]),  # no parameters: "{}"
    ('<tool_call>\n{"arguments": {"city": "Oslo"}, "name": "get_weather"}\n</tool_call>', None,
     [("get_weather", {"city": "Oslo"})]),  # keys in the other order
    ('{"name": "unknown_tool", "arguments": {}}', '{"name": "unknown_tool", "arguments": {}}', []),
    ('{"answer": 42}', '{"answer": 42}', []),
    ('Use <b>bold</b> and a <tool', 'Use <b>bold</b> and a <tool', []),
    ('The JSON is {"name": "get_time"}.', 'The JSON is {"name": "get_time"}.', []),
]
BROKEN = '<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>'  # not JSON


def streamed(text: str, step: int):
    ts = ToolStream(TOOLS)
    deltas = []
    for i in range(0, len(text), step):
        deltas += ts.feed(text[i:i + step])
    deltas += ts.feed("", final=True)
    content, calls = "", {}
    for d in deltas:
        assert set(d) <= {"content", "tool_calls"} and len(d) == 1, d
        content += d.get("content", "")
        for tc in d.get("tool_calls", []):
            entry = calls.setdefault(tc["index"], {"id": None, "name": None, "arguments": ""})
            if "id" in tc:
                assert entry["id"] is None and tc["type"] == "function", "a call was announced twice"
                entry["id"], entry["name"] = tc["id"], tc["function"]["name"]
            else:
                assert set(tc["function"]) == {"arguments"}, tc
            entry["arguments"] += tc["function"].get("arguments", "")
    assert sorted(calls) == list(range(len(calls))), "tool call indexes must be 0, 1, ..."
    return content, [calls[i] for i in sorted(calls)], ts.called


@pytest.mark.parametrize("text,content,calls", CASES)
def test_parse(text, content, calls):
    got_content, got_calls = parse(text, TOOLS)
    assert got_content == (content if calls else text)
    assert [(n, json.loads(a)) for n, a in got_calls] == calls
    assert all(isinstance(a, str) for _, a in got_calls)


@pytest.mark.parametrize("text,content,calls", CASES)
@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_stream_matches_parse(text, content, calls, step):
    got_content, got_calls, called = streamed(text, step)
    assert called == bool(calls)
    assert [(c["name"], json.loads(c["arguments"])) for c in got_calls] == calls
    assert all(c["id"].startswith("call_") for c in got_calls)
    if calls:
        assert got_content == (content or "")
    elif got_calls == []:
        assert got_content == text


def test_arguments_stream_in_pieces():
    ts = ToolStream(TOOLS)
    text = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": [1, 2, 3]}}\n</tool_call>'
    pieces = [d for i in range(len(text)) for d in ts.feed(text[i])]
    args = [d["tool_calls"][0]["function"]["arguments"] for d in pieces if "id" not in d["tool_calls"][0]]
    assert len(args) > 5 and "".join(args) == '{"city": "Paris", "days": [1, 2, 3]}'
    assert pieces[0]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": ""}


def test_broken_call_falls_back_to_content():
    assert parse(BROKEN, TOOLS) == (BROKEN, [])
    content, calls, called = streamed(BROKEN, len(BROKEN))  # seen whole: nothing was announced yet
    assert (content, calls, called) == (BROKEN, [], False)
    content, calls, called = streamed(BROKEN, 1)  # the name went out before the JSON broke: it stays a call
    assert called and [c["name"] for c in calls] == ["get_weather"]


def test_no_tools_offered_means_plain_content():
    text = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
    assert parse(text, set()) == (text, [])
