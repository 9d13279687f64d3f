"""zen serve end to end: one real server process (int4, API key from ZEN_API_KEY), driven with the openai client.

Covers chat and completions (plain, streamed, n, stop, seed, logprobs, logit_bias, echo), usage with
cached tokens, tool calls (auto, none, required, named, streamed, multi-turn), JSON mode and JSON
schema (validated with jsonschema), auth, bad input, client disconnects, metrics, Ollama routes, Ctrl-C.
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest

KEY = "test-key-123"
GREEDY = {"temperature": 0, "extra_body": {"repetition_penalty": 1.0}}
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Get the current weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "description": "Get the local time in a timezone",
    "parameters": {"type": "object", "properties": {"timezone": {"type": "string"}}, "required": ["timezone"]}}}
PARIS = [{"role": "user", "content": "What's the weather like in Paris right now?"}]
PERSON = {"type": "object", "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0},
                                           "languages": {"type": "array", "items": {"type": "string"}}},
          "required": ["name", "age", "languages"], "additionalProperties": False}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    log = tmp_path_factory.mktemp("serve") / "stderr.txt"
    env = {**os.environ, "ZEN_API_KEY": KEY}
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "zenlm", "serve", "--port", "0", "--dtype", "int4"],
                                stdout=subprocess.DEVNULL, stderr=err, env=env)
    deadline = time.time() + 900
    url = None
    while time.time() < deadline and proc.poll() is None and url is None:
        m = re.search(r"on (http://127\.0\.0\.1:\d+)/v1", log.read_text())
        url = m.group(1) if m else time.sleep(0.5)
    assert url, f"zen serve did not start:\n{log.read_text()}"
    yield {"url": url, "proc": proc, "log": log}
    if proc.poll() is None:
        proc.kill()
        proc.wait()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=KEY, max_retries=0, timeout=600)


@pytest.fixture(scope="module")
def http(server):
    with httpx.Client(base_url=server["url"], headers={"Authorization": f"Bearer {KEY}"}, timeout=600) as c:
        yield c


def sse_events(response) -> list:
    """The data payloads of an SSE response, JSON-decoded except the final [DONE]."""
    events = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def assert_error(r: httpx.Response, status: int, *words: str):
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}, err
    assert "Traceback" not in r.text
    for w in words:
        assert w in err["message"], err["message"]
    return err


# ---- basics ---------------------------------------------------------------------------------------

def test_health_is_open_and_v1_needs_the_key(server):
    assert httpx.get(server["url"] + "/health").json() == {"status": "ok"}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
        r = httpx.get(server["url"] + "/v1/models", headers=headers)
        assert_error(r, 401, "API key")
    r = httpx.post(server["url"] + "/api/chat", json={"model": "default", "messages": []})
    assert r.status_code == 401
    assert httpx.get(server["url"] + "/v1/models", headers={"Authorization": f"Bearer {KEY}"}).status_code == 200
    preflight = httpx.options(server["url"] + "/v1/chat/completions", headers={  # loopback origins are allowed
        "Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert preflight.status_code == 200 and preflight.headers["access-control-allow-origin"] == "http://localhost:5173"


def test_port_in_use_fails_fast(server):
    port = server["url"].rsplit(":", 1)[1]
    r = subprocess.run([sys.executable, "-m", "zenlm", "serve", "--port", port], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip() == f"zen: error: cannot listen on 127.0.0.1:{port}: Address already in use"


def test_models_and_tokenizer_routes(client, http):
    models = client.models.list().data
    assert [m.id for m in models] == ["default"]
    assert models[0].model_extra["max_model_len"] == 32768
    tok = http.post("/tokenize", json={"prompt": "Hello world", "return_token_strs": True}).json()
    assert tok["count"] == len(tok["tokens"]) == 2 and tok["token_strs"] == ["Hello", "Ġworld"]
    assert http.post("/detokenize", json={"tokens": tok["tokens"]}).json() == {"prompt": "Hello world"}
    info = http.get("/tokenizer_info").json()
    assert info["vocab_size"] == 151936 and 151645 in info["eos_token_ids"] and "<|im_start|>" in info["chat_template"]


def test_chat_plain_and_streamed_agree(client, http):
    msgs = [{"role": "user", "content": "Write a paragraph about the ocean."}]
    plain = client.chat.completions.create(model="default", messages=msgs, max_tokens=12, **GREEDY)
    assert plain.object == "chat.completion" and plain.choices[0].finish_reason == "length"
    assert plain.usage.completion_tokens == 12 and plain.usage.total_tokens == plain.usage.prompt_tokens + 12
    body = {"model": "default", "messages": msgs, "max_tokens": 12, "temperature": 0, "repetition_penalty": 1.0,
            "stream": True, "stream_options": {"include_usage": True}}
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"} and len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 12
    assert chunks[-2]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "length"}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks[:-2])
    assert text == plain.choices[0].message.content


def test_completions_prompt_forms(client, http):
    one = client.completions.create(model="default", prompt="def fibonacci(n):", max_tokens=8, **GREEDY)
    assert one.object == "text_completion" and one.usage.completion_tokens == 8 and one.choices[0].text
    ids = http.post("/tokenize", json={"prompt": "def fibonacci(n):"}).json()["tokens"]
    by_ids = client.completions.create(model="default", prompt=ids, max_tokens=8, **GREEDY)
    assert by_ids.choices[0].text == one.choices[0].text
    two = client.completions.create(model="default", prompt=["def fibonacci(n):", "import numpy as"],
                                    max_tokens=8, **GREEDY)
    assert [c.index for c in two.choices] == [0, 1] and two.choices[0].text == one.choices[0].text
    assert two.choices[1].text.startswith(" np")
    streamed = client.completions.create(model="default", prompt="def fibonacci(n):", max_tokens=8, stream=True,
                                         **GREEDY)
    assert "".join(c.choices[0].text for c in streamed if c.choices) == one.choices[0].text


def test_n_seed_and_sampling_params(client):
    args = dict(model="default", messages=[{"role": "user", "content": "Write a short poem about the sea."}],
                max_tokens=8, temperature=1.0, top_p=0.95, n=3, seed=7,
                extra_body={"top_k": 50, "min_p": 0.01, "repetition_penalty": 1.1})
    a = client.chat.completions.create(**args)
    b = client.chat.completions.create(**args)
    assert [c.index for c in a.choices] == [0, 1, 2]
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert len({c.message.content for c in a.choices}) > 1  # each choice draws its own stream
    assert 3 <= a.usage.completion_tokens <= 24
    c = client.chat.completions.create(**{**args, "seed": 8, "n": 1, "presence_penalty": 1.5, "frequency_penalty": 1.0})
    assert c.choices[0].message.content != a.choices[0].message.content


def test_stop_and_max_completion_tokens(client):
    msgs = [{"role": "user", "content": "Write a paragraph about the ocean."}]
    free = client.chat.completions.create(model="default", messages=msgs, max_tokens=30, **GREEDY)
    text = free.choices[0].message.content
    stop = " " + text.split(" ")[4]  # a string the answer is known to contain
    cut = client.chat.completions.create(model="default", messages=msgs, max_tokens=30, stop=[stop, "@@"], **GREEDY)
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].message.content == text[:text.index(stop)]
    short = client.chat.completions.create(model="default", messages=msgs, max_completion_tokens=2, **GREEDY)
    assert short.choices[0].finish_reason == "length" and short.usage.completion_tokens == 2


def test_logprobs_and_logit_bias(client, http):
    msgs = [{"role": "user", "content": "Name a color."}]
    r = client.chat.completions.create(model="default", messages=msgs, max_tokens=5, logprobs=True, top_logprobs=3,
                                       **GREEDY)
    content = r.choices[0].logprobs.content
    assert len(content) == r.usage.completion_tokens == 5
    assert "".join(t.token for t in content) == r.choices[0].message.content
    for t in content:
        assert t.logprob <= 0 and len(t.top_logprobs) == 3
        assert t.top_logprobs[0].token == t.token  # greedy picks the most likely token
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob
    first = http.post("/tokenize", json={"prompt": content[0].token}).json()["tokens"]
    assert len(first) == 1
    biased = client.chat.completions.create(model="default", messages=msgs, max_tokens=5, logit_bias={first[0]: -100},
                                            logprobs=True, **GREEDY)
    assert biased.choices[0].logprobs.content[0].token != content[0].token


def test_echo_logprobs_score_the_prompt(client):
    """Prompt log-likelihoods (one forward pass) agree with the logprobs of the same tokens generated
    through the KV-cached engine, as lm-eval-harness local-completions relies on."""
    gen = client.completions.create(model="default", prompt="The capital of France is", max_tokens=3, logprobs=2,
                                    **GREEDY)
    lp = gen.choices[0].logprobs
    full = "The capital of France is" + gen.choices[0].text
    echo = client.completions.create(model="default", prompt=full, max_tokens=0, echo=True, logprobs=1, **GREEDY)
    elp = echo.choices[0].logprobs
    assert echo.choices[0].text == full and elp.token_logprobs[0] is None and elp.top_logprobs[0] is None
    assert elp.tokens[-3:] == lp.tokens and elp.text_offset[0] == 0
    for a, b in zip(elp.token_logprobs[-3:], lp.token_logprobs):
        assert abs(a - b) < 0.1, (elp.token_logprobs[-3:], lp.token_logprobs)
    assert all(x < 0 for x in elp.token_logprobs[1:])
    # lm-eval's request: echo + max_tokens 1; the prompt's logprobs come first, then the generated token's
    lm = client.completions.create(model="default", prompt=[full], max_tokens=1, echo=True, logprobs=1, **GREEDY)
    assert lm.choices[0].logprobs.token_logprobs[:-1] == elp.token_logprobs


def test_usage_reports_cached_prompt_tokens(client):
    long = [{"role": "system", "content": "You are a careful assistant. " * 40},
            {"role": "user", "content": "Say yes."}]
    client.chat.completions.create(model="default", messages=long, max_tokens=2, **GREEDY)
    again = client.chat.completions.create(model="default", messages=long, max_tokens=2, **GREEDY)
    assert again.usage.prompt_tokens > 200
    assert again.usage.prompt_tokens_details.cached_tokens >= 200


# ---- tools ----------------------------------------------------------------------------------------

def test_tool_call_auto_plain_and_streamed(client):
    r = client.chat.completions.create(model="default", messages=PARIS, tools=[WEATHER, TIME], max_tokens=60,
                                       **GREEDY)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls", choice
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_") and call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    stream = client.chat.completions.create(model="default", messages=PARIS, tools=[WEATHER, TIME], max_tokens=60,
                                            stream=True, **GREEDY)
    calls, finish, content = {}, None, ""
    for chunk in stream:
        delta = chunk.choices[0].delta
        content += delta.content or ""
        for tc in delta.tool_calls or []:
            entry = calls.setdefault(tc.index, {"id": None, "name": None, "arguments": ""})
            if tc.id:
                assert entry["id"] is None, "id sent twice"
                entry["id"], entry["name"] = tc.id, tc.function.name
            entry["arguments"] += tc.function.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls" and content == ""
    assert list(calls) == [0] and calls[0]["name"] == "get_weather"
    assert json.loads(calls[0]["arguments"]) == {"city": "Paris"}


def test_tool_choice_none_required_and_named(client):
    none = client.chat.completions.create(model="default", messages=PARIS, tools=[WEATHER], tool_choice="none",
                                          max_tokens=20, **GREEDY)
    assert none.choices[0].message.tool_calls is None and none.choices[0].message.content
    hello = [{"role": "user", "content": "Say hello to me."}]
    req = client.chat.completions.create(model="default", messages=hello, tools=[WEATHER, TIME],
                                         tool_choice="required", max_tokens=60, **GREEDY)
    assert req.choices[0].finish_reason == "tool_calls"
    for call in req.choices[0].message.tool_calls:
        tool = {"get_weather": WEATHER, "get_time": TIME}[call.function.name]
        jsonschema.validate(json.loads(call.function.arguments), tool["function"]["parameters"])
    named = client.chat.completions.create(model="default", messages=PARIS, tools=[WEATHER, TIME],
                                           tool_choice={"type": "function", "function": {"name": "get_time"}},
                                           max_tokens=60, **GREEDY)
    calls = named.choices[0].message.tool_calls
    assert calls and {c.function.name for c in calls} == {"get_time"}
    jsonschema.validate(json.loads(calls[0].function.arguments), TIME["function"]["parameters"])


def test_tool_results_multi_turn(client, http):
    msgs = PARIS + [
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_1", "type": "function",
             "function": {"name": "get_weather", "arguments": "{\"city\": \"Paris\"}"}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "{\"temp_c\": 21, \"sky\": \"clear\"}"}]
    rendered = http.post("/tokenize", json={"messages": msgs, "tools": [WEATHER], "return_token_strs": False}).json()
    text = http.post("/detokenize", json={"tokens": rendered["tokens"]}).json()["prompt"]
    assert '"arguments": {"city": "Paris"}' in text  # parsed before templating, not double-encoded
    assert "<tool_response>\n{\"temp_c\": 21, \"sky\": \"clear\"}\n</tool_response>" in text
    r = client.chat.completions.create(model="default", messages=msgs, tools=[WEATHER], max_tokens=40, **GREEDY)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert r.usage.prompt_tokens == rendered["count"]


# ---- structured output --------------------------------------------------------------------------

def test_json_object_and_json_schema(client):
    msgs = [{"role": "user", "content": "Describe a programmer as JSON."}]
    obj = client.chat.completions.create(model="default", messages=msgs, response_format={"type": "json_object"},
                                         max_tokens=120, **GREEDY)
    assert isinstance(json.loads(obj.choices[0].message.content), dict)
    fmt = {"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON, "strict": True}}
    for temperature in (0, 1.0):
        r = client.chat.completions.create(model="default", messages=msgs, response_format=fmt, max_tokens=120,
                                           temperature=temperature, seed=3)
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), PERSON)
    stream = client.chat.completions.create(model="default", messages=msgs, response_format=fmt, max_tokens=120,
                                            stream=True, **GREEDY)
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    jsonschema.validate(json.loads(text), PERSON)


# ---- bad input ----------------------------------------------------------------------------------

def test_bad_input_gets_openai_errors(http):
    chat = {"model": "default", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    r = http.post("/v1/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert_error(r, 400, "not valid JSON")
    assert_error(http.post("/v1/chat/completions", json={**chat, "temperature": "hot"}), 400, "temperature")
    assert_error(http.post("/v1/chat/completions", json={"model": "default"}), 400, "messages")
    assert_error(http.post("/v1/chat/completions", json={**chat, "messages": []}), 400, "messages must not be empty")
    robot = {**chat, "messages": [{"role": "robot", "content": "x"}]}
    err = assert_error(http.post("/v1/chat/completions", json=robot), 400)
    assert err["param"] == "messages.0.role"
    assert_error(http.post("/v1/chat/completions", json={**chat, "max_tokens": -5}), 400, "max_tokens")
    assert_error(http.post("/v1/chat/completions", json={**chat, "max_tokens": 10**9}), 400, "at most")
    assert_error(http.post("/v1/chat/completions", json={**chat, "n": 100}), 400, "n")
    err = assert_error(http.post("/v1/chat/completions", json={**chat, "model": "gpt-4"}), 404, "gpt-4")
    assert err["code"] == "model_not_found"
    long = {**chat, "messages": [{"role": "user", "content": "hello " * 33000}]}
    err = assert_error(http.post("/v1/chat/completions", json=long), 400, "tokens", "32768")
    assert re.search(r"the prompt is 3\d{4} tokens", err["message"])
    named = {**chat, "tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}
    assert_error(http.post("/v1/chat/completions", json=named), 400, "nope")
    assert_error(http.post("/v1/chat/completions", json={**chat, "tool_choice": "required"}), 400, "tools")
    assert_error(http.post("/v1/chat/completions", json={**chat, "top_logprobs": 2}), 400, "logprobs")
    assert_error(http.post("/v1/chat/completions", json={**chat, "stream_options": {"include_usage": True}}), 400)
    bad_schema = {**chat, "response_format": {"type": "json_schema",
                                              "json_schema": {"name": "x", "schema": {"type": "strin"}}}}
    assert_error(http.post("/v1/chat/completions", json=bad_schema), 400, "strin")
    assert_error(http.post("/v1/completions", json={"model": "default", "prompt": [], "max_tokens": 2}), 400, "prompt")
    assert_error(http.post("/v1/completions", json={"model": "default", "prompt": [10**7], "max_tokens": 2}), 400)
    assert_error(http.post("/v1/chat/completions", json=[1, 2]), 400)
    many = {"model": "default", "prompt": [[100, 101]] * 40, "n": 8, "max_tokens": 2}
    assert_error(http.post("/v1/completions", json=many), 400, "320 completions")
    scored = {"model": "default", "prompt": [100] * 5000, "max_tokens": 0, "echo": True, "logprobs": 1}
    assert_error(http.post("/v1/completions", json=scored), 400, "4096", "5000 tokens")
    assert http.get("/health").json() == {"status": "ok"}
    assert http.post("/v1/chat/completions", json=chat).status_code == 200  # still serving


# ---- operations ---------------------------------------------------------------------------------

def metric(http, name: str) -> float:
    text = http.get("/metrics").text
    m = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.M)
    assert m, f"{name} not in /metrics"
    return float(m.group(1))


def wait_idle(http):
    deadline = time.time() + 30
    while metric(http, "zen_num_requests_running") and time.time() < deadline:
        time.sleep(0.2)
    assert metric(http, "zen_num_requests_running") == 0 and metric(http, "zen_kv_cache_usage_ratio") == 0


def test_disconnect_aborts_and_metrics(http):
    body = {"model": "default", "messages": [{"role": "user", "content": "Count to ten thousand."}],
            "max_tokens": 4000, "ignore_eos": True, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: ") for line in got)
        assert metric(http, "zen_num_requests_running") == 1
    wait_idle(http)
    with pytest.raises(httpx.ReadTimeout):  # a non-streamed request whose client gives up
        http.post("/v1/chat/completions", json={**body, "stream": False}, timeout=3)
    wait_idle(http)
    assert metric(http, "zen_generation_tokens_total") > 0
    assert metric(http, "zen_time_to_first_token_seconds_count") > 0
    assert metric(http, "zen_prefix_cache_hits_total") > 0
    assert 'zen_requests_total{route="/v1/chat/completions",status="200"}' in http.get("/metrics").text


def test_ollama_routes(http):
    tags = http.get("/api/tags").json()
    assert tags["models"][0]["name"] == "default"
    assert tags["models"][0]["details"]["quantization_level"] == "Q4_K_M"  # the file's, as Ollama reports it
    body = {"model": "default", "messages": [{"role": "user", "content": "Say hi"}], "stream": False,
            "options": {"temperature": 0, "num_predict": 8, "repeat_penalty": 1.0}}
    plain = http.post("/api/chat", json=body).json()
    assert plain["done"] is True and plain["message"]["role"] == "assistant" and plain["eval_count"] <= 8
    with http.stream("POST", "/api/chat", json={**body, "stream": True}) as r:
        lines = [json.loads(x) for x in r.iter_lines() if x]
    assert lines[-1]["done"] is True and all(not x["done"] for x in lines[:-1])
    assert "".join(x["message"]["content"] for x in lines) == plain["message"]["content"]
    tool = http.post("/api/chat", json={**body, "messages": PARIS, "tools": [WEATHER],
                                        "options": {"temperature": 0, "num_predict": 60}}).json()
    assert tool["message"]["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": {"city": "Paris"}}
    gen = http.post("/api/generate", json={"model": "default", "prompt": "def add(a, b):", "raw": True,
                                           "stream": False, "options": {"temperature": 0, "num_predict": 6}}).json()
    assert gen["done"] and gen["response"]
    fmt = http.post("/api/generate", json={"model": "default", "prompt": "A person as JSON", "format": PERSON,
                                           "stream": False, "options": {"temperature": 0, "num_predict": 100}}).json()
    jsonschema.validate(json.loads(fmt["response"]), PERSON)
    assert http.post("/api/chat", json={**body, "model": "nope"}).json() == {
        "error": "The model `nope` does not exist; this server serves `default`."}


def test_web_page_route(server):
    r = httpx.get(server["url"] + "/")
    page = Path(__file__).resolve().parent.parent / "zenlm" / "server" / "ui" / "index.html"
    assert r.status_code == 200
    if page.is_file():
        assert r.text == page.read_text()
    else:
        assert "zen serve is running" in r.text


def test_64_concurrent_streams_match_their_answers_alone(server):
    """64 streamed greedy requests at once (8 prompts, 8 copies each): each answer equals the one the
    same request gets alone; the engine batches them (max 16 sequences a step)."""
    import asyncio

    prompts = [f"What is {i} times {i + 3}? Answer briefly." for i in range(8)]
    client = openai.AsyncOpenAI(base_url=server["url"] + "/v1", api_key=KEY, max_retries=0, timeout=600)

    async def ask(prompt: str) -> str:
        stream = await client.chat.completions.create(model="default", messages=[{"role": "user", "content": prompt}],
                                                      max_tokens=8, stream=True, **GREEDY)
        return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

    async def run():
        alone = [await ask(p) for p in prompts]
        together = await asyncio.gather(*[ask(prompts[i % 8]) for i in range(64)])
        return alone, together

    alone, together = asyncio.run(run())
    assert all(alone) and len(set(alone)) > 1
    assert [together[i] for i in range(64)] == [alone[i % 8] for i in range(64)]


def test_memory_is_flat_over_1000_requests(server, http):
    def rss_mb() -> float:
        status = Path(f"/proc/{server['proc'].pid}/status").read_text()
        return int(re.search(r"VmRSS:\s+(\d+)", status).group(1)) / 1024

    body = {"model": "default", "max_tokens": 1, "temperature": 0}
    for i in range(100):  # warm-up: allocator pools, caches, lazily built objects
        http.post("/v1/completions", json={**body, "prompt": f"Hello {i}"}).raise_for_status()
    before = rss_mb()
    for i in range(900):
        http.post("/v1/completions", json={**body, "prompt": f"Hello {i % 50} there"}).raise_for_status()
    assert rss_mb() - before < 50, (before, rss_mb())
    assert metric(http, "zen_num_requests_running") == 0


LM_EVAL_TASK = """task: zen_capitals
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{answer}}}}"
metric_list:
  - metric: acc
"""
CAPITALS = [("The capital of France is", ["Paris", "London", "Berlin"], 0),  # lm-eval puts " " between
            ("The capital of Italy is", ["Madrid", "Rome", "Vienna"], 1),
            ("def add(a, b):\n    return", ["a + b", "a - b", "None"], 0)]


def test_lm_eval_local_completions(server, tmp_path, monkeypatch):
    """lm-eval-harness drives /v1/completions (echo + logprobs) with the server's own tokenizer
    endpoints; its log-likelihoods equal zenlm's own, computed here in process."""
    lm_eval = pytest.importorskip("lm_eval")
    from lm_eval.tasks import TaskManager

    from zenlm.engine.llm import LLM

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)  # what local-completions sends as its Bearer token
    data = tmp_path / "capitals.jsonl"
    data.write_text("".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in CAPITALS))
    (tmp_path / "zen_capitals.yaml").write_text(LM_EVAL_TASK.format(data=data))
    out = lm_eval.simple_evaluate(
        model="local-completions", tasks=["zen_capitals"], task_manager=TaskManager(include_path=str(tmp_path)),
        model_args={"base_url": server["url"] + "/v1/completions", "model": "default", "tokenizer_backend": "remote",
                    "auth_token": KEY, "num_concurrent": 1, "max_retries": 1},
        log_samples=True)
    assert out["results"]["zen_capitals"]["acc,none"] == 1.0
    llm = LLM("default", dtype="int4", progress=False)
    tok = llm.tokenizer
    seen = 0
    for sample in out["samples"]["zen_capitals"]:
        for (context, continuation), (loglik, greedy) in zip(sample["arguments"], sample["filtered_resps"]):
            ids, n_ctx = tok.encode(context + continuation), len(tok.encode(context))
            scored = llm.prompt_logprobs(ids, 1)[n_ctx:]
            assert loglik == pytest.approx(sum(s[0] for s in scored), abs=1e-3)
            assert greedy == all(s[0] >= s[1][0][1] for s in scored)
            seen += 1
    assert seen == 9


def test_zz_ctrl_c_stops_cleanly(server, http):
    """Last: SIGINT while a stream is in flight; the server cancels it and exits 0."""
    proc = server["proc"]
    body = {"model": "default", "messages": [{"role": "user", "content": "Count to a million."}],
            "max_tokens": 4000, "ignore_eos": True, "stream": True}
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        next(r.iter_lines())
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    assert "zen serve: stopped" in server["log"].read_text()
    assert "Traceback" not in server["log"].read_text()
