"""`zen eval` (zenlm/eval's tasks, in process or against a server) and `zen lm-eval` (lm-eval's own CLI).
"""

from __future__ import annotations

import argparse
import json
import sys

from zenlm.cli.common import DTYPES, MODEL_HELP, count, pull_first


def cmd_eval(args) -> int:
    import os

    from zenlm.eval.run import parse_tasks, run, summary, table

    tasks = parse_tasks(args.tasks)  # bad input fails before a model loads
    limit, shots = count("--limit", args.limit, 1), count("--num-shots", args.num_shots, 0)
    max_tokens = count("--max-tokens", args.max_tokens, 1)
    prepared = {}
    if "mc" in tasks:
        from zenlm.eval.tasks.mc import MC

        prepared["mc"] = MC(data=args.data, dev_data=args.dev_data)  # the question files, read and checked
    needle = _needle_options(args) if "needle" in tasks else None
    if args.base_url:
        from zenlm.eval.backends import OpenAIBackend

        backend = OpenAIBackend(args.base_url, args.model, args.api_key or os.environ.get("OPENAI_API_KEY"),
                                args.concurrency)
    else:
        from zenlm.eval.backends import EngineBackend

        pull_first(args.model)
        backend = EngineBackend(args.model or "default", args.dtype, args.device, progress=sys.stderr.isatty(),
                                max_num_seqs=count("--max-num-seqs", args.max_num_seqs, 1))
    if needle is not None:  # the grid is capped by the model's context, lengths counted by its tokenizer
        from zenlm.eval.tasks.needle import Needle

        prepared["needle"] = Needle(**needle, context_length=backend.context_length, counter=backend.token_counter())
    results = run(tasks, backend, args.output, limit, shots, max_tokens, args.mode,
                  progress=not args.no_progress, prepared=prepared)
    print(table(results))
    if args.json:
        print(json.dumps(summary(results)))
    return 0


def _needle_options(args) -> dict:
    """--max-context and --depths, checked before a model loads."""
    from zenlm.eval.tasks.needle import lengths, parse_depths

    max_context = count("--max-context", args.max_context, 1)
    lengths(None, max_context)  # the same one-line error the task gives
    return {"max_context": max_context, "depths": parse_depths(args.depths)}


def cmd_lm_eval(args) -> int:
    """lm-eval-harness's own command line with zenlm registered as its model "zenlm"."""
    from lm_eval.__main__ import cli_evaluate

    import zenlm.eval.harness  # noqa: F401 - registers "zenlm" with lm_eval's model registry

    argv = sys.argv
    sys.argv = ["lm-eval", *args.args]
    try:
        cli_evaluate()
    finally:
        sys.argv = argv
    return 0


def add(sub) -> None:
    v = sub.add_parser("eval", help="benchmarks (gsm8k, ...) in process or against an OpenAI-compatible server")
    v.add_argument("tasks", help="comma-separated task names, e.g. gsm8k")
    v.add_argument("--model", default=None, help=f"{MODEL_HELP}; with --base-url "
                                                  "the served model id (default: the first /v1/models lists)")
    v.add_argument("--dtype", default="auto", choices=DTYPES)
    v.add_argument("--device", default="cpu")
    v.add_argument("--base-url", default=None, help="an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    v.add_argument("--api-key", default=None, help="for --base-url (default: $OPENAI_API_KEY)")
    v.add_argument("--concurrency", type=int, default=4, help="requests in flight with --base-url")
    v.add_argument("--max-num-seqs", default="16", help="sequences the in-process engine decodes together")
    v.add_argument("--limit", default=None, help="only the first N samples of each task")
    v.add_argument("--num-shots", default=None, help="few-shot examples (default: the task's own)")
    v.add_argument("--max-tokens", default="512")
    v.add_argument("--mode", default="auto", choices=["auto", "chat", "completion", "tir"],
                   help="chat template (instruct models) or raw completion (base models); auto: from the model; "
                        "tir (gsm8k): tool-integrated reasoning, the model's python blocks run in the sandbox")
    v.add_argument("--output", default="eval-results", help="results.json and samples.jsonl go here; "
                                                            "a rerun resumes from samples.jsonl")
    v.add_argument("--data", default=None, metavar="PATH",
                   help="mc: the questions, a CSV (MMLU, C-Eval, CMMLU layouts) or JSONL file or a directory of them")
    v.add_argument("--dev-data", default=None, metavar="PATH",
                   help="mc: few-shot examples by subject (default: the first --num-shots of each subject in --data, "
                        "then not scored)")
    v.add_argument("--max-context", default="8192",
                   help="needle: the longest context length tried, in tokens (default 8192, minutes on a CPU; "
                        "the grid doubles from 1024 up to this or the model's context)")
    v.add_argument("--depths", default="0,25,50,75,100", help="needle: where the needle goes, in percent of the "
                                                               "document (default 0,25,50,75,100)")
    v.add_argument("--json", action="store_true", help="the last stdout line: {TASK: {METRIC: value}}")
    v.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    v.set_defaults(func=cmd_eval)

    le = sub.add_parser("lm-eval", add_help=False,
                        help="lm-eval-harness's command line with zenlm as a model: zen lm-eval --model zenlm "
                             "--model_args model=default,dtype=auto --tasks ...")
    le.add_argument("args", nargs=argparse.REMAINDER)
    le.set_defaults(func=cmd_lm_eval)
