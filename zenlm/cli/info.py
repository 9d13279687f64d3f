"""`zen info` (a model's or preset's config and parameter counts; --system: the kernels here) and `zen bench`.
"""

from __future__ import annotations

import json

from zenlm.cli.common import DTYPES, MODEL_HELP, add_speculative, config_of, pull_first, speculative


def cmd_info(args) -> int:
    from zenlm.config import PRESETS, human, param_counts

    if args.system:
        return _info_system()
    if args.list:
        for name, c in PRESETS.items():
            print(f"{name:20s} {human(param_counts(c)['params_total']):>6s}")
        return 0
    if args.model is None:
        raise ValueError("give a model (a preset, a .gguf file, an HF directory or a hub name) or --list")
    config = config_of(args.model)
    counts = param_counts(config)
    if args.json:
        print(json.dumps(config.to_dict() | counts, indent=2))
        return 0
    for key, value in config.to_dict().items():
        if value not in (0, None, []) or key in ("tie_word_embeddings", "qkv_bias"):
            print(f"{key:34s} {value}")
    for key, value in counts.items():
        print(f"{key:34s} {value:,} ({human(value)})")
    return 0


def _info_system() -> int:
    """Which code path zenlm runs on this machine: the C kernels' (and their compiler) or torch ops."""
    import platform

    import torch

    from zenlm.kernels.loader import kernels

    k = kernels()
    rows = {"kernels": k.path if k.dll is not None else f"torch ops ({k.reason})",
            "compiler": k.compiler or "none", "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": platform.machine(), "python": platform.python_version()}
    for key, value in rows.items():
        print(f"{key:10s} {value}")
    return 0


def cmd_bench(args) -> int:
    from zenlm.bench import run

    spec = speculative(args)
    pull_first(args.model)
    r = run(args.model, args.dtype, args.device, args.prompt_tokens, args.gen_tokens, args.concurrency, **spec)
    if args.json:
        print(json.dumps(r))
        return 0
    for key, value in r.items():
        print(f"{key:18s} {value}")
    return 0


def add(sub) -> None:
    b = sub.add_parser("bench", help="measure load, prefill, decode, time to first token, throughput, memory")
    b.add_argument("--model", default="default")
    b.add_argument("--dtype", default="auto", choices=DTYPES)
    b.add_argument("--device", default="cpu")
    b.add_argument("--prompt-tokens", type=int, default=512)
    b.add_argument("--gen-tokens", type=int, default=128)
    b.add_argument("--concurrency", type=int, default=8)
    b.add_argument("--json", action="store_true")
    add_speculative(b)
    b.set_defaults(func=cmd_bench)

    i = sub.add_parser("info", help="config and parameter counts of a model or preset; --system: the kernels here")
    i.add_argument("model", nargs="?", help=f"a preset name or {MODEL_HELP}")
    i.add_argument("--json", action="store_true")
    i.add_argument("--list", action="store_true", help="list the presets")
    i.add_argument("--system", action="store_true",
                   help="which kernels run here (avx512-vnni, avx2, plain C or torch ops), compiler, torch, threads")
    i.set_defaults(func=cmd_info)
