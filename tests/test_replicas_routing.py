"""The Ray-free parts of `zen serve --replicas`: the prefix-affinity table, route keys, and the ASGI bridge
(a real FastAPI app run through bridge.run_app, streamed and abandoned midway)."""

import asyncio
import json

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from zenlm.server.replicas.bridge import Forward, route_key, run_app
from zenlm.server.replicas.prefixes import PrefixTable

SYSTEM = "You are a helpful assistant for the accounts team. " * 4  # 204 characters


def test_a_repeated_prefix_goes_back_to_its_replica():
    t = PrefixTable(block_chars=32, min_match=128, imbalance=4)
    loads = {"a": 0, "b": 0}
    first = t.rank(SYSTEM + "question 1", loads)[0]
    t.record(SYSTEM + "question 1", first)
    loads[first] = 3  # busier, but within the imbalance allowed
    assert t.rank(SYSTEM + "question 2", loads)[0] == first
    assert t.longest_match(SYSTEM + "question 2", loads) == (first, 192)  # the 6 whole blocks of 32 before they differ


def test_new_prefixes_go_to_the_least_loaded_then_the_least_owning():
    t = PrefixTable(block_chars=32, min_match=128)
    assert t.rank("x" * 300, {"a": 2, "b": 1}) == ["b", "a"]
    t.record("y" * 300, "a")
    assert t.rank("z" * 300, {"a": 0, "b": 0}) == ["b", "a"]  # equal loads: b owns no prefix yet


def test_too_busy_or_too_short_a_match_falls_back_to_load():
    t = PrefixTable(block_chars=32, min_match=128, imbalance=4)
    t.record(SYSTEM, "a")
    assert t.rank(SYSTEM + "more", {"a": 5, "b": 0})[0] == "b"  # 5 more in flight than b: over the imbalance
    t.record("Tell me a story about robot 1", "a")
    assert t.rank("Tell me a story about robot 2, please, a long one", {"a": 1, "b": 0})[0] == "b"  # 32 < 128 chars
    assert t.rank("short", {"a": 0, "b": 1}) == ["a", "b"]


def test_a_dead_replica_is_forgotten_and_the_table_is_bounded():
    t = PrefixTable(block_chars=8, min_match=8, max_blocks=10)
    t.record("a" * 80, "a")
    assert len(t.owner) == 10 and t.owned["a"] == 10
    t.record("b" * 40, "b")
    assert len(t.owner) == 10 and t.owned == {"a": 5, "b": 5}
    t.forget("b")
    assert t.longest_match("b" * 40, ["a", "b"]) == (None, 0)
    with pytest.raises(ValueError, match="block_chars"):
        PrefixTable(block_chars=0)


def test_route_keys_grow_with_the_conversation():
    chat = {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "hi"}]}
    longer = {"messages": chat["messages"] + [{"role": "assistant", "content": "hello"},
                                              {"role": "user", "content": [{"type": "text", "text": "more"}]}]}
    short, long = (route_key("/v1/chat/completions", json.dumps(c).encode()) for c in (chat, longer))
    assert long.startswith(short) and long.endswith("<user>more") and SYSTEM in short
    with_tools = route_key("/v1/chat/completions", json.dumps({**chat, "tools": [{"type": "function"}]}).encode())
    assert with_tools.startswith('[{"type": "function"}]') and with_tools.endswith(short)
    assert route_key("/v1/completions", b'{"prompt": ["def f():", "x"]}') == "def f():"
    assert route_key("/api/generate", b'{"system": "S", "prompt": "p"}') == "<system>S\np"
    assert route_key("/v1/completions", b'{"prompt": [1, 2, 3]}') == "[1, 2, 3]"
    assert route_key("/v1/chat/completions", b"not json") == route_key("/health", b"") == ""


def app_with_stream(finished: list):
    app = FastAPI()

    @app.post("/count")
    async def count(request: Request):
        n = (await request.json())["n"]

        async def numbers():
            try:
                for i in range(n):
                    yield f"{i}\n"
                    await asyncio.sleep(0.01)
                finished.append("all")
            except asyncio.CancelledError:
                finished.append("cancelled")
                raise
        return StreamingResponse(numbers(), media_type="text/plain", headers={"x-n": str(n)})

    return app


def test_the_bridge_streams_an_apps_response_and_stops_it_when_left():
    async def main():
        finished = []
        app = app_with_stream(finished)
        fwd = Forward("POST", "/count", headers=[(b"content-type", b"application/json")], body=b'{"n": 5}')
        items = [item async for item in run_app(app, fwd, {"id": "r1"})]
        assert items[0] == {"replica": {"id": "r1"}}
        assert items[1]["status"] == 200 and (b"x-n", b"5") in items[1]["headers"]
        assert b"".join(items[2:]) == b"0\n1\n2\n3\n4\n" and finished == ["all"]

        gen = run_app(app, Forward("POST", "/count", body=b'{"n": 1000}'), {"id": "r1"})
        got = [await gen.__anext__() for _ in range(4)]  # marker, start, two lines: then the caller leaves
        await gen.aclose()
        assert got[2:] == [b"0\n", b"1\n"] and finished == ["all", "cancelled"]

        missing = [item async for item in run_app(app, Forward("GET", "/nothing"), {"id": "r1"})]
        assert missing[1]["status"] == 404

    asyncio.run(main())
