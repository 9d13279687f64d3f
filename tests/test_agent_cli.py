"""`zen agent` (zenlm/cli/agent.py) against a scripted OpenAI-compatible server: the transcript on stderr,
the answer (or one JSON line) on stdout, exit 1 without an answer, and one-line errors for bad flags."""

import json

import pytest
import tiny_server
from openai_script import content, scripted_app, tool_call

from zenlm.agent.formats import FORMATS
from zenlm.cli import agent as agent_cli
from zenlm.cli import main


@pytest.fixture
def server():
    running = []

    def start(turns):
        app, requests = scripted_app(turns)
        running.append(tiny_server.Running(app))
        return running[-1].url, requests
    yield start
    for r in running:
        r.stop()


def test_answer_on_stdout_transcript_on_stderr(server, capsys):
    url, requests = server([content("Paris is the ", "capital of France.")])
    assert main(["agent", "What is the capital of France?", "--base-url", url, "--system", "Be brief."]) == 0
    out, err = capsys.readouterr()
    assert out == "Paris is the capital of France.\n"
    assert "Paris is the capital of France." in err
    assert requests[0]["body"]["messages"][0] == {"role": "system", "content": "Be brief."}
    assert "tools" not in requests[0]["body"]  # no --tools: none offered


def test_json_line_and_a_failed_call_in_the_transcript(server, capsys):
    url, _ = server([tool_call(0, "c1", "search", '{"q": "x"}'), content("I could not search.")])
    assert main(["agent", "Find x.", "--base-url", url, "--json", "--format", "hermes"]) == 0
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1]) == {"answer": "I could not search.", "turns": 2,
                                                        "tool_calls": 1}
    assert len(out.strip().splitlines()) == 1
    assert '[call] search {"q": "x"}' in err
    assert "[error] search: Error: there is no tool named 'search'; the tools are: none." in err


def test_turn_limit_exits_1_with_the_reason(server, capsys):
    url, _ = server([tool_call(0, "c1", "search", "{}")])
    assert main(["agent", "Find x.", "--base-url", url, "--json", "--max-turns", "1"]) == 1
    out, err = capsys.readouterr()
    assert json.loads(out) == {"answer": None, "turns": 1, "tool_calls": 1, "stopped": "max_turns"}
    assert "zen: the agent stopped: no final answer within 1 turns" in err


@pytest.mark.parametrize("argv,message", [
    (["--max-turns", "0"], "--max-turns must be at least 1, got 0"),
    (["--max-tokens", "lots"], "--max-tokens must be a whole number, got 'lots'"),
    (["--tools", "python,shell"], "unknown tool 'shell'; the built-in tools are: python"),
    (["--api-key", "k"], "--api-key is for a server; give --base-url too"),
    (["--base-url", "localhost:8000"], "the base URL must start with http:// or https://"),
])
def test_bad_flags_are_one_line_and_exit_1(argv, message, capsys):
    assert main(["agent", "task", *argv]) == 1
    err = capsys.readouterr().err
    assert err.startswith("zen: error: ") and message in err and err.count("\n") == 1


def test_format_choices_are_the_formats():
    assert agent_cli.FORMATS == tuple(FORMATS)  # the CLI lists them without importing the agent package
