"""`zen perplexity MODEL --data FILE`: perplexity over non-overlapping windows, and top-1 agreement with
a reference model (`--reference`, fp32 unless `--reference-dtype` says otherwise) on the same tokens.
"""

from __future__ import annotations

import argparse
import sys

from zenlm.cli.common import MODEL_HELP, count, pull_first


def add(sub) -> None:
    p = sub.add_parser("perplexity", help="perplexity of a text file (and agreement with a reference model)")
    p.add_argument("model", help=MODEL_HELP)
    p.add_argument("--data", required=True, help="a text file, scored in non-overlapping windows")
    p.add_argument("--dtype", default="float32",
                   help="float32 (default: the exact reference), bfloat16, float16, int8, int4, ... as `zen generate`")
    p.add_argument("--reference", default=None, help="a second model to compare top-1 predictions with")
    p.add_argument("--reference-dtype", default="float32", help="the reference's --dtype (default float32)")
    p.add_argument("--ctx", default="512", help="tokens per window (default 512)")
    p.add_argument("--max-tokens", default=None, help="score only the file's first N tokens")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=cmd_perplexity)


def _load(name: str, dtype: str, device: str, progress: bool):
    from zenlm.engine.llm import PRECISIONS
    from zenlm.weights.load import load

    if dtype not in PRECISIONS:
        raise ValueError(f"unknown dtype {dtype!r}; choose one of {', '.join(PRECISIONS)}")
    pull_first(name)
    torch_dtype, quant = PRECISIONS[dtype]
    return load(name, dtype=torch_dtype, device=device, progress=progress, quant=quant)


def cmd_perplexity(args: argparse.Namespace) -> int:
    import dataclasses
    import json
    from pathlib import Path

    from zenlm.quant.perplexity import perplexity, windows

    ctx = count("--ctx", args.ctx, 2)
    max_tokens = count("--max-tokens", args.max_tokens, 2)
    data = Path(args.data)
    if not data.is_file():
        raise ValueError(f"--data {data} is not a file")
    progress = sys.stderr.isatty()
    model = _load(args.model, args.dtype, args.device, progress)
    reference = _load(args.reference, args.reference_dtype, args.device, progress) if args.reference else None
    if reference is not None and reference.config.vocab_size != model.config.vocab_size:
        raise ValueError(f"the reference's vocabulary ({reference.config.vocab_size}) is not the model's "
                         f"({model.config.vocab_size})")
    tokens = windows(model.tokenizer.encode(data.read_text(encoding="utf-8", errors="replace")), ctx, max_tokens)
    r = perplexity(model.model, tokens, reference.model if reference else None, progress=progress)
    if args.json:
        print(json.dumps(dataclasses.asdict(r) | {"model": args.model, "dtype": args.dtype, "ctx": tokens.shape[1]}))
        return 0
    print(f"{args.model} ({args.dtype}): perplexity {r.perplexity:.4f} over {r.tokens} tokens "
          f"({r.windows} windows of {tokens.shape[1]})")
    if reference is not None:
        print(f"reference {args.reference} ({args.reference_dtype}): perplexity {r.reference_perplexity:.4f} "
              f"({100 * (r.perplexity / r.reference_perplexity - 1):+.2f}%)")
        print(f"top-1 agreement: {100 * r.agreement:.2f}%, KL divergence from the reference: {r.kl:.5f} nats/token")
    return 0
