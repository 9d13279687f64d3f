"""Memory and speed at long contexts: many sequences of 2K tokens at once, and one 32K-token prompt.

    python benchmarks/long_context.py [--model default] [--dtype int4] [--batch 8x2048] [--long 32768]

Each case runs in its own subprocess, so its peak RSS is its own. Prompts are random text tokens
(no prefix-cache hits); greedy decoding. Prints one JSON line per case: prompt tokens, prefill
seconds, decode tokens/s at that context, peak RSS in MB.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time


def run_case(model: str, dtype: str, seqs: int, tokens: int, gen: int) -> dict:
    from zenlm.engine.engine import EngineConfig
    from zenlm.engine.llm import LLM
    from zenlm.engine.sampling import SamplingParams

    rng = random.Random(0)
    llm = LLM(model, dtype=dtype, progress=False,
              engine=EngineConfig(max_num_seqs=max(16, seqs), kv_cache_tokens=seqs * (tokens + gen) + 64))
    eng = llm.engine
    params = SamplingParams(max_tokens=gen, temperature=0, ignore_eos=True, repetition_penalty=1.0)
    t = time.perf_counter()
    batch = [eng.add([rng.randrange(1000, 100000) for _ in range(tokens)], params) for _ in range(seqs)]
    while any(not s.output_ids for s in batch):
        eng.step()
    prefill_s = time.perf_counter() - t
    t = time.perf_counter()
    while eng.has_work:
        eng.step()
    decoded = sum(len(s.output_ids) - 1 for s in batch)
    return {"sequences": seqs, "prompt_tokens": tokens, "prefill_s": round(prefill_s, 1),
            "decode_tok_s": round(decoded / (time.perf_counter() - t), 2),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--dtype", default="int4")
    ap.add_argument("--batch", default="8x2048", help="SEQSxTOKENS: sequences decoding together")
    ap.add_argument("--long", type=int, default=32704,
                    help="tokens of the one long prompt, under the model's 32768-token context (0: skip)")
    ap.add_argument("--gen", type=int, default=32)
    ap.add_argument("--case", help=argparse.SUPPRESS)  # SEQSxTOKENS, run in this process
    a = ap.parse_args()
    if a.case:
        seqs, tokens = map(int, a.case.split("x"))
        print(json.dumps(run_case(a.model, a.dtype, seqs, tokens, a.gen)))
        return
    cases = [a.batch] + ([f"1x{a.long}"] if a.long else [])
    for case in cases:
        out = subprocess.run([sys.executable, __file__, "--model", a.model, "--dtype", a.dtype, "--gen", str(a.gen),
                              "--case", case], capture_output=True, text=True)
        print(out.stdout.strip() or f'{{"case": "{case}", "error": {json.dumps(out.stderr.strip()[-300:])}}}',
              flush=True)


if __name__ == "__main__":
    main()
