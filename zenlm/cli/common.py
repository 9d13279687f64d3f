"""What every command shares: the model flags, pulling a hub name first, whole-number flags.
"""

from __future__ import annotations

import argparse
import sys

DTYPES = ["auto", "int4", "int8", "bfloat16", "float32"]
MODEL_HELP = "'default', a .gguf file, an HF directory or a hub name (Org/Name[:quant][@revision])"


def add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help=MODEL_HELP)
    p.add_argument("--dtype", default="auto", choices=DTYPES,
                   help="auto (default): each weight at the precision its file stores (4, 5 or 8 bits; float "
                        "weights in 8); int4 is the smallest and fastest, int8 all 8 bits; these run float32 "
                        "activations with a bfloat16 KV cache; float32 is the exact reference")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")


def add_tp(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tp", default="1", metavar="N",
                   help="tensor parallelism: shard the model over N processes (spawned here; or one per torchrun "
                        "rank, WORLD_SIZE = N); gloo on CPU, nccl on CUDA (default 1)")


def pull_first(name: str | None) -> None:
    """A hub name not downloaded yet is pulled before a command loads it: after asking, in a terminal."""
    from pathlib import Path

    from zenlm.weights.hub_names import parse

    if name is None or Path(name).expanduser().exists() or parse(name) is None:
        return
    from zenlm.weights.store import ensure

    ensure(name, confirm=_confirm if sys.stdin.isatty() else None, progress=sys.stderr.isatty())


def _confirm(question: str) -> bool:
    """Ask on stderr (stdout is for completions); Enter means yes, end of input no."""
    print(f"{question} [Y/n] ", end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    return bool(answer) and answer.strip().lower() in ("", "y", "yes")


def add_speculative(p: argparse.ArgumentParser) -> None:
    p.add_argument("--speculative", default=None, metavar="ngram|MODEL",
                   help="speculative decoding: 'ngram' (prompt lookup: strong for code edits and RAG) or a smaller "
                        "draft model sharing the tokenizer (default: off)")
    p.add_argument("--spec-tokens", default="5", metavar="K", help="tokens drafted per step (default 5)")


def speculative(args) -> dict:
    """LLM keyword arguments for --speculative and --spec-tokens (a bad K is one line and exit 1)."""
    if getattr(args, "speculative", None) is None:
        return {}
    return {"speculative": args.speculative, "num_speculative_tokens": count("--spec-tokens", args.spec_tokens, 1)}


def load_llm(args):
    pull_first(args.model)
    from zenlm.engine.llm import LLM

    tp = count("--tp", getattr(args, "tp", None), 1) or 1
    return LLM(args.model, dtype=args.dtype, device=args.device, progress=sys.stderr.isatty(), tp=tp,
               **speculative(args))


def sampling_params(args):
    from zenlm.engine.sampling import SamplingParams

    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)


def count(flag: str, value: str | None, least: int) -> int | None:
    """A whole-number flag, read here so bad input is one line and exit 1 (argparse would exit 2)."""
    if value is None:
        return None
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{flag} must be a whole number, got {value!r}") from None
    if n < least:
        raise ValueError(f"{flag} must be at least {least}, got {n}")
    return n


def config_of(name: str):
    from zenlm.weights.registry import resolve

    pull_first(name)
    return resolve(name).config()
