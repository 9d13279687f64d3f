"""`zen bench`: load time, prefill and decode speed, time to first token, aggregate decode throughput
(`concurrency` sequences of `prompt_tokens` each; and of 32 tokens each, the context the single-stream
decode figure is measured at), and peak RSS.

Measures zenlm's own engine in this process, greedy, on prompts of random text tokens that never hit
the prefix cache. With speculative decoding on, it also reports the drafts proposed and accepted (random
prompts give prompt lookup little to copy: benchmarks/speculative.py measures a workload that does).
benchmarks/compare.py runs the same measurements on llama.cpp and transformers.
"""

from __future__ import annotations

import random
import resource
import time

from zenlm.engine.engine import EngineConfig
from zenlm.engine.llm import LLM
from zenlm.engine.sampling import SamplingParams


def random_prompt(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(1000, 100000) for _ in range(n)]


def run(model: str = "default", dtype: str = "auto", device: str = "cpu", prompt_tokens: int = 512,
        gen_tokens: int = 128, concurrency: int = 8, speculative: str | None = None,
        num_speculative_tokens: int = 5) -> dict:
    rng = random.Random(0)
    t = time.perf_counter()
    engine = EngineConfig(max_num_batched_tokens=max(512, prompt_tokens), max_num_seqs=max(16, concurrency),
                          kv_cache_tokens=concurrency * (prompt_tokens + gen_tokens) + 1024)
    llm = LLM(model, dtype=dtype, device=device, progress=False, engine=engine, speculative=speculative,
              num_speculative_tokens=num_speculative_tokens)
    load_s = time.perf_counter() - t
    eng = llm.engine
    greedy = SamplingParams(max_tokens=gen_tokens, temperature=0, ignore_eos=True, repetition_penalty=1.0)
    one = SamplingParams(max_tokens=1, temperature=0, repetition_penalty=1.0)
    llm.generate(random_prompt(rng, 16), SamplingParams(max_tokens=4, temperature=0))  # warm-up

    def first_token_time(n: int) -> float:
        seq = eng.add(random_prompt(rng, n), one)
        t = time.perf_counter()
        while not seq.finished:
            eng.step()
        return time.perf_counter() - t

    prefill_s = min(first_token_time(prompt_tokens) for _ in range(2))
    ttft_s = min(first_token_time(32) for _ in range(3))

    seq = eng.add(random_prompt(rng, 32), greedy)
    eng.step()  # prefill and first token
    t = time.perf_counter()
    while eng.has_work:
        eng.step()
    decode_s = time.perf_counter() - t

    def aggregate(n: int) -> float:
        """decode tokens/s of `concurrency` sequences of n-token prompts, once all are decoding"""
        seqs = [eng.add(random_prompt(rng, n), greedy) for _ in range(concurrency)]
        while any(not s.output_ids for s in seqs):  # every prompt prefilled and decoding
            eng.step()
        done = sum(len(s.output_ids) for s in seqs)
        t = time.perf_counter()
        while eng.has_work:
            eng.step()
        return (sum(len(s.output_ids) for s in seqs) - done) / (time.perf_counter() - t)

    aggregate_tok_s, aggregate_short_tok_s = aggregate(prompt_tokens), aggregate(32)
    spec = eng.speculator
    drafts = {} if spec is None else {  # over every measurement above
        "speculative": f"{speculative} k={num_speculative_tokens}", "spec_draft_tokens": spec.stats.proposed,
        "spec_accepted_tokens": spec.stats.accepted, "spec_acceptance": round(spec.stats.acceptance, 3)}
    return {
        "model": str(llm.path.name), "dtype": dtype, "threads": _threads(), "kernels": _kernels(),
        "load_s": round(load_s, 3),
        "prefill_tok_s": round(prompt_tokens / prefill_s, 2),
        "decode_tok_s": round((len(seq.output_ids) - 1) / decode_s, 2),
        "ttft_s": round(ttft_s, 4),
        "aggregate_tok_s": round(aggregate_tok_s, 2),
        "aggregate_short_tok_s": round(aggregate_short_tok_s, 2),  # prompts of 32 tokens, as decode_tok_s
        "concurrency": concurrency,
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    } | drafts


def _threads() -> int:
    import torch

    return torch.get_num_threads()


def _kernels() -> str:
    """Which matmul/attention code the quantized path runs on this machine."""
    from zenlm.kernels.loader import kernels

    k = kernels()
    return k.path if k.dll is not None else f"torch ops ({k.reason})"
