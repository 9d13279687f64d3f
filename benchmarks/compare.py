"""zenlm vs llama.cpp (llama-cpp-python) vs transformers on the same GGUF, side by side in one run.

    python benchmarks/compare.py [--model PATH] [--threads 2] [--prompt-tokens 512] [--gen-tokens 128]

Each peer runs in its own subprocess (so peak RSS is its own), greedy, on prompts of random text
tokens. A peer that is not installed is reported as skipped. Prints a table and zenlm's ratios.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import time

KEYS = ["load_s", "prefill_tok_s", "decode_tok_s", "ttft_s", "aggregate_tok_s", "aggregate_short_tok_s", "peak_rss_mb"]


def prompt(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(1000, 100000) for _ in range(n)]


def rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def bench_llama_cpp(path: str, threads: int, n_prompt: int, n_gen: int) -> dict:
    from llama_cpp import Llama

    t = time.perf_counter()
    llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=n_prompt + n_gen + 64,
                n_batch=n_prompt, verbose=False)
    load_s = time.perf_counter() - t

    def first_token(n: int, seed: int) -> float:
        llm.reset()
        t = time.perf_counter()
        llm.eval(prompt(n, seed))
        llm.sample(temp=0.0)
        return time.perf_counter() - t

    first_token(16, 99)  # warm-up
    prefill_s = min(first_token(n_prompt, s) for s in (1, 2))
    ttft_s = min(first_token(32, s) for s in (3, 4, 5))
    llm.reset()
    llm.eval(prompt(32, 6))
    tok = llm.sample(temp=0.0)
    t = time.perf_counter()
    for _ in range(n_gen - 1):
        llm.eval([tok])
        tok = llm.sample(temp=0.0)
    decode_s = time.perf_counter() - t
    return {"load_s": load_s, "prefill_tok_s": n_prompt / prefill_s, "decode_tok_s": (n_gen - 1) / decode_s,
            "ttft_s": ttft_s, "aggregate_tok_s": None, "peak_rss_mb": rss_mb()}


def bench_transformers(path: str, threads: int, n_prompt: int, n_gen: int) -> dict:
    import os

    import torch
    import transformers

    torch.set_num_threads(threads)
    t = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(
        os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).eval()
    load_s = time.perf_counter() - t

    def first_token(n: int, seed: int) -> float:
        ids = torch.tensor([prompt(n, seed)])
        t = time.perf_counter()
        with torch.inference_mode():
            model(ids).logits[0, -1].argmax()
        return time.perf_counter() - t

    first_token(16, 99)
    prefill_s = first_token(n_prompt, 1)
    ttft_s = min(first_token(32, s) for s in (3, 4))
    ids = torch.tensor([prompt(32, 6)])
    kw = dict(do_sample=False, min_new_tokens=n_gen, pad_token_id=0)
    with torch.inference_mode():
        t = time.perf_counter()
        model.generate(ids, max_new_tokens=1, **(kw | {"min_new_tokens": 1}))
        one = time.perf_counter() - t
        t = time.perf_counter()
        model.generate(ids, max_new_tokens=n_gen, **kw)
        total = time.perf_counter() - t
    return {"load_s": load_s, "prefill_tok_s": n_prompt / prefill_s, "decode_tok_s": (n_gen - 1) / (total - one),
            "ttft_s": ttft_s, "aggregate_tok_s": None, "peak_rss_mb": rss_mb()}


def bench_zenlm(path: str, threads: int, n_prompt: int, n_gen: int, dtype: str = "int4") -> dict:
    import torch

    from zenlm.bench import run

    torch.set_num_threads(threads)
    return run(path, dtype=dtype, prompt_tokens=n_prompt, gen_tokens=n_gen, concurrency=8)


PEERS = {
    "zenlm auto": lambda *a: bench_zenlm(*a, dtype="auto"),
    "zenlm int4": lambda *a: bench_zenlm(*a, dtype="int4"),
    "zenlm float32": lambda *a: bench_zenlm(*a, dtype="float32"),
    "llama.cpp": bench_llama_cpp,
    "transformers fp32": bench_transformers,
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default=None, help="a GGUF file (default: zenlm's default model)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prompt-tokens", type=int, default=512)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--peers", default=",".join(PEERS), help="comma-separated subset of: " + ", ".join(PEERS))
    p.add_argument("--worker", help=argparse.SUPPRESS)
    a = p.parse_args()
    if a.model is None:
        from zenlm.weights.registry import default_model_path

        a.model = str(default_model_path())
    if a.worker:  # one peer, in this process: print its JSON
        print(json.dumps(PEERS[a.worker](a.model, a.threads, a.prompt_tokens, a.gen_tokens)))
        return
    results = {}
    for name in a.peers.split(","):
        cmd = [sys.executable, __file__, "--worker", name, "--model", a.model, "--threads", str(a.threads),
               "--prompt-tokens", str(a.prompt_tokens), "--gen-tokens", str(a.gen_tokens)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            last = (r.stderr.strip().splitlines() or ["failed"])[-1]
            results[name] = "skipped: " + (last if "ModuleNotFoundError" in last else last[:120])
        else:
            results[name] = json.loads(r.stdout.strip().splitlines()[-1])
        print(f"{name}: {results[name]}", file=sys.stderr)
    print_table(results, a)


def print_table(results: dict, a) -> None:
    print(f"\nmodel {a.model}, {a.threads} threads, prompt {a.prompt_tokens} tokens, {a.gen_tokens} generated, greedy")
    print(f"| peer | {' | '.join(KEYS)} |")
    print("|---" * (len(KEYS) + 1) + "|")
    for name, r in results.items():
        if isinstance(r, str):
            print(f"| {name} | {r} |" + " |" * (len(KEYS) - 1))
            continue
        cells = ["-" if r.get(k) is None else f"{r[k]:.3g}" if k == "ttft_s" else f"{r[k]:.1f}" for k in KEYS]
        print(f"| {name} | {' | '.join(cells)} |")
    ref = results.get("llama.cpp")
    for name, ours in results.items():
        if not (name.startswith("zenlm") and isinstance(ours, dict) and isinstance(ref, dict)):
            continue
        print(f"\n{name} / llama.cpp: decode {ours['decode_tok_s'] / ref['decode_tok_s']:.2f}x, "
              f"prefill {ours['prefill_tok_s'] / ref['prefill_tok_s']:.2f}x, "
              f"ttft {ours['ttft_s']:.3f} s vs {ref['ttft_s']:.3f} s; "
              f"aggregate (8 seqs) / own single stream {ours['aggregate_tok_s'] / ours['decode_tok_s']:.2f}x "
              f"({a.prompt_tokens}-token prompts), {ours['aggregate_short_tok_s'] / ours['decode_tok_s']:.2f}x "
              f"(32-token prompts, as the single stream)")


if __name__ == "__main__":
    main()
