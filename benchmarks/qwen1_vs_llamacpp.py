"""Qwen v1 (GGUF architecture `qwen`) against llama.cpp on tiny random models: logits and greedy tokens.

    PYTHONPATH=. python benchmarks/qwen1_vs_llamacpp.py [--seeds 3] [--tokens 300] [--new 100]

For each shape and seed it writes a random v1 GGUF (tests/qwen1_files.py: F32 weights, context_length 128),
runs one prompt of --tokens (past the file's context) through zenlm (fp32, one forward) and llama.cpp
(llama-cpp-python, F32 K/V cache), and greedy-decodes --new tokens after a 20-token prompt with zenlm's
engine and with llama.cpp. Prints a Markdown table: max |logit difference|, max |logit|, argmax agreement
over the prompt, greedy tokens equal. llama.cpp has no logn or dynamic NTK for `qwen`: nothing here uses them.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from tests.qwen1_files import llama_cpp_run, random_weights, tiny_config, train_ranks, write_gguf
from zenlm.engine.llm import LLM
from zenlm.engine.sampling import SamplingParams
from zenlm.weights.load import load

VOCAB = 560
SHAPES = {  # name -> Config fields over tests/qwen1_files.tiny_config
    "h64-l2-H4": {},
    "h256-l4-H8": dict(hidden_size=256, num_layers=4, num_heads=8, num_kv_heads=8, head_dim=32, intermediate_size=688),
    "h512-l3-H4-d128": dict(hidden_size=512, num_layers=3, num_heads=4, num_kv_heads=4, head_dim=128,
                            intermediate_size=1376, rope_theta=1e6),
}


def compare(shape: dict, seed: int, n_tokens: int, n_new: int, tmp: Path) -> dict:
    c = tiny_config(VOCAB, context_length=128, use_logn_attn=False, use_dynamic_ntk=False, seq_length=0, **shape)
    path = write_gguf(tmp / f"qwen-{seed}.gguf", c, random_weights(c, seed=seed), train_ranks())
    tokens = torch.randint(0, VOCAB, (n_tokens,), generator=torch.Generator().manual_seed(seed)).tolist()
    ref, _ = llama_cpp_run(path, tokens)
    with torch.no_grad():
        got = load(path, progress=False).model(torch.tensor([tokens]), torch.arange(n_tokens)[None])[0].numpy()
    prompt = tokens[:20]
    _, ref_greedy = llama_cpp_run(path, prompt, new_tokens=n_new)
    llm = LLM(str(path), progress=False)
    params = SamplingParams(max_tokens=n_new, temperature=0, ignore_eos=True, repetition_penalty=1.0)
    ours = llm.generate(prompt, params)[0].token_ids
    same = next((i for i, (a, b) in enumerate(zip(ours, ref_greedy)) if a != b), len(ours))
    return {"max_diff": float(np.abs(got - ref).max()), "max_logit": float(np.abs(ref).max()),
            "argmax": float((got.argmax(-1) == ref.argmax(-1)).mean()), "greedy": f"{same}/{len(ref_greedy)}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=300)
    ap.add_argument("--new", type=int, default=100)
    args = ap.parse_args()
    if args.new + 20 > 128:
        ap.error("--new must leave the 20-token prompt inside the files' 128-token context")
    print("| shape | seed | max abs logit diff | max abs logit | argmax agree | greedy tokens equal |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for name, shape in SHAPES.items():
            for seed in range(args.seeds):
                r = compare(shape, seed, args.tokens, args.new, Path(tmp))
                print(f"| {name} | {seed} | {r['max_diff']:.2e} | {r['max_logit']:.2f} | {r['argmax']:.3f} "
                      f"| {r['greedy']} |", flush=True)


if __name__ == "__main__":
    main()
