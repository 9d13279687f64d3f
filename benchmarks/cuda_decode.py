"""zenlm's decode on a GPU: packed 4- and 8-bit weights read by the Triton kernel (kernels/gpu_linear.py),
against dequantizing every weight on every call (the path before it) and against bfloat16, with and
without CUDA graphs (engine/cuda_graphs.py).

    python benchmarks/cuda_decode.py [--models zen-0.5b,zen-7b] [--device cuda] [--gen 128]

The models are zen's real shapes with random weights (speed does not depend on the values, and the real
checkpoints cannot reach a GPU machine without a network): embeddings, norms and activations in bfloat16,
linears as random codes already in the kernel's row layout. Each row: greedy decode through the engine,
prompts of 128 random tokens, `--gen` new tokens; single stream and 16 streams at once. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import random
import time
from dataclasses import replace

import torch
from torch import nn

from zenlm.config import preset
from zenlm.engine.engine import Engine, EngineConfig
from zenlm.engine.sampling import SamplingParams
from zenlm.kernels import gpu_linear
from zenlm.model import SwiGLULinear, Transformer
from zenlm.quant.linear import QLinear, _pack_rows
from zenlm.tokenizer import Tokenizer
from zenlm.tokenizer.bpe import bytes_to_unicode


def byte_tokenizer() -> Tokenizer:
    """Bytes only: the prompts are random ids below 256, and the ids it does not know decode to nothing."""
    spell = bytes_to_unicode()
    return Tokenizer.from_gguf({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "qwen2",
                                "tokenizer.ggml.tokens": [spell[b] for b in range(256)] + ["ab", "<|im_end|>"],
                                "tokenizer.ggml.token_type": [1] * 257 + [3], "tokenizer.ggml.merges": ["a b"],
                                "tokenizer.ggml.eos_token_id": 257})


def random_codes(linear: nn.Linear, bits: int, device) -> QLinear:
    K, N = linear.in_features, linear.out_features
    q = QLinear(K, N, bits, linear.bias is not None, device=device, glu=isinstance(linear, SwiGLULinear))
    q.qs, q.qh = _pack_rows(torch.randint(0, 1 << bits, (N, K), dtype=torch.uint8, device=device), bits)
    q.d = torch.full((N, K // 32), 2e-3, dtype=torch.float16, device=device)
    q.m = torch.full((N, K // 32), -2e-3 * ((1 << bits) - 1) / 2, dtype=torch.float16, device=device)
    if q.bias is not None:
        q.bias.zero_()
    q.layout = "rows"
    return q


def random_model(name: str, bits: int | None, device) -> Transformer:
    """zen's `name` shape; bits None: bfloat16 linears, else random codes of that width."""
    c = preset(name)
    with torch.device("meta"):
        model = Transformer(c)
    model = model.to_empty(device=device).to(torch.bfloat16).eval()
    for name_, p in model.named_parameters():
        torch.nn.init.normal_(p, std=0.02) if p.dim() > 1 else torch.nn.init.ones_(p)
    if bits:
        for name_, mod in list(model.named_modules()):
            if isinstance(mod, nn.Linear):
                model.set_submodule(name_, random_codes(mod, bits, device))
    return model


def decode_rate(model, device, streams: int, gen: int, graphs: bool) -> float:
    ec = EngineConfig(max_num_seqs=16, max_num_batched_tokens=2048, kv_cache_tokens=16 * (128 + gen) + 256,
                      cuda_graphs=graphs)
    eng = Engine(model, byte_tokenizer(), {}, torch.bfloat16, device, ec)
    rng = random.Random(0)
    greedy = SamplingParams(max_tokens=gen, temperature=0, ignore_eos=True, repetition_penalty=1.0)
    for n in (4, gen):  # the first pass builds kernels and captures graphs
        seqs = [eng.add([rng.randrange(256) for _ in range(128)], replace(greedy, max_tokens=n))
                for _ in range(streams)]
        while any(not s.output_ids for s in seqs):  # prefill and the first token
            eng.step()
        torch.cuda.synchronize() if device.type == "cuda" else None
        t, done = time.perf_counter(), sum(len(s.output_ids) for s in seqs)
        while eng.has_work:
            eng.step()
        torch.cuda.synchronize() if device.type == "cuda" else None
        rate = (sum(len(s.output_ids) for s in seqs) - done) / (time.perf_counter() - t)
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="zen-0.5b,zen-7b")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--gen", type=int, default=128)
    args = ap.parse_args()
    device = torch.device(args.device)
    rows = [("bfloat16", None, True, True), ("bfloat16", None, False, True), ("int8, Triton", 8, True, True),
            ("int4, Triton", 4, True, True), ("int4, Triton", 4, False, True),
            ("int4, dequantized per call", 4, True, False)]
    print("| model | weights | CUDA graphs | decode tok/s, 1 stream | decode tok/s, 16 streams | weights GiB |")
    print("|---|---|---|---|---|---|")
    for name in args.models.split(","):
        for label, bits, graphs, triton in rows:
            model = random_model(name, bits, device)
            size = sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()]) / 2**30
            kernel = gpu_linear.available
            if not triton:  # QLinear's fallback: dequantize the whole weight, then F.linear
                gpu_linear.available = lambda: False
            try:
                one, many = (decode_rate(model, device, s, args.gen, graphs) for s in (1, 16))
            finally:
                gpu_linear.available = kernel
            on = "on" if graphs else "off"
            print(f"| {name} | {label} | {on} | {one:.1f} | {many:.1f} | {size:.2f} |", flush=True)
            del model
            torch.cuda.empty_cache() if device.type == "cuda" else None


if __name__ == "__main__":
    main()
