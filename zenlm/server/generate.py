"""Running requests on the AsyncLLM: the server's state, request -> SamplingParams, n choices as one stream.

ServerState holds what every route needs (the engine, the served name, the key, grammars, metrics).
choices() submits one sequence per choice and yields their step outputs as they come; leaving it
early (a client that disconnected, an error) aborts every sequence and frees its KV blocks.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

from zenlm.engine.llm import AsyncLLM, Overloaded
from zenlm.engine.sampling import SamplingParams
from zenlm.engine.sequence import Sequence
from zenlm.server.errors import APIError
from zenlm.server.metrics import Metrics
from zenlm.server.protocol import SamplingFields
from zenlm.server.structured import Grammars


@dataclass(slots=True)
class ServerState:
    llm: AsyncLLM
    model_name: str
    api_key: str | None = None
    aliases: set[str] = field(default_factory=set)
    grammars: Grammars = None
    metrics: Metrics = None
    code_interpreter: bool = False  # zen serve --enable-code-interpreter: /v1/code_interpreter runs code

    def __post_init__(self):
        self.aliases = {self.model_name, self.llm.path.name, self.llm.path.stem, *self.aliases}
        self.grammars = self.grammars or Grammars(self.llm.tokenizer)
        self.metrics = self.metrics or Metrics(self.llm.engine, self.model_name)

    @property
    def tokenizer(self):
        return self.llm.tokenizer

    @property
    def context_length(self) -> int:
        return self.llm.config.context_length

    def check_model(self, name: str | None) -> None:
        if name not in self.aliases:
            raise APIError(f"The model `{name}` does not exist; this server serves `{self.model_name}`.", 404,
                           "model", "model_not_found")


RETRY_AFTER_S = 1  # what a 429 tells the client to wait


def overloaded(message: str) -> APIError:
    return APIError(message, 429, code="queue_full", headers={"Retry-After": str(RETRY_AFTER_S)})


def check_prompt(state: ServerState, n_tokens: int, param: str) -> None:
    """A prompt the engine can take now: 400 for an empty or too-long one, 429 while the queue is full."""
    if state.llm.overloaded:
        raise overloaded(f"the server is busy ({state.llm.engine.max_waiting} requests waiting); retry shortly")
    ctx = state.context_length
    if n_tokens == 0:
        raise APIError("the prompt is empty (0 tokens)", 400, param)
    if n_tokens >= ctx:
        raise APIError(f"the prompt is {n_tokens} tokens; the model's context is {ctx} tokens, so nothing can be "
                       "generated (the prompt is never truncated)", 400, param, "context_length_exceeded")


def sampling_params(state: ServerState, req: SamplingFields, limit: int | None, prompt_tokens: int,
                    logprobs: int | None = None, grammar: str | None = None) -> list[SamplingParams]:
    """One SamplingParams per choice (seed + i for choice i); APIError for values the engine rejects."""
    room = state.context_length - prompt_tokens
    if limit is None:
        limit = room
    elif limit > room:
        raise APIError(f"max_tokens is {limit}, but the prompt is {prompt_tokens} tokens and the model's context "
                       f"is {state.context_length} tokens: at most {room} tokens can be generated", 400,
                       "max_tokens", "context_length_exceeded")
    try:
        base = SamplingParams(
            max_tokens=max(limit, 1), temperature=req.temperature, top_p=req.top_p,
            top_k=None if req.top_k is None else max(req.top_k, 0), min_p=req.min_p,
            repetition_penalty=req.repetition_penalty, presence_penalty=req.presence_penalty,
            frequency_penalty=req.frequency_penalty, seed=req.seed, stop=req.stops,
            stop_token_ids=req.stop_token_ids or [], ignore_eos=req.ignore_eos, speculative=req.speculative,
            logit_bias={int(k): v for k, v in (req.logit_bias or {}).items()}, logprobs=logprobs).validate()
        vocab = state.tokenizer.vocab_size
        bad = [t for t in base.logit_bias if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"logit_bias names token {bad[0]}, outside the vocabulary (0..{vocab - 1})")
        out = []
        for i in range(req.n):
            procs = [state.grammars.processor(grammar)] if grammar is not None else []
            seed = None if req.seed is None else req.seed + i
            out.append(dataclasses.replace(base, seed=seed, logits_processors=procs))
        return out
    except ValueError as e:
        raise APIError(str(e), 400) from e


@dataclass(slots=True)
class Event:
    index: int  # the choice
    text: str  # new streamable text
    seq: Sequence
    finished: bool


async def choices(state: ServerState, jobs: list[tuple[list[int], SamplingParams]]) -> AsyncIterator[Event]:
    """Events of all (prompt ids, params) jobs, interleaved as generated (Event.index: the job's place);
    raises APIError if the engine fails."""
    q: asyncio.Queue = asyncio.Queue()
    m, start = state.metrics, time.perf_counter()

    async def pump(i: int, ids: list[int], p: SamplingParams) -> None:
        last = None
        try:
            async for out in state.llm.steps(ids, p):
                t = time.perf_counter()
                if last is None:
                    m.ttft.observe(t - start)
                else:
                    m.itl.observe(t - last)
                last = t
                q.put_nowait(Event(i, out.text, out.seq, out.finished))
        except Exception as e:  # noqa: BLE001 - handed to the consumer
            q.put_nowait(e)

    tasks = [asyncio.create_task(pump(i, ids, p)) for i, (ids, p) in enumerate(jobs)]
    left = len(tasks)
    try:
        while left:
            ev = await q.get()
            if isinstance(ev, ValueError):
                raise APIError(str(ev), 400)
            if isinstance(ev, Overloaded):
                raise overloaded(str(ev))
            if isinstance(ev, Exception):
                raise APIError(f"generation failed: {ev}", 500)
            if ev.finished:
                left -= 1
                reason = ev.seq.finish_reason or "length"
                if reason.startswith("error"):
                    raise APIError(f"generation failed ({reason})", 500)
                m.record_sequence(len(ev.seq.prompt_ids), len(ev.seq.output_ids), reason, time.perf_counter() - start)
            yield ev
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def until_disconnect(request, work: asyncio.Future, poll: float = 0.25):
    """Await `work`, cancelling it if the HTTP client goes away first (non-streamed requests)."""
    task = asyncio.ensure_future(work)
    while not task.done():
        done, _ = await asyncio.wait({task}, timeout=poll)
        if not done and await request.is_disconnected():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise APIError("client disconnected", 499)
    return task.result()
