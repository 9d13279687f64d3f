"""`zen eval --mode tir` on the in-process engine: each problem runs the TIR loop (zenlm/agent/tir.py), and the
problems' rounds are batched through the engine together.

Up to `window` problems are in flight at once, each with its own stateful sandbox session (started at its
first block, closed when it ends). A round is one engine sequence: the chat prompt, the assistant text so far
to continue, greedy decoding, stop at "```\\n". When a round ends, its problem decides: a python block runs
in a worker thread while the engine goes on with the other problems, and its ```output block starts the next
round; otherwise the problem is done and its whole text is the answer to score.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from zenlm.agent.tir import CELL_TIMEOUT, FENCE_STOP, MAX_CALLS, OUTPUT_CHARS, Problem, output_block
from zenlm.eval.task import Sample


class _Sessions:
    """A sandbox session per problem, started on its first block."""

    def __init__(self, timeout: float, memory_mb: int):
        self.timeout, self.memory_mb, self.open = timeout, memory_mb, {}

    def run(self, key: str, code: str):
        from zenlm.agent.sandbox import Session

        if key not in self.open:
            self.open[key] = Session(timeout=self.timeout, memory_mb=self.memory_mb)
        return self.open[key].run(code)

    def close(self, key: str) -> None:
        session = self.open.pop(key, None)
        if session is not None:
            session.close()

    def close_all(self) -> None:
        for key in list(self.open):
            self.close(key)


def prompt_ids(llm, problem: Problem) -> list[int]:
    """The chat prompt with the generation prompt, then the assistant text so far (continued as it is)."""
    tok = llm.tokenizer
    return tok.encode(tok.apply_chat(problem.messages, add_generation_prompt=True) + problem.text)


def stopped_at_fence(llm, seq) -> bool:
    """Whether a finished round stopped at FENCE_STOP (cut from seq.text) rather than at the end of turn."""
    return seq.finish_reason == "stop" and FENCE_STOP in llm.tokenizer.decode(seq.output_ids)[len(seq.text):]


def tir_answers(llm, samples: list[Sample], max_tokens: int, window: int = 16, max_calls: int = MAX_CALLS,
                timeout: float = CELL_TIMEOUT, memory_mb: int = 1024,
                limit: int = OUTPUT_CHARS) -> Iterator[tuple[Sample, str]]:
    """(sample, its whole TIR text) as each problem ends; every sample's prompt is its chat messages."""
    from zenlm.engine.sampling import SamplingParams

    for s in samples:
        if not isinstance(s.prompt, list):
            raise ValueError(f"{s.id}: TIR needs a chat prompt (messages), not raw text")
    engine, queue = llm.engine, list(reversed(samples))
    live: dict[int, tuple[object, Sample, Problem]] = {}  # engine seq id -> (seq, sample, problem)
    running: dict[Future, tuple[Sample, Problem]] = {}  # blocks running in the sandbox
    sessions = _Sessions(timeout, memory_mb)
    in_flight = 0

    def start_round(s: Sample, p: Problem) -> None:
        params = SamplingParams(max_tokens=p.budget(), temperature=0.0, repetition_penalty=1.0,
                                stop=[FENCE_STOP, *s.stop])
        seq = engine.add(prompt_ids(llm, p), params)
        live[seq.seq_id] = (seq, s, p)

    pool = ThreadPoolExecutor(max(1, window), thread_name_prefix="zen-eval-tir")
    try:
        while queue or live or running:
            while queue and in_flight < window:
                s = queue.pop()
                start_round(s, Problem([dict(m) for m in s.prompt], max_tokens=max_tokens, max_calls=max_calls))
                in_flight += 1
            ended: list[tuple[Sample, Problem]] = []
            if engine.has_work:
                for out in engine.step():
                    if out.finished and out.seq.seq_id in live:
                        seq, s, p = live.pop(out.seq.seq_id)
                        if (seq.finish_reason or "").startswith("error"):
                            raise RuntimeError(f"generation failed for {s.id} ({seq.finish_reason})")
                        code = p.advance(seq.text, stopped_at_fence(llm, seq), len(seq.output_ids))
                        if code is not None:
                            running[pool.submit(sessions.run, s.id, code)] = (s, p)
                        elif p.done:
                            ended.append((s, p))
                        else:
                            start_round(s, p)
            elif running:
                wait(running, return_when=FIRST_COMPLETED)
            else:
                assert not live, "problems left with no engine work queued"
            for f in [f for f in running if f.done()]:
                s, p = running.pop(f)
                p.feed(output_block(f.result(), limit))
                start_round(s, p)
            for s, p in ended:
                sessions.close(s.id)
                in_flight -= 1
                yield s, p.text
    finally:
        for seq, _, _ in live.values():
            engine.abort(seq)
        pool.shutdown(wait=True, cancel_futures=True)
        sessions.close_all()
