"""AsyncLLM's thread owns the engine: a blocked step never stalls the event loop, HTTP included; a
request's own failure ends only that request (logged with its traceback); bad token ids are refused
up front; a full waiting queue refuses new requests (Overloaded)."""

import asyncio
import contextlib
import logging
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
import torch
from test_engine import (
    GREEDY,
    TINY,
    engine,
    run,
    tokenizer,  # noqa: F401  (a fixture)
)

from zenlm.engine.llm import AsyncLLM, Overloaded
from zenlm.engine.sampling import SamplingParams
from zenlm.model import Transformer

SAFETY_S = 20  # a hung test releases the blocked step after this long, and then fails its assertion


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Transformer(TINY).eval()
    m.init_weights(std=0.3)
    return m


class Gate:
    """Wraps runner.run: while closed, a step blocks inside the 'model forward' until opened."""

    def __init__(self, runner):
        self.run, self.entered, self.open = runner.run, threading.Event(), threading.Event()
        self.open.set()
        runner.run = self
        threading.Timer(SAFETY_S, self.open.set).start()  # never hang the suite

    def __call__(self, batch):
        self.entered.set()
        self.open.wait()
        return self.run(batch)

    def close(self):
        self.entered.clear()
        self.open.clear()


def async_llm(model, tokenizer, **kw) -> AsyncLLM:
    llm = AsyncLLM.__new__(AsyncLLM)  # the facade over an engine, without loading a file
    llm.tokenizer, llm.engine, llm.config, llm.model = tokenizer, engine(model, tokenizer, **kw), TINY, model
    llm.device, llm.generation_config = torch.device("cpu"), {}
    AsyncLLM._start(llm)
    return llm


def test_a_blocked_step_never_stalls_the_event_loop(model, tokenizer):
    llm = async_llm(model, tokenizer)
    gate = Gate(llm.engine.runner)
    gate.close()
    p = SamplingParams(max_tokens=4, temperature=0, ignore_eos=True)

    async def main():
        first = asyncio.create_task(llm.complete_ids([1, 2, 3], p))
        assert await asyncio.to_thread(gate.entered.wait, SAFETY_S)  # the engine thread is inside a forward
        second = asyncio.create_task(llm.complete_ids([4, 5, 6], p))  # submitting must not wait on it
        early = asyncio.create_task(llm.steps([7, 8], p).__anext__())  # nor must starting a stream
        beats = 0
        for _ in range(5):  # a heartbeat keeps beating while the forward is still blocked
            await asyncio.sleep(0.01)
            beats += 1
        still_blocked = not gate.open.is_set()
        early.cancel()
        gate.open.set()
        return beats, still_blocked, await first, await second

    beats, still_blocked, a, b = asyncio.run(main())
    llm.close()
    assert still_blocked and beats == 5
    assert a.token_ids == run(engine(model, tokenizer), [[1, 2, 3]], p)[0]
    assert len(b.token_ids) == 4


@contextlib.contextmanager
def http_server(llm):
    """zen serve's app over this AsyncLLM, on a loopback port in a thread; yields an httpx client."""
    import uvicorn

    from zenlm.server.app import create_app
    from zenlm.server.generate import ServerState

    llm.path = Path("tiny")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(ServerState(llm, "tiny"))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="error", lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.02)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=SAFETY_S * 2) as http:
            yield http
    finally:
        server.should_exit = True
        thread.join()
        llm.close()


BODY = {"model": "tiny", "prompt": [1, 2, 3], "max_tokens": 3, "temperature": 0, "ignore_eos": True}


def test_health_and_other_streams_answer_while_a_step_is_blocked(model, tokenizer):
    llm = async_llm(model, tokenizer)
    gate = Gate(llm.engine.runner)
    with http_server(llm) as http:
        gate.close()
        blocked = threading.Thread(target=http.post, args=("/v1/completions",), kwargs={"json": BODY})
        blocked.start()
        assert gate.entered.wait(SAFETY_S)
        with http.stream("POST", "/v1/completions", json=BODY | {"stream": True}) as other:
            assert other.status_code == 200  # another stream starts (its headers arrive) meanwhile
            health = http.get("/health")
            answered_while_blocked = not gate.open.is_set()
            gate.open.set()
            chunks = [line for line in other.iter_lines() if line.startswith("data: ")]
        blocked.join()
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    assert answered_while_blocked
    assert chunks[-1] == "data: [DONE]" and len(chunks) >= 3


def test_a_full_queue_answers_429_with_retry_after(model, tokenizer):
    llm = async_llm(model, tokenizer, max_waiting=2)
    gate = Gate(llm.engine.runner)
    with http_server(llm) as http:
        gate.close()
        posts = [threading.Thread(target=http.post, args=("/v1/completions",), kwargs={"json": BODY})
                 for _ in range(3)]
        posts[0].start()
        assert gate.entered.wait(SAFETY_S)  # one runs (blocked), two wait
        for t in posts[1:]:
            t.start()
        while llm._inbox.qsize() < 2:
            time.sleep(0.01)
        full = http.post("/v1/completions", json=BODY)
        ollama = http.post("/api/generate", json={"model": "tiny", "prompt": "ab", "stream": False})
        gate.open.set()
        for t in posts:
            t.join()
        after = http.post("/v1/completions", json=BODY)
    assert full.status_code == 429 and full.headers["retry-after"] == "1"
    assert full.json()["error"]["type"] == "rate_limit_error" and "busy" in full.json()["error"]["message"]
    assert ollama.status_code == 429 and "busy" in ollama.json()["error"]
    assert after.status_code == 200


def test_a_failing_request_ends_alone_and_is_logged(model, tokenizer, caplog):
    llm = async_llm(model, tokenizer)

    def broken(history, logits):
        raise RuntimeError("grammar exploded")

    bad = SamplingParams(max_tokens=6, temperature=0, ignore_eos=True, logits_processors=[broken])

    async def main():
        return await asyncio.gather(llm.complete_ids([9, 9, 9], bad), llm.complete_ids([1, 2, 3], GREEDY))

    with caplog.at_level(logging.ERROR, logger="zenlm.engine"):
        failed, fine = asyncio.run(main())
    llm.close()
    assert failed.finish_reason == "error: grammar exploded"
    assert fine.token_ids == run(engine(model, tokenizer), [[1, 2, 3]])[0]  # the other one is untouched
    record = next(r for r in caplog.records if r.name == "zenlm.engine")
    assert record.exc_info and "grammar exploded" in str(record.exc_info[1])
    assert llm.engine.blocks.num_free_blocks == llm.engine.blocks.num_blocks


def test_a_failing_model_step_is_logged_and_the_engine_goes_on(model, tokenizer, caplog):
    llm = async_llm(model, tokenizer)
    real, calls = llm.engine.runner.run, []

    def flaky(batch):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return real(batch)

    llm.engine.runner.run = flaky
    with caplog.at_level(logging.ERROR, logger="zenlm.engine"):
        first = asyncio.run(llm.complete_ids([1, 2, 3], GREEDY))
        second = asyncio.run(llm.complete_ids([1, 2, 3], GREEDY))
    llm.close()
    assert first.finish_reason == "error: boom"
    assert second.token_ids == run(engine(model, tokenizer), [[1, 2, 3]])[0]
    assert any(r.exc_info and "boom" in str(r.exc_info[1]) for r in caplog.records)


@pytest.mark.parametrize("ids", [[1, TINY.vocab_size], [-1], [1, 2.5], [10 ** 30]])
def test_token_ids_out_of_range_are_refused(model, tokenizer, ids):
    eng = engine(model, tokenizer)
    with pytest.raises(ValueError, match="token id|integers"):
        eng.add(ids, GREEDY)
    assert not eng.has_work
    assert run(eng, [[1, 2, 3]])[0] == run(engine(model, tokenizer), [[1, 2, 3]])[0]  # still serving


def test_a_full_waiting_queue_refuses_new_requests(model, tokenizer):
    llm = async_llm(model, tokenizer, max_waiting=2)
    gate = Gate(llm.engine.runner)
    gate.close()
    p = SamplingParams(max_tokens=2, temperature=0, ignore_eos=True)

    async def main():
        running = asyncio.create_task(llm.complete_ids([1, 2], p))
        assert await asyncio.to_thread(gate.entered.wait, SAFETY_S)
        queued = [asyncio.create_task(llm.complete_ids([3, i], p)) for i in range(2)]
        await asyncio.sleep(0.05)  # both posted while the step is blocked
        with pytest.raises(Overloaded, match="2 requests are already waiting"):
            await llm.complete_ids([5, 6], p)
        gate.open.set()
        return await asyncio.gather(running, *queued)

    outs = asyncio.run(main())
    assert not llm.overloaded  # drained
    llm.close()
    assert [len(o.token_ids) for o in outs] == [2, 2, 2]


def test_prompt_logprobs_run_on_the_engine_thread(model, tokenizer):
    from zenlm.engine.llm import LLM

    llm = async_llm(model, tokenizer)
    seen = []
    real = llm.model.forward

    def spy(*a, **kw):
        seen.append(threading.current_thread().name)
        return real(*a, **kw)

    llm.model.forward = spy
    try:
        got = llm.prompt_logprobs([1, 2, 3, 4], 2)
    finally:
        del llm.model.forward
        llm.close()
    assert seen == ["zenlm-engine"]
    want = LLM.prompt_logprobs(llm, [1, 2, 3, 4], 2)
    assert got[0] is None and [g[0] for g in got[1:]] == pytest.approx([w[0] for w in want[1:]])
