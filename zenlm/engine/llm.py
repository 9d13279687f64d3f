"""LLM (synchronous) and AsyncLLM (one background loop many callers share): the engine's facades.

    llm = LLM("default")
    llm.generate(["def fib(n):", "import os"], SamplingParams(max_tokens=32, temperature=0))  # batched
    for piece in llm.stream_chat([{"role": "user", "content": "hi"}]): print(piece, end="")

Both load the model once (the only place in the engine that loads weights) and drive one Engine.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from typing import TYPE_CHECKING

import torch

from zenlm.engine.engine import Engine, EngineConfig, StepOutput
from zenlm.engine.sampling import SamplingParams, logprobs, top_logprobs
from zenlm.engine.sequence import Completion, Sequence

if TYPE_CHECKING:
    from zenlm.weights.file_info import FileInfo

log = logging.getLogger("zenlm.engine")

# --dtype: the activation dtype, and for int8/int4/auto the weight-only quantization of every linear
PRECISIONS = {"float32": (torch.float32, None), "bfloat16": (torch.bfloat16, None),
              "float16": (torch.float16, None), "int8": (torch.float32, "int8"), "int4": (torch.float32, "int4"),
              "auto": (torch.float32, "auto")}


class LLM:
    def __init__(self, model: str = "default", dtype: str = "float32", device: str = "cpu", progress: bool = True,
                 engine: EngineConfig | None = None, tp: int = 1, speculative: str | None = None,
                 num_speculative_tokens: int = 5):
        """tp > 1: tensor parallelism over tp ranks (zenlm.parallel; this process is rank 0, or under torchrun
        any rank: the others serve rank 0's forwards inside this call and then exit).
        speculative: "ngram" (prompt lookup) or a draft model sharing the tokenizer (any name load() takes,
        loaded at the same dtype), drafting num_speculative_tokens per step; None: off."""
        from zenlm.weights.load import load

        if dtype not in PRECISIONS:
            raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(PRECISIONS)}")
        if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
            raise ValueError(f"tp must be a whole number >= 1, got {tp!r}")
        if tp > 1 and speculative is not None:
            raise ValueError("speculative decoding with tp > 1 is not supported yet: give one of them")
        if tp > 1:
            from zenlm.parallel.launch import rank_device

            device = rank_device(device, tp)
        self.dtype, quant = PRECISIONS[dtype]
        loaded = load(model, dtype=self.dtype, device=device, progress=progress, quant=quant)
        self.config, self.model, self.tokenizer = loaded.config, loaded.model, loaded.tokenizer
        self.generation_config, self.path = loaded.generation_config, loaded.path
        self.device = torch.device(device)
        engine = engine or EngineConfig()
        if quant and engine.kv_dtype is None:  # quantized weights: K/V in bfloat16 too, half the cache memory
            engine = dataclasses.replace(engine, kv_dtype=torch.bfloat16)
        self.tp = None
        if tp > 1:  # shards self.model in place (its config becomes the shard's) before the engine sizes its cache
            from zenlm.parallel.launch import start

            blocks = -(-(engine.kv_cache_tokens or self.config.context_length) // engine.block_size)  # as Engine's
            self.tp = start(self.model, tp, str(model), dtype, device, blocks, engine.block_size,
                            engine.kv_dtype or self.dtype)
        self.engine = Engine(self.model, self.tokenizer, self.generation_config, self.dtype, device, engine)
        if speculative is not None:
            self.engine.speculator = self._speculator(speculative, num_speculative_tokens, dtype, progress)

    def _speculator(self, name: str, k: int, dtype: str, progress: bool):
        from zenlm.engine.speculative.draft_model import DraftModelProposer
        from zenlm.engine.speculative.ngram import NgramProposer
        from zenlm.engine.speculative.speculator import Speculator
        from zenlm.weights.load import load

        if k < 1:
            raise ValueError(f"num_speculative_tokens must be >= 1, got {k}")
        if self.config.use_dynamic_ntk:
            raise ValueError("speculative decoding does not support dynamic-NTK rope (Qwen v1)")
        if name == "ngram":
            return Speculator(NgramProposer(), k)
        try:
            draft = load(name, dtype=self.dtype, device=self.device, progress=progress, quant=PRECISIONS[dtype][1])
        except ValueError as e:
            raise ValueError(f"speculative must be 'ngram' or a draft model: {e}") from None
        if draft.tokenizer.vocab_size != self.tokenizer.vocab_size:
            raise ValueError(f"the draft model's tokenizer has {draft.tokenizer.vocab_size} tokens and the target's "
                             f"{self.tokenizer.vocab_size}: a draft model must share the target's tokenizer")
        proposer = DraftModelProposer(draft.model, self.config.vocab_size, self.config.context_length,
                                      self.tokenizer.vocab_size)
        return Speculator(proposer, k)

    def file_info(self) -> FileInfo:
        """What the model file says about itself (format, quantization, parameter count, digest); the
        first call reads and hashes it."""
        from zenlm.weights.file_info import file_info

        return file_info(self.path, self.config)

    # ---- prompts -> ids --------------------------------------------------------------------------
    def chat_ids(self, messages: list[dict], tools: list[dict] | None = None) -> list[int]:
        if not messages:
            raise ValueError("messages is empty")
        return self.tokenizer.encode(self.tokenizer.apply_chat(messages, tools=tools, add_generation_prompt=True))

    def _ids(self, prompt: str | list[int]) -> list[int]:
        return self.tokenizer.encode(prompt) if isinstance(prompt, str) else list(prompt)

    # ---- public API ------------------------------------------------------------------------------
    def generate(self, prompts: str | list[str] | list[int] | list[list[int]],
                 params: SamplingParams | list[SamplingParams] | None = None) -> list[Completion]:
        """Complete each prompt (text, or token ids) as it is, without a chat template; all batched."""
        if isinstance(prompts, str) or (prompts and isinstance(prompts[0], int)):
            prompts = [prompts]
        plist = params if isinstance(params, list) else [params] * len(prompts)
        seqs = []
        try:
            for p, sp in zip(prompts, plist):
                seqs.append(self.engine.add(self._ids(p), sp))
            while self.engine.has_work:
                self.engine.step()
        finally:
            for s in seqs:
                self.engine.abort(s)  # no-op for finished ones; frees blocks on errors and Ctrl-C
        for s in seqs:
            _raise_failure(s)
        return [s.result() for s in seqs]

    def chat(self, messages: list[dict], params: SamplingParams | None = None,
             tools: list[dict] | None = None) -> Completion:
        """Answer a conversation (OpenAI-style messages) through the model's chat template."""
        return self.generate([self.chat_ids(messages, tools)], params)[0]

    def stream(self, prompt: str | list[int], params: SamplingParams | None = None) -> Iterator[str]:
        """Yield text pieces as they are generated (raw prompt, no chat template)."""
        seq = self.engine.add(self._ids(prompt), params)
        try:
            while not seq.finished:
                for out in self.engine.step():
                    if out.seq is seq and out.text:
                        yield out.text
        finally:
            self.engine.abort(seq)
        _raise_failure(seq)

    def stream_chat(self, messages: list[dict], params: SamplingParams | None = None,
                    tools: list[dict] | None = None) -> Iterator[str]:
        yield from self.stream(self.chat_ids(messages, tools), params)

    @torch.inference_mode()
    def prompt_logprobs(self, ids: list[int], k: int = 0) -> list[tuple[float, list[tuple[int, float]]] | None]:
        """Each prompt token's logprob given the tokens before it (None for the first), with the k most
        likely alternatives: one forward pass without the KV cache (echo + logprobs, log-likelihood evals)."""
        if not 0 < len(ids) <= self.config.context_length:
            raise ValueError(f"the prompt is {len(ids)} tokens; it must be 1 to {self.config.context_length}")
        x = torch.tensor([ids], device=self.device)  # [1, T]
        logits = self.model(x, torch.arange(len(ids), device=self.device)[None], None)[0, :-1]  # [T-1, V]
        out: list = [None]
        for a in range(0, len(ids) - 1, 256):  # float32 log_softmax a slice at a time
            lp = logprobs(logits[a:a + 256])
            out += top_logprobs(lp, torch.tensor(ids[a + 1:a + 257]), [k] * lp.shape[0])
        return out

    def close(self) -> None:
        """Stop the tensor-parallel workers, if any (also done at exit)."""
        tp = getattr(self, "tp", None)  # absent on facades built around an existing engine
        if tp is not None:
            tp.close()


def _raise_failure(seq: Sequence) -> None:
    if seq.finish_reason and seq.finish_reason.startswith("error"):
        raise RuntimeError(f"generation failed ({seq.finish_reason}); the traceback is in the zenlm.engine log")


class Overloaded(RuntimeError):
    """The waiting queue is full: try again later (HTTP 429 with Retry-After)."""


class AsyncLLM(LLM):
    """One background thread owns and steps the engine; any number of coroutines submit and stream.

    Coroutines never wait on the engine: they post commands (add, abort, call) to a thread-safe
    inbox that the thread drains between steps, and outputs come back through each caller's event
    loop (call_soon_threadsafe). A step that blocks for seconds therefore never stalls the loop.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._start()

    def _start(self) -> None:
        self._inbox: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._sinks: dict[int, Callable[[StepOutput], None]] = {}  # seq_id -> its caller's delivery
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="zenlm-engine", daemon=True)
        self._thread.start()

    # ---- the engine thread -----------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            while True:  # commands first: adds join this very step, aborts free blocks before it
                try:
                    command = self._inbox.get_nowait()
                except queue.Empty:
                    break
                command()
            if self._closed:
                return
            if not self.engine.has_work:
                self._wake.wait()
                self._wake.clear()
                continue
            try:
                outs = self.engine.step()
            except Exception as e:  # a bug outside any one request: log it, end the live requests, go on
                log.exception("engine step failed")
                outs = [self.engine.fail(seq, e) for seq in list(self.engine.scheduler.seqs.values())]
            for out in outs:
                sink = self._sinks.get(out.seq.seq_id)
                if sink is not None:
                    sink(out)

    def _post(self, command: Callable[[], None]) -> None:
        self._inbox.put(command)
        self._wake.set()

    def _add(self, seq: Sequence, sink: Callable[[StepOutput], None]) -> None:
        self._sinks[seq.seq_id] = sink
        self.engine.submit(seq)

    def _abort(self, seq: Sequence) -> None:
        self._sinks.pop(seq.seq_id, None)
        self.engine.abort(seq)

    # ---- callers (any thread, any event loop) ----------------------------------------------------
    @property
    def overloaded(self) -> bool:
        """Whether the waiting queue is full (read without a lock: a hint that is at most a step old)."""
        return self._inbox.qsize() + len(self.engine.scheduler.waiting) >= self.engine.max_waiting

    async def stream_ids(self, prompt_ids: list[int], params: SamplingParams | None = None) -> AsyncIterator[str]:
        """Yield text pieces for one request; cancelling the consumer aborts it and frees its blocks."""
        async for out in self._outputs(prompt_ids, params):
            if out.text:
                yield out.text

    def steps(self, prompt_ids: list[int], params: SamplingParams | None = None) -> AsyncIterator[StepOutput]:
        """Every engine step's output for one request (its Sequence, new text, finished); closing aborts it."""
        return self._outputs(prompt_ids, params)

    def prompt_logprobs(self, ids: list[int], k: int = 0) -> list[tuple[float, list[tuple[int, float]]] | None]:
        """As LLM.prompt_logprobs, run on the engine thread between steps (the model is not re-entrant).
        Blocks its caller: call it from a worker thread (asyncio.to_thread), never from a coroutine."""
        done: Future = Future()

        def call() -> None:
            try:
                done.set_result(LLM.prompt_logprobs(self, ids, k))
            except Exception as e:  # noqa: BLE001 - raised in the caller's thread
                done.set_exception(e)

        self._post(call)
        while True:
            try:
                return done.result(timeout=1.0)
            except TimeoutError:
                if not self.alive:
                    raise RuntimeError("the engine loop has stopped") from None

    async def complete_ids(self, prompt_ids: list[int], params: SamplingParams | None = None) -> Completion:
        out = None
        async for out in self._outputs(prompt_ids, params):
            pass
        return out.seq.result()

    async def _outputs(self, prompt_ids: list[int], params: SamplingParams | None):
        seq = self.engine.make(prompt_ids, params)  # ValueError here, in the caller
        if self._closed:
            raise RuntimeError("the engine loop has stopped")
        if self.overloaded:
            raise Overloaded(f"{self.engine.max_waiting} requests are already waiting; try again later")
        loop, q = asyncio.get_running_loop(), asyncio.Queue()

        def sink(out: StepOutput) -> None:
            try:
                loop.call_soon_threadsafe(q.put_nowait, out)
            except RuntimeError:  # the caller's loop has closed: nobody is listening
                pass

        self._post(lambda: self._add(seq, sink))
        try:
            while True:
                out = await q.get()
                yield out
                if out.finished:
                    return
        finally:
            self._post(lambda: self._abort(seq))  # frees its blocks if still live, and drops the sink

    @property
    def alive(self) -> bool:
        """Whether the engine loop is running (for health checks)."""
        return self._thread.is_alive() and not self._closed

    def close(self) -> None:
        self._closed = True
        self._wake.set()
        self._thread.join(timeout=5)
        super().close()
