"""GPTQ and AWQ against round-to-nearest at 4 bits, group 128, on the default model dequantized to fp32.

    nice -n 10 python benchmarks/quant_methods.py [--samples 128] [--seq-len 512] [--eval-tokens 8192]
        [--methods rtn,rtn-asym,awq,gptq,gptq-act] [--out /tmp/quant_methods] [--model default]

Text: the Python standard library on this machine (the default model is a coder). Held out: every tenth
top-level module in sorted order, scored in windows of 512 tokens up to --eval-tokens; calibration: the
other modules (calibration_tokens takes --samples windows of --seq-len spread over them). Each method
quantizes a copy of the fp32 model's blocks in memory, its HF directory is written (zenlm.quant.hf_export) and
loaded back by zenlm (dequantized, fp32), and that is scored: perplexity, its increase over fp32, top-1
agreement with fp32 and the mean KL divergence from it, the directory's size, the time to quantize.
Rows: rtn (GPTQ's symmetric grid, what `--method rtn` writes), rtn-asym (GPTQ's asymmetric grid), gptq
(sym, damp 0.01), gptq-act (act-order), awq (AutoAWQ's grid ratios, clipping on). Results go to
OUT/results.json and a markdown table on stdout.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sysconfig
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from zenlm.quant import hf_export
from zenlm.quant.awq import quantize_awq
from zenlm.quant.calibration import calibration_tokens
from zenlm.quant.gptq import quantize_gptq, quantize_rtn
from zenlm.quant.perplexity import windows
from zenlm.weights.load import load


def shell(model: nn.Module, layers: nn.ModuleList) -> nn.Module:
    """A model that shares every module with `model` but its blocks (a copy of the blocks, not the rest)."""
    out, backbone = copy.copy(model), copy.copy(model.model)
    out._modules, backbone._modules = dict(model._modules), dict(model.model._modules)
    backbone.layers, out.model = layers, backbone
    return out


def split_stdlib() -> tuple[list[Path], list[Path]]:
    """(calibration files, held-out files): every tenth top-level stdlib module is held out."""
    mods = sorted(Path(sysconfig.get_paths()["stdlib"]).glob("*.py"))
    return [m for i, m in enumerate(mods) if i % 10 != 5], [m for i, m in enumerate(mods) if i % 10 == 5]


@torch.no_grad()
def score(model, tokens: torch.Tensor, ref: Path, keep: bool = False) -> tuple[float, float, float]:
    """(mean nll, top-1 agreement, mean KL(ref || model)) per scored token; ref holds the fp32 model's
    log-probs per window (fp16, on disk: in memory they would take GBs), written there when keep."""
    nll = same = kl = 0.0
    ref.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(tokens):
        logp = model(x[None], torch.arange(x.shape[0])[None])[0, :-1].float().log_softmax(-1)
        nll -= logp.gather(1, x[1:, None]).sum().item()
        if keep:
            torch.save(logp.half(), ref / f"{i}.pt")
        r = torch.load(ref / f"{i}.pt").float()
        same += (r.argmax(-1) == logp.argmax(-1)).sum().item()
        kl += F.kl_div(logp, r, log_target=True, reduction="sum").item()
    n = tokens.shape[0] * (tokens.shape[1] - 1)
    return nll / n, same / n, kl / n


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="default")
    p.add_argument("--samples", type=int, default=128)
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--eval-tokens", type=int, default=8192)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group-size", type=int, default=128)
    p.add_argument("--awq-search-samples", type=int, default=8)
    p.add_argument("--methods", default="rtn,rtn-asym,awq,gptq,gptq-act")
    p.add_argument("--out", default="/tmp/quant_methods")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(2)

    calib_files, held_files = split_stdlib()
    ref = load(args.model, dtype=torch.float32, progress=False)
    tok = ref.tokenizer
    held = windows(tok.encode("\n\n".join(f.read_text(errors="replace") for f in held_files)), args.ctx,
                   args.eval_tokens)
    t0 = time.perf_counter()
    calib = calibration_tokens(tok, calib_files, args.samples, args.seq_len)
    print(f"held out: {len(held_files)} modules, {held.numel()} tokens in {held.shape[0]} windows; calibration: "
          f"{calib.shape[0]} x {calib.shape[1]} tokens from {len(calib_files)} modules "
          f"(tokenized in {time.perf_counter() - t0:.0f} s)", flush=True)
    t0 = time.perf_counter()
    base = out / "fp32-logprobs"
    base_nll, _, _ = score(ref.model, held, base, keep=True)
    rows = [{"method": "fp32", "perplexity": math.exp(base_nll), "increase_pct": 0.0, "agreement_pct": 100.0,
             "kl": 0.0, "quantize_s": 0.0, "eval_s": time.perf_counter() - t0, "size_mb": None}]
    print(json.dumps(rows[-1]), flush=True)
    b, G = args.bits, args.group_size
    for method in args.methods.split(","):
        model = shell(ref.model, copy.deepcopy(ref.model.model.layers))
        t0 = time.perf_counter()
        if method in ("rtn", "rtn-asym"):
            grids = quantize_rtn(model, b, G, sym=method == "rtn")
        elif method in ("gptq", "gptq-act"):
            grids = quantize_gptq(model, calib, b, G, act_order=method == "gptq-act", progress=False)
        elif method == "awq":
            grids = quantize_awq(model, calib, b, G, search_samples=args.awq_search_samples, progress=False)
        else:
            raise SystemExit(f"unknown method {method}")
        took = time.perf_counter() - t0
        qc = hf_export.quantization_config("awq" if method == "awq" else "gptq", b, G, method == "gptq-act")
        qc["sym"] = method != "rtn-asym" and qc.get("sym", True)
        path = hf_export.write(out / method, model, grids, qc, tok, ref.generation_config)
        del model, grids
        back = load(path, dtype=torch.float32, progress=False)
        t0 = time.perf_counter()
        nll, agreement, kl = score(back.model, held, base)
        del back
        rows.append({"method": method, "perplexity": math.exp(nll),
                     "increase_pct": 100 * (math.exp(nll - base_nll) - 1), "agreement_pct": 100 * agreement,
                     "kl": kl, "quantize_s": took,
                     "eval_s": time.perf_counter() - t0,
                     "size_mb": sum(f.stat().st_size for f in path.iterdir()) / 2**20})
        print(json.dumps(rows[-1]), flush=True)
    rtn = next((r for r in rows if r["method"] == "rtn"), None)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=2))
    print(f"\n{args.bits}-bit, group {G}; calibration {calib.shape[0]} x {calib.shape[1]} tokens; "
          f"held out {held.numel()} tokens\n")
    print("| method | perplexity | increase over fp32 | vs RTN's increase | top-1 agreement | KL (nats/token) | size "
          "| quantize |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        rel = f"{r['increase_pct'] / rtn['increase_pct']:.2f}" if rtn and r["method"] != "fp32" else ""
        size = f"{r['size_mb']:.0f} MB" if r["size_mb"] else ""
        print(f"| {r['method']} | {r['perplexity']:.4f} | {r['increase_pct']:+.2f}% | {rel} | "
              f"{r['agreement_pct']:.2f}% | {r['kl']:.5f} | {size} | {r['quantize_s']:.0f} s |")


if __name__ == "__main__":
    main()
