"""GGUF files written by zenlm, checked against llama.cpp itself (through llama-cpp-python, a benchmark-only peer).

    python benchmarks/gguf_llamacpp.py [--work DIR] [--types f16,q8_0,q4_0,q4_k_m,q5_k_m,q6_k] [--threads 2]
                                       [--only encoders,reencode,mix,tokens]

encoders  zenlm's encoders against ggml_quantize_chunk (llama.cpp's C quantizer in llama-cpp-python's
          libggml-base) on random matrices and on the default model's dequantized tensors: identical blocks.
reencode  the default model's own blocks, dequantized and encoded again: identical blocks, and how many
          weights moved, in units of the original block's quantization step.
mix       the default model written as F32 by zenlm, then quantized from that file by llama.cpp
          (llama_model_quantize) and by zenlm to each type: tensor types and bytes compared, file sizes,
          wall and CPU times, and the RMS error of all matrices against the F32 weights.
tokens    a q8_0 file written by zenlm from the default model, in llama.cpp and in zenlm (float32 and int8):
          64 greedy tokens on 5 chat prompts; where they part, zenlm's logit margin between the two tokens.
          For scale: llama.cpp against itself with an F32 instead of F16 K/V cache, and on llama-quantize's
          own q8_0 of the same weights (when mix has made it).
Prints markdown. Files go under --work (several GB for mix: the F32 file is 2.4 GB).
"""

from __future__ import annotations

import argparse
import ctypes
import time
from pathlib import Path

import numpy as np
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

from zenlm.quant.gguf_encode import encode
from zenlm.quant.gguf_mix import FILE_TYPES
from zenlm.quant.gguf_write import write_gguf
from zenlm.weights.dequant import dequantize
from zenlm.weights.gguf_reader import read_gguf
from zenlm.weights.registry import default_model_path

K_AND_BLOCK_TYPES = [T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K]
PROMPTS = ["Write a Python function that checks whether a string is a palindrome.",
           "Explain what a hash map is and give a short example in JavaScript.",
           "Write a C function that reverses a linked list in place.",
           "What does the `yield` keyword do in Python? Show an example.",
           "Write a SQL query that returns the ten customers with the highest total order value."]


def ggml_quantizer():
    """llama.cpp's ggml_quantize_chunk: (float32 [rows, cols], type) -> uint8 [rows, row bytes]."""
    import llama_cpp

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    fn = lib.ggml_quantize_chunk
    fn.restype = ctypes.c_size_t
    fn.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                   ctypes.c_void_p]

    def quantize(x: np.ndarray, qtype: T) -> np.ndarray:
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, x.shape[-1])
        block, size = GGML_QUANT_SIZES[qtype]
        out = np.zeros((x.shape[0], x.shape[1] // block * size), dtype=np.uint8)
        fn(int(qtype), x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1], None)
        return out

    return quantize


def same_blocks(a: np.ndarray, b: np.ndarray, qtype: T) -> tuple[int, int]:
    size = GGML_QUANT_SIZES[qtype][1]
    a, b = a.reshape(-1, size), b.reshape(-1, size)
    return int((a == b).all(axis=1).sum()), a.shape[0]


def check_encoders(model: Path) -> None:
    ref = ggml_quantizer()
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((512, 4096)) * rng.uniform(0.01, 1, (512, 1))).astype(np.float32)
    x[0, :256] = 0
    x[1] = rng.standard_t(2, 4096) * 0.02
    tensors = [t for t in read_gguf(model)[1].values() if t.qtype != T.F32]
    real = [dequantize(t.data, t.qtype, t.shape).numpy() for t in tensors if t.shape[-1] % 256 == 0][:8]
    real += [dequantize(t.data, t.qtype, t.shape).numpy() for t in tensors if t.shape[-1] % 256][:8]
    print("\n## zenlm's encoders against llama.cpp's quantizer (ggml_quantize_chunk)\n")
    print("| type | random 512x4096: identical blocks | its relative RMS error | default model's tensors: identical "
          "blocks | zenlm CPU s | llama.cpp CPU s |")
    print("|---|---|---|---|---|---|")
    for qtype in K_AND_BLOCK_TYPES:
        mine = encode(x, qtype)
        ra = same_blocks(mine, ref(x, qtype), qtype)
        back = dequantize(mine, qtype, x.shape).numpy()
        rel = float(np.sqrt(((back - x) ** 2).sum() / (x.astype(np.float64) ** 2).sum()))
        mine_s = theirs_s = 0.0
        same = total = 0
        for w in real:
            if w.shape[-1] % GGML_QUANT_SIZES[qtype][0]:
                continue
            t0 = time.process_time()
            ours = encode(w, qtype)
            t1 = time.process_time()
            want = ref(w, qtype)
            t2 = time.process_time()
            mine_s, theirs_s = mine_s + t1 - t0, theirs_s + t2 - t1
            s, n = same_blocks(ours, want, qtype)
            same, total = same + s, total + n
        print(f"| {qtype.name} | {ra[0]}/{ra[1]} | {rel:.4f} | {same}/{total} | {mine_s:.2f} | {theirs_s:.2f} |")


def k_steps(blocks: np.ndarray, qtype: T) -> np.ndarray:
    """Each weight's quantization step in a Q4_K / Q6_K block: [n, 256]."""
    import torch

    from zenlm.weights.dequant import _k_scale_min

    b = torch.from_numpy(np.ascontiguousarray(blocks))
    if qtype == T.Q4_K:
        sc, _ = _k_scale_min(b)
        step = b[:, 0:2].view(torch.float16).float() * sc.float()
        return np.repeat(step.numpy(), 32, axis=1)
    step = b[:, 208:210].view(torch.float16).float() * b[:, 192:208].view(torch.int8).float()
    return np.repeat(step.abs().numpy(), 16, axis=1)


def check_reencode(model: Path) -> None:
    print("\n## The default model's own blocks, dequantized and encoded again by zenlm\n")
    print("| type | identical blocks | weights moved | moved by more than one step (largest) | encode s |")
    print("|---|---|---|---|---|")
    stats: dict[T, list] = {}
    for t in read_gguf(model)[1].values():
        if t.qtype == T.F32:
            continue
        w = dequantize(t.data, t.qtype, t.shape).numpy()
        t0 = time.process_time()
        again = encode(w, t.qtype)
        s = stats.setdefault(t.qtype, [0, 0, 0, 0, 0.0, 0.0])
        s[5] += time.process_time() - t0
        same, n = same_blocks(again, np.asarray(t.data), t.qtype)
        moved = np.abs(dequantize(again, t.qtype, t.shape).numpy() - w)
        s[0], s[1], s[2] = s[0] + same, s[1] + n, s[2] + int((moved > 0).sum())
        if t.qtype in (T.Q4_K, T.Q6_K):
            steps = k_steps(np.asarray(t.data).reshape(-1, GGML_QUANT_SIZES[t.qtype][1]), t.qtype)
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(moved.reshape(-1, 256) > 0, moved.reshape(-1, 256) / steps, 0)
            s[3] += int((ratio > 1.0001).sum())
            s[4] = max(s[4], float(ratio.max()))
    for qtype, (same, n, moved, far, worst, seconds) in stats.items():
        far_text = f"{far} ({worst:.1f} steps)" if qtype in (T.Q4_K, T.Q6_K) else "-"
        print(f"| {qtype.name} | {same}/{n} ({same / n:.2%}) | {moved} | {far_text} | {seconds:.1f} |")


def llama_quantize(src: Path, dst: Path, name: str, threads: int) -> float:
    import llama_cpp

    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype, params.nthread = int(FILE_TYPES[name].ftype), threads
    t0 = time.perf_counter()
    if llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params)) != 0:
        raise RuntimeError(f"llama.cpp could not quantize {src} to {name}")
    return time.perf_counter() - t0


def rms_error(path: Path, f32: dict) -> float:
    """Relative RMS error of every quantized matrix of `path` against the F32 file's, over the whole model."""
    err = ref = 0.0
    for name, t in read_gguf(path)[1].items():
        if t.qtype == T.F32:
            continue
        w = np.asarray(f32[name].data, dtype=np.float32)
        err += float(((dequantize(t.data, t.qtype, t.shape).numpy() - w) ** 2).sum())
        ref += float((w.astype(np.float64) ** 2).sum())
    return (err / ref) ** 0.5


def check_mix(work: Path, types: list[str], threads: int) -> None:
    f32_path = work / "default-f32.gguf"
    if not f32_path.exists():
        write_gguf("default", f32_path, "f32", progress=False)
    f32 = read_gguf(f32_path)[1]
    print("\n## Written from the default model's F32 weights: zenlm against llama.cpp's llama-quantize\n")
    print("| type | same tensor types | identical tensors | size MiB | zenlm wall s | zenlm CPU s | llama.cpp wall s "
          "| RMS error vs F32 |")
    print("|---|---|---|---|---|---|---|---|")
    for name in types:
        ours, theirs = work / f"zen-{name}.gguf", work / f"llama-{name}.gguf"
        t0, c0 = time.perf_counter(), time.process_time()
        write_gguf(str(f32_path), ours, name, progress=False)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        their_wall = llama_quantize(f32_path, theirs, name, threads)
        a, b = read_gguf(ours)[1], read_gguf(theirs)[1]
        kinds = sum(a[n].qtype == b[n].qtype for n in b)
        same = sum(a[n].qtype == b[n].qtype and np.array_equal(a[n].data, b[n].data) for n in b)
        print(f"| {name} | {kinds}/{len(b)} | {same}/{len(b)} | {ours.stat().st_size / 2**20:.1f} | {wall:.1f} | "
              f"{cpu:.1f} | {their_wall:.1f} | {rms_error(ours, f32):.4f} |")


def greedy_llama(path: Path, prompts: list[list[int]], threads: int, kv_type: int = 1) -> list[list[int]]:
    """llama.cpp's 64 greedy tokens for each prompt; kv_type is the K/V cache's GGML type (1: F16, its default)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=512, n_threads=threads, n_threads_batch=threads, verbose=False,
                type_k=kv_type, type_v=kv_type)
    out = []
    for ids in prompts:
        llm.reset()
        toks = []
        for tok in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):
            toks.append(tok)
            if len(toks) == 64:
                break
        out.append(toks)
    llm.close()
    return out


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((j for j in range(64) if a[j] != b[j]), 64)


def check_tokens(work: Path, threads: int) -> None:
    import torch

    from zenlm.engine.llm import LLM
    from zenlm.engine.sampling import SamplingParams

    path = work / "default-q8_0.gguf"
    if not path.exists():
        write_gguf("default", path, "q8_0", progress=False)
    print(f"\n## {path.name} (written by zenlm from the default model): 64 greedy tokens, llama.cpp against zenlm\n")
    print("| run | against | prompt | identical tokens from the start | zenlm's margin where they part (logit) "
          "| zenlm's next token = llama.cpp's, teacher-forced |")
    print("|---|---|---|---|---|---|")
    greedy = SamplingParams(max_tokens=64, temperature=0, repetition_penalty=1.0, ignore_eos=True)
    theirs = None
    for dtype in ("float32", "int8"):
        zen = LLM(str(path), dtype=dtype, progress=False)
        prompts = [zen.chat_ids([{"role": "user", "content": p}]) for p in PROMPTS]
        theirs = theirs or greedy_llama(path, prompts, threads)
        ours = [c.token_ids for c in zen.generate(prompts, greedy)]
        for i, (ids, a, b) in enumerate(zip(prompts, ours, theirs)):
            seq = torch.tensor([ids + b])  # llama.cpp's tokens: zenlm's logits at each of its steps
            with torch.no_grad():
                rows = zen.model(seq, torch.arange(seq.shape[1])[None])[0, len(ids) - 1:-1]
            agree = float((rows.argmax(-1) == torch.tensor(b)).float().mean())
            k = common_prefix(a, b)
            margin = f"{float(rows[k, a[k]] - rows[k, b[k]]):.4f}" if k < 64 else "-"
            print(f"| zenlm {dtype} | llama.cpp | {i + 1} | {k}/64 | {margin} | {agree:.3f} |", flush=True)
        del zen
    # References: llama.cpp against itself with an F32 K/V cache, and on its own quantization of the same weights.
    for i, (a, b) in enumerate(zip(greedy_llama(path, prompts, threads, kv_type=0), theirs)):
        print(f"| llama.cpp, F32 K/V cache | llama.cpp | {i + 1} | {common_prefix(a, b)}/64 | - | - |")
    own = work / "llama-q8_0.gguf"
    if own.exists():
        for i, (a, b) in enumerate(zip(greedy_llama(own, prompts, threads), theirs)):
            print(f"| llama.cpp on {own.name} | llama.cpp | {i + 1} | {common_prefix(a, b)}/64 | - | - |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/zenlm-gguf-bench"))
    parser.add_argument("--types", default="f16,q8_0,q4_0,q4_k_m,q5_k_m,q6_k")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only", default="encoders,reencode,mix,tokens")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    only = set(args.only.split(","))
    model = default_model_path()
    if "encoders" in only:
        check_encoders(model)
    if "reencode" in only:
        check_reencode(model)
    if "mix" in only:
        check_mix(args.work, args.types.split(","), args.threads)
    if "tokens" in only:
        check_tokens(args.work, args.threads)


if __name__ == "__main__":
    main()
