"""Tensor parallelism on one machine: tp=2 ranks x 1 thread each against tp=1 x 2 threads, same cores.

    nice -n 10 python benchmarks/tensor_parallel.py [--model default] [--dtype float32] [--prompt 256] [--gen 64]

For each layout: start time (load + shard + spawn), prefill tok/s (one prompt of --prompt random tokens,
best of 2), single-stream decode tok/s (--gen tokens after a 32-token prompt) and aggregate decode tok/s of
4 streams; plus whether its greedy tokens equal the first layout's. Prints a markdown table. On 2 cores
the point is that the sharded path runs and agrees; every forward pays 2 all-reduces per layer and a gather.
"""

from __future__ import annotations

import argparse
import gc
import random
import time

import torch

from zenlm.engine.engine import EngineConfig
from zenlm.engine.llm import LLM
from zenlm.engine.sampling import SamplingParams


def measure(model: str, dtype: str, tp: int, threads: int, prompt: int, gen: int) -> dict:
    torch.set_num_threads(threads)  # spawned ranks take the same count
    t = time.perf_counter()
    engine = EngineConfig(max_num_batched_tokens=max(512, prompt), kv_cache_tokens=8 * (prompt + gen) + 1024)
    llm = LLM(model, dtype=dtype, progress=False, engine=engine, tp=tp)
    start_s = time.perf_counter() - t
    rng, top = random.Random(0), min(100000, llm.config.vocab_size)

    def text(n: int) -> list[int]:  # ordinary tokens (no specials), never a prefix-cache hit
        return [rng.randrange(top // 100, top) for _ in range(n)]
    try:
        eng = llm.engine
        greedy = SamplingParams(max_tokens=gen, temperature=0, ignore_eos=True, repetition_penalty=1.0)
        llm.generate(text(16), SamplingParams(max_tokens=4, temperature=0))  # warm-up

        def prefill() -> float:
            seq = eng.add(text(prompt), SamplingParams(max_tokens=1, temperature=0))
            t = time.perf_counter()
            while not seq.finished:
                eng.step()
            return time.perf_counter() - t

        prefill_s = min(prefill() for _ in range(2))
        seq = eng.add(text(32), greedy)
        eng.step()  # prefill and the first token
        t = time.perf_counter()
        while eng.has_work:
            eng.step()
        decode = (len(seq.output_ids) - 1) / (time.perf_counter() - t)
        seqs = [eng.add(text(32), greedy) for _ in range(4)]
        while any(not s.output_ids for s in seqs):
            eng.step()
        done, t = sum(len(s.output_ids) for s in seqs), time.perf_counter()
        while eng.has_work:
            eng.step()
        aggregate = (sum(len(s.output_ids) for s in seqs) - done) / (time.perf_counter() - t)
        check = llm.generate(llm.tokenizer.encode("def quicksort(xs):"), SamplingParams(max_tokens=24,
                                                                                       temperature=0))[0]
        return {"tp": tp, "threads": threads, "start_s": start_s, "prefill": prompt / prefill_s, "decode": decode,
                "aggregate": aggregate, "tokens": check.token_ids}
    finally:
        llm.close()
        del llm
        gc.collect()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="default")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--prompt", type=int, default=256)
    p.add_argument("--gen", type=int, default=64)
    args = p.parse_args()
    rows = [measure(args.model, args.dtype, tp, th, args.prompt, args.gen) for tp, th in ((1, 2), (2, 1))]
    print(f"model {args.model}, dtype {args.dtype}, prompt {args.prompt} tokens, decode {args.gen} tokens\n")
    print("| layout | start s | prefill tok/s | decode tok/s (1 stream) | decode tok/s (4 streams) | "
          "greedy = tp1 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        same = "yes" if r["tokens"] == rows[0]["tokens"] else "no"
        print(f"| tp={r['tp']} x {r['threads']} thread{'s' if r['threads'] > 1 else ''} | {r['start_s']:.1f} | "
              f"{r['prefill']:.1f} | {r['decode']:.2f} | {r['aggregate']:.2f} | {same} |")


if __name__ == "__main__":
    main()
