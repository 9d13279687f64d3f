"""`zen quantize`: write a quantized release of a model, as a GGUF file (llama.cpp's file types, zenlm's own
encoders) or as an HF directory in GPTQ / AWQ / RTN form (zenlm.quant.hf_export).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from zenlm.cli.common import MODEL_HELP, count, pull_first

HF_ONLY = ("method", "bits", "group_size", "calib", "desc_act")


def cmd_quantize(args) -> int:
    pull_first(args.model)
    progress = sys.stderr.isatty() and not args.no_progress
    t0 = time.perf_counter()
    if args.format == "gguf":
        given = [f"--{k.replace('_', '-')}" for k in HF_ONLY if getattr(args, k) not in (None, False)]
        if given:
            raise ValueError(f"{', '.join(given)} belong to --format hf; a GGUF file takes --type")
        from zenlm.quant.gguf_write import write_gguf

        path = write_gguf(args.model, Path(args.output), args.type or "q4_k_m", progress=progress)
        print(f"wrote {path} ({_summary(path)}) in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        return 0
    if args.type is not None:
        raise ValueError("--type names a GGUF file type; an HF directory takes --method, --bits and --group-size")
    group = count("--group-size", args.group_size, -1)
    if group == 0:
        raise ValueError("--group-size must be a positive number of inputs, or -1 for one group per row")
    try:
        from zenlm.quant.hf_export import quantize_to_hf
    except ModuleNotFoundError as e:
        if e.name != "zenlm.quant.hf_export":
            raise
        raise ValueError("--format hf is not available: this zenlm has no zenlm.quant.hf_export") from None
    path = quantize_to_hf(args.model, Path(args.output), args.method or "rtn", args.bits or 4,
                          128 if group is None else group, args.calib, desc_act=bool(args.desc_act), progress=progress)
    print(f"wrote {path} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return 0


def _summary(path: Path) -> str:
    """'468.6 MiB; Q5_0 x133, F32 x121, ...' for a written GGUF file."""
    from collections import Counter

    from zenlm.weights.gguf_reader import read_gguf

    types = Counter(t.qtype.name for t in read_gguf(path)[1].values())
    return f"{path.stat().st_size / 2**20:.1f} MiB; " + ", ".join(f"{k} x{n}" for k, n in types.most_common())


def add(sub) -> None:
    q = sub.add_parser("quantize", help="write a quantized release: a GGUF file, or an HF GPTQ/AWQ directory")
    q.add_argument("model", help=MODEL_HELP)
    q.add_argument("--format", default="gguf", choices=["gguf", "hf"],
                   help="gguf: one file for llama.cpp and zenlm (default); hf: a GPTQ/AWQ model directory")
    q.add_argument("--output", required=True, help="the .gguf file (--format gguf) or directory (--format hf)")
    q.add_argument("--type", help="GGUF file type: f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k_s, "
                                  "q3_k_m, q3_k_l, q4_k_s, q4_k_m (default), q5_k_s, q5_k_m, q6_k")
    q.add_argument("--method", choices=["rtn", "gptq", "awq"], help="--format hf: the algorithm (default rtn)")
    q.add_argument("--bits", type=int, choices=[4, 8], help="--format hf: bits per weight (default 4)")
    q.add_argument("--group-size", help="--format hf: inputs per scale (default 128; -1: one group per row)")
    q.add_argument("--calib", help="--format hf: calibration text (gptq, awq)")
    q.add_argument("--desc-act", action="store_true", default=None, help="--format hf: GPTQ act-order")
    q.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    q.set_defaults(func=cmd_quantize)
