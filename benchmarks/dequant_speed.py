"""Dequantization speed: gguf's numpy `dequantize` vs zenlm.weights.dequant, per GGUF type.

    python benchmarks/dequant_speed.py [model.gguf] [--threads 2] [--repeat 3] [--check]

Every tensor of the file is decoded by both, and the outputs stay alive for the whole pass, as a
loader keeps them. Each time is the best of --repeat passes (this is a shared machine). The first
torch pass is reported apart: it also pages the file in and touches fresh process memory.
"""

from __future__ import annotations

import argparse
import time
from collections import defaultdict
from functools import partial

import gguf
import torch

from zenlm.weights.dequant import dequantize
from zenlm.weights.gguf_reader import read_gguf


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("path", nargs="?", default=None, help="a GGUF file (default: the default model)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--check", action="store_true", help="also assert bit-exact equality")
    p.add_argument("--no-numpy", action="store_true", help="time only the torch path")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    if args.path is None:
        from zenlm.weights.registry import default_model_path

        args.path = default_model_path()
    _, tensors = read_gguf(args.path)
    by_type = defaultdict(list)
    for t in tensors.values():
        by_type[t.qtype].append(t)

    # Results are kept until the pass ends, as a loader keeps them: fresh memory for every output.
    def run_torch(ts):
        return [dequantize(t.data, t.qtype, t.shape) for t in ts]

    def run_numpy(ts):
        return [gguf.quants.dequantize(t.data, t.qtype) for t in ts]

    t0 = time.perf_counter()
    run_torch(tensors.values())  # warm-up: pages the file in and the process's memory
    cold = time.perf_counter() - t0
    print(f"{args.path}: {len(tensors)} tensors, torch threads {torch.get_num_threads()}, "
          f"first (cold) torch pass {cold:.3f} s")
    print(f"{'type':6} {'tensors':>7} {'elements':>12} {'numpy s':>8} {'torch s':>8} {'speedup':>7}")
    tot_n = tot_np = tot_t = 0.0
    for qtype, ts in sorted(by_type.items(), key=lambda kv: -sum(t.data.size for t in kv[1])):
        n = sum(int(torch.Size(t.shape).numel()) for t in ts)
        t_torch = _best(partial(run_torch, ts), args.repeat)
        t_np = float("nan") if args.no_numpy else _best(partial(run_numpy, ts), args.repeat)
        if args.check:
            for t in ts:
                ref = torch.from_numpy(gguf.quants.dequantize(t.data, t.qtype)).reshape(t.shape)
                assert torch.equal(ref, dequantize(t.data, t.qtype, t.shape)), t.name
        tot_n, tot_np, tot_t = tot_n + n, tot_np + t_np, tot_t + t_torch
        print(f"{qtype.name:6} {len(ts):7d} {n:12,d} {t_np:8.3f} {t_torch:8.3f} {t_np / t_torch:6.1f}x")
    t_all = _best(partial(run_torch, tensors.values()), args.repeat)
    print(f"{'total':6} {len(tensors):7d} {int(tot_n):12,d} {tot_np:8.3f} {tot_t:8.3f} {tot_np / tot_t:6.1f}x"
          f"   (whole file in one pass: {t_all:.3f} s)")


if __name__ == "__main__":
    main()
