"""`zen <command>`: one module per command (or pair of commands), each with add(sub) and its cmd_* functions.

generate, chat (chat.py), serve, info and bench (info.py), train and estimate (train.py), eval and lm-eval
(eval.py), pull, list and rm (store.py). Heavy imports live inside each command. A command given a hub name
that is not downloaded yet pulls it first, asking before it does when stdin is a terminal.

Completions go to stdout, progress and errors to stderr. An error is one line and a non-zero exit.
"""

from __future__ import annotations

import argparse
import sys

from zenlm.cli import agent, chat, eval, info, perplexity, quantize, rag, sandbox, serve, store, train

COMMANDS = (chat, serve, info, train, quantize, perplexity, eval, store, agent, sandbox, rag)  # `zen --help`'s order


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zen", description="zenlm: run the zen model family")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["lm-eval"]:  # every argument is lm-eval's, flags included (argparse would claim them)
        args = argparse.Namespace(func=eval.cmd_lm_eval, args=argv[1:])
    else:
        args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"zen: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
