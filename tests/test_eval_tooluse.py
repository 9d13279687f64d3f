"""tooluse: the generated suite (deterministic, consistent with its own schemas), the BFCL-style scorer on
golden answers, OpenAI tool_calls turned back into Hermes text, the category report, and real runs of
the default model in process and through a real `zen serve` (the openai client included) that agree."""

import json
import os
import subprocess
import sys
from collections import Counter

import pytest
import serve_process

from zenlm.eval.backends import chat_text
from zenlm.eval.run import read_samples, run
from zenlm.eval.task import Sample
from zenlm.eval.tasks import get_task
from zenlm.eval.tasks.tooluse import COUNTS, ToolUse
from zenlm.eval.tasks.tooluse.check import read_calls, standard
from zenlm.eval.tasks.tooluse.functions import FUNCTIONS
from zenlm.tokenizer.tool_calls import parse

TASK = ToolUse()
BY_NAME = {f.name: f for f in FUNCTIONS}


def sample(*names: str, expected: list[dict]) -> Sample:
    return Sample("tooluse/test/0", [{"role": "user", "content": "?"}], expected,
                  tools=[BY_NAME[n].tool() for n in names])


def tagged(*calls) -> str:
    return "\n".join(f"<tool_call>\n{json.dumps({'name': n, 'arguments': a})}\n</tool_call>" for n, a in calls)


def correct(s: Sample, text: str) -> bool:
    return TASK.score(s, text)[1]


WEATHER = BY_NAME["get_current_weather"].expect({"location": ["New York City", "New York"]})
MONEY = BY_NAME["convert_currency"].expect({"amount": [100], "from_currency": ["USD"], "to_currency": ["EUR"]})
TIMER = BY_NAME["set_timer"].expect({"duration_seconds": [300]})
STATS = BY_NAME["calculate_statistic"].expect({"numbers": [[1, 2.5, 3]], "statistic": ["median"]})
FLIGHT = BY_NAME["search_flights"].expect({"origin": ["CDG"], "destination": ["JFK"], "date": ["2025-03-05"],
                                           "nonstop_only": [True]})
STOCK = BY_NAME["get_stock_price"].expect({"symbol": ["AAPL"]}, {"exchange": ["NASDAQ"]})


# ---- the suite

def dump(samples: list[Sample]) -> str:
    return json.dumps([[s.id, s.prompt, s.reference, s.tools, s.meta] for s in samples], sort_keys=True)


def test_suite_is_deterministic_with_the_category_counts():
    samples = get_task("tooluse").samples("chat")
    assert dump(samples) == dump(ToolUse().samples("chat"))
    assert len(samples) == sum(COUNTS.values()) == 200 and len({s.id for s in samples}) == 200
    assert Counter(s.meta["category"] for s in samples) == COUNTS
    assert all(s.id.startswith(f"tooluse/{s.meta['category']}/") for s in samples)
    assert Counter(s.meta["category"] for s in samples[:8]) == {c: 2 for c in COUNTS}  # --limit 8: two of each
    assert len({s.prompt[0]["content"] for s in samples}) > 180  # the values vary
    # another process, with another hash seed, draws the very same suite
    code = ("import json; from zenlm.eval.tasks.tooluse import ToolUse; s = ToolUse().samples('chat'); "
            "print(json.dumps([[x.id, x.prompt, x.reference, x.tools, x.meta] for x in s], sort_keys=True))")
    env = os.environ | {"PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.strip() == dump(samples)


def test_every_case_fits_its_tools_and_its_gold_answer_scores_right():
    for s in TASK.samples("chat"):
        category, offered = s.meta["category"], {t["function"]["name"]: t["function"] for t in s.tools}
        assert len(offered) == len(s.tools), s.id
        n_calls = {"simple": (1, 1), "multiple": (1, 1), "parallel": (2, 3), "irrelevance": (0, 0)}[category]
        n_tools = {"simple": (1, 1), "multiple": (2, 4), "parallel": (1, 4), "irrelevance": (1, 3)}[category]
        assert n_calls[0] <= len(s.reference) <= n_calls[1] and n_tools[0] <= len(offered) <= n_tools[1], s.id
        gold, full = [], []
        for e in s.reference:
            params = offered[e["name"]]["parameters"]
            assert set(e["arguments"]) == set(params["properties"]), s.id
            assert not set(e["optional"]) & set(params["required"]), s.id
            assert all(e["arguments"][p] for p in e["arguments"] if p not in e["optional"]), s.id
            gold.append((e["name"], {p: v[0] for p, v in e["arguments"].items() if p not in e["optional"]}))
            full.append((e["name"], {p: v[-1] for p, v in e["arguments"].items() if v}))
        assert correct(s, tagged(*reversed(gold))) and correct(s, tagged(*full)), s.id
        if category == "irrelevance":
            assert correct(s, "I cannot help with that using these tools.") and not correct(s, tagged(
                (s.tools[0]["function"]["name"], {})))
        else:
            assert not correct(s, "No tool needed.") and not correct(s, tagged(*gold[1:])), s.id


def test_completion_mode_and_shots_are_refused():
    with pytest.raises(ValueError, match="chat mode"):
        TASK.samples("completion")
    with pytest.raises(ValueError, match="0-shot"):
        TASK.samples("chat", num_shots=3)


# ---- the scorer, golden answers

def test_one_call_right_in_every_form_the_parser_reads():
    s = sample("get_current_weather", expected=[WEATHER])
    call = {"name": "get_current_weather", "arguments": {"location": "New York City"}}
    for text in (tagged(("get_current_weather", {"location": "New York City"})), json.dumps(call),
                 f"```json\n{json.dumps(call, indent=2)}\n```",
                 f"Let me look.\n<tool_call>{json.dumps(call)}</tool_call>"):
        assert TASK.score(s, text) == ('[{"name":"get_current_weather","arguments":{"location":"New York City"}}]',
                                       True), text


@pytest.mark.parametrize("arguments,ok", [
    ({"location": "new york city"}, True),  # strings: case, spaces and , . - _ / * ^ do not count
    ({"location": "New-York"}, True),
    ({"location": "NEW YORK, "}, True),
    ({"location": "Boston"}, False),  # wrong value
    ({}, False),  # a required parameter missing
    ({"location": "New York", "country": "USA"}, False),  # a parameter the function does not have
    ({"location": "New York", "unit": "celsius"}, True),  # an optional one given its default
    ({"location": "New York", "unit": "fahrenheit"}, False),  # ... or another value the query did not ask for
    ({"location": "New York", "unit": "Celsius"}, False),  # enums compare exactly
    ({"location": ["New York"]}, False),  # a list is not a string
    ({"location": 42}, False),
])
def test_arguments(arguments, ok):
    s = sample("get_current_weather", expected=[WEATHER])
    assert correct(s, tagged(("get_current_weather", arguments))) is ok


def test_wrong_function_name():
    s = sample("get_current_weather", "get_current_time", expected=[WEATHER])
    assert not correct(s, tagged(("get_current_time", {"timezone": "America/New_York"})))
    assert not correct(s, tagged(("get_weather", {"location": "New York"})))


@pytest.mark.parametrize("name,expected,arguments,ok", [
    ("convert_currency", MONEY, {"amount": 100, "from_currency": "usd", "to_currency": "EUR"}, True),
    ("convert_currency", MONEY, {"amount": 100.0, "from_currency": "USD", "to_currency": "EUR"}, True),
    ("convert_currency", MONEY, {"amount": "100", "from_currency": "USD", "to_currency": "EUR"}, False),
    ("convert_currency", MONEY, {"amount": 100.5, "from_currency": "USD", "to_currency": "EUR"}, False),
    ("set_timer", TIMER, {"duration_seconds": 300}, True),
    ("set_timer", TIMER, {"duration_seconds": 300.0}, False),  # a float is not an integer (as BFCL)
    ("set_timer", TIMER, {"duration_seconds": "300"}, False),
    ("set_timer", TIMER, {"duration_seconds": 300, "label": "tea"}, False),  # unasked optional without a default
    ("set_timer", TIMER, {"duration_seconds": 300, "label": ""}, True),  # an empty string leaves it out (BFCL)
    ("search_flights", FLIGHT, {"origin": "CDG", "destination": "", "date": "2025-03-05", "nonstop_only": True},
     False),  # ... but not a required one
    ("calculate_statistic", STATS, {"numbers": [1, 2.5, 3], "statistic": "median"}, True),
    ("calculate_statistic", STATS, {"numbers": [1.0, 2.5, 3], "statistic": "median"}, True),
    ("calculate_statistic", STATS, {"numbers": [3, 2.5, 1], "statistic": "median"}, False),  # order counts
    ("calculate_statistic", STATS, {"numbers": [1, 2.5], "statistic": "median"}, False),
    ("calculate_statistic", STATS, {"numbers": [1, 2.5, 3], "statistic": "mean"}, False),
    ("search_flights", FLIGHT, {"origin": "CDG", "destination": "JFK", "date": "2025/03/05", "nonstop_only": True},
     True),
    ("search_flights", FLIGHT, {"origin": "CDG", "destination": "JFK", "date": "2025-03-05", "nonstop_only": True,
                                "passengers": 1}, True),
    ("search_flights", FLIGHT, {"origin": "CDG", "destination": "JFK", "date": "2025-03-05", "nonstop_only": 1},
     False),  # 1 is not true
    ("search_flights", FLIGHT, {"origin": "CDG", "destination": "JFK", "date": "2025-03-05"}, False),
    ("search_flights", FLIGHT, {"origin": "CDG", "destination": "JFK", "date": "2025-03-05", "nonstop_only": True,
                                "passengers": True}, False),  # a boolean is not an integer
    ("get_stock_price", STOCK, {"symbol": "AAPL"}, True),
    ("get_stock_price", STOCK, {"symbol": "AAPL", "exchange": "NASDAQ"}, True),  # an unstated value allowed
    ("get_stock_price", STOCK, {"symbol": "AAPL", "exchange": "NYSE"}, False),
])
def test_types(name, expected, arguments, ok):
    s = sample(name, expected=[expected])
    assert correct(s, tagged((name, arguments))) is ok


def test_string_standard_form():
    assert standard("April 1, 2024") == standard("april 1 2024") == "april12024"
    assert standard("Europe/Paris") == standard("europe_paris") and standard("it's") == 'it"s'


def test_parallel_calls():
    s = sample("get_current_weather", "convert_currency", expected=[
        WEATHER, BY_NAME["get_current_weather"].expect({"location": ["Oslo"]}), MONEY])
    ny, oslo = ("get_current_weather", {"location": "New York"}), ("get_current_weather", {"location": "Oslo"})
    money = ("convert_currency", {"amount": 100, "from_currency": "USD", "to_currency": "EUR"})
    assert correct(s, tagged(ny, oslo, money)) and correct(s, tagged(money, oslo, ny))  # any order
    assert correct(s, "\n".join(json.dumps({"name": n, "arguments": a}) for n, a in (oslo, money, ny)))  # bare JSON
    assert not correct(s, tagged(ny, money))  # one missing
    assert not correct(s, tagged(ny, oslo, money, oslo))  # one extra
    assert not correct(s, tagged(ny, ny, money))  # each expected call is matched once
    assert not correct(s, tagged(ny, oslo, money) + "\n<tool_call>\n{\"name\": \"convert_currency\", \n</tool_call>")


def test_irrelevance():
    s = sample("get_current_weather", "convert_currency", expected=[])
    assert TASK.score(s, "The capital of Australia is Canberra.") == ("[]", True)
    assert TASK.score(s, "") == ("[]", True)
    assert not correct(s, tagged(("get_current_weather", {"location": "Canberra"})))
    assert not correct(s, '{"name": "get_current_weather", "arguments": {"location": "Canberra"}}')
    # a call the parser cannot read, or to a function that is not offered, is still a call
    assert TASK.score(s, '<tool_call>\n{"name": "get_current_weather", "arguments": {"location": \n</tool_call>') == \
        ('[{"name":null,"error":"unreadable"}]', False)
    assert not correct(s, '```json\n{"name": "get_capital", "arguments": {"country": "Australia"}}\n```')
    assert not correct(s, '{"arguments": {"country": "Australia"}, "name": "get_capital"}')
    assert correct(s, 'A JSON object looks like {"name": "x"}.')  # prose that shows JSON is not a call


@pytest.mark.parametrize("text", [
    '<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "New York"\n</tool_call>',  # broken JSON
    '<tool_call>\n{"name": "get_current_weather", "arguments": "{\\"location\\": "}\n</tool_call>',  # broken string
    '<tool_call>\n{"name": "get_current_weather", "arguments": [1, 2]}\n</tool_call>',  # not an object
    '<tool_call>\n{"arguments": {"location": "New York"}}\n</tool_call>',  # no name
    '<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "New York"}}\n</tool_call>\n<tool_call>',
    '{"name": "get_current_weather", "arguments": {"location": "New York"}',  # cut short
    "<tool_call>", "{", "```json\n", "\x00\ud800", "null", "[]", "[1]",
])
def test_malformed_output_is_wrong_and_never_raises(text):
    s = sample("get_current_weather", expected=[WEATHER])
    answer, ok = TASK.score(s, text)
    assert ok is False and isinstance(json.loads(answer), list)


# ---- a server's tool_calls, back to Hermes text

def server_message(text: str, tools: set[str]) -> dict:
    """What zen serve's chat route answers for a model that wrote `text` (server/chat.py's rule)."""
    content, calls = parse(text, tools)
    if not calls:
        return {"role": "assistant", "content": text}
    return {"role": "assistant", "content": content, "tool_calls": [
        {"id": f"call_{i}", "type": "function", "function": {"name": n, "arguments": a}}
        for i, (n, a) in enumerate(calls)]}


def test_tool_calls_become_hermes_blocks():
    message = {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_current_weather",
                                                          "arguments": '{"location": "Oslo"}'}},
        {"id": "call_2", "type": "function", "function": {"name": "convert_currency", "arguments": '{"amount": 5}'}}]}
    assert chat_text(message) == (
        '<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "Oslo"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "convert_currency", "arguments": {"amount": 5}}\n</tool_call>')
    assert chat_text(message | {"content": "Checking."}).startswith("Checking.\n<tool_call>\n")
    assert chat_text({"role": "assistant", "content": "Just text."}) == "Just text."
    assert chat_text({"role": "assistant", "content": None}) == ""
    broken = {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "get_current_weather", "arguments": '{"location": '}}]}
    calls, unreadable = read_calls(chat_text(broken), {"get_current_weather"})
    assert (calls, unreadable) == ([], 1)


@pytest.mark.parametrize("text", [
    '```json\n{\n  "name": "get_current_weather",\n  "arguments": {"location": "New York"}\n}\n```',
    'Sure.\n<tool_call>\n{"name": "get_current_weather", "arguments": {"location": "NYC"}}\n</tool_call>',
    '{"name": "get_current_weather", "arguments": {"location": "New York"}}\n'
    '{"name": "convert_currency", "arguments": {"amount": 100, "from_currency": "USD", "to_currency": "EUR"}}',
    '<tool_call>\n{"name": "get_current_weather", "arguments": {"location": \n</tool_call>',
    '{"name": "get_capital", "arguments": {}}', "It is sunny in New York.",
])
def test_both_backends_score_alike(text):
    names = {"get_current_weather", "convert_currency"}
    for expected in ([WEATHER], [WEATHER, MONEY], []):
        s = sample(*sorted(names), expected=expected)
        assert TASK.score(s, chat_text(server_message(text, names))) == TASK.score(s, text), (text, expected)


def test_report_writes_accuracy_per_category(tmp_path):
    rows = [{"id": "tooluse/simple/0", "correct": True}, {"id": "tooluse/simple/1", "correct": False},
            {"id": "tooluse/irrelevance/0", "correct": True}]
    [path] = TASK.report(rows, tmp_path)
    assert path == tmp_path / "tooluse-categories.json"
    assert json.loads(path.read_text()) == {"simple": {"n": 2, "correct": 1, "accuracy": 0.5},
                                            "irrelevance": {"n": 1, "correct": 1, "accuracy": 1.0}}


# ---- the real default model, in process and through zen serve

MAX_TOKENS = 128


@pytest.fixture(scope="module")
def engine_run(gguf_path, tmp_path_factory):
    """The first 8 cases (two per category) and the first 8 simple ones, answered in process at int4."""
    from zenlm.eval.backends import EngineBackend

    out = tmp_path_factory.mktemp("tooluse-engine")
    backend = EngineBackend("default", "int4")
    result = run(["tooluse"], backend, out, limit=8, max_tokens=MAX_TOKENS, progress=False)["tooluse"]
    simple = [s for s in TASK.samples("chat") if s.meta["category"] == "simple"][:8]
    answers = {s.id: text for s, text in backend.answers(simple, MAX_TOKENS)}
    return out, result, {s.id: TASK.score(s, answers[s.id]) for s in simple}


def test_real_run_in_process(engine_run):
    out, result, simple = engine_run
    assert (result["n"], result["metric"], result["mode"]) == (8, "accuracy", "chat")
    assert result["files"] == [str(out / "tooluse-categories.json")]
    per = json.loads((out / "tooluse-categories.json").read_text())
    assert {c: per[c]["n"] for c in per} == {c: 2 for c in COUNTS}
    assert sum(per[c]["correct"] for c in per) == result["correct"]
    rows = read_samples(out / "samples.jsonl")
    for r in rows:
        assert isinstance(json.loads(r["answer"]), list) and r["output"], r
    made = [r for r in rows if r["id"].split("/")[1] != "irrelevance"]
    assert all(json.loads(r["answer"]) for r in made)  # the model calls a tool when one fits
    assert sum(ok for _, ok in simple.values()) >= 4, simple  # one offered tool: most calls exactly right


def test_real_run_against_zen_serve_matches_in_process(engine_run, gguf_path, tmp_path):
    import openai

    engine_out, engine_result, _ = engine_run
    proc, url = serve_process.start(["--model", str(gguf_path), "--dtype", "int4", "--served-model-name", "zen-test"],
                                    tmp_path / "serve.txt")
    try:
        out = tmp_path / "out"
        cmd = [sys.executable, "-m", "zenlm", "eval", "tooluse", "--base-url", url, "--limit", "8", "--max-tokens",
               str(MAX_TOKENS), "--output", str(out), "--json", "--concurrency", "4", "--no-progress"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        assert done.returncode == 0, done.stderr
        result = json.loads((out / "results.json").read_text())["tooluse"]
        assert json.loads(done.stdout.strip().splitlines()[-1]) == {"tooluse": {"accuracy": result["value"]}}
        assert (result["n"], result["dtype"], result["model"]) == (8, "server", "zen-test")
        served = {r["id"]: r for r in read_samples(out / "samples.jsonl")}
        local = {r["id"]: r for r in read_samples(engine_out / "samples.jsonl")}
        assert sorted(served) == sorted(local)
        for sid, r in served.items():  # greedy decoding: the same calls, scored the same, by either route
            assert (r["answer"], r["correct"]) == (local[sid]["answer"], local[sid]["correct"]), sid
        assert result["correct"] == engine_result["correct"]
        # the openai client gets the same reply for a case where a call is expected
        s = next(x for x in TASK.samples("chat") if x.id == "tooluse/simple/0")
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
        reply = client.chat.completions.create(model="zen-test", messages=s.prompt, tools=s.tools, temperature=0,
                                               max_tokens=MAX_TOKENS, extra_body={"repetition_penalty": 1.0})
        assert reply.choices[0].message.tool_calls, reply
        assert chat_text(reply.choices[0].message.model_dump()) == served[s.id]["output"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
