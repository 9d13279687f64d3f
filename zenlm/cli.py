"""`zen <command>`: generate, chat, serve, bench, info, train, estimate, eval, lm-eval, pull, list, rm.

One small function per command; heavy imports inside it. A command given a hub name that is not
downloaded yet pulls it first, asking before it does when stdin is a terminal.

Completions go to stdout, progress and errors to stderr. An error is one line and a non-zero exit.
"""

from __future__ import annotations

import argparse
import json
import sys

MODEL_HELP = "'default', a .gguf file, an HF directory or a hub name (Org/Name[:quant][@revision])"


def _add_model(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="default", help=MODEL_HELP)
    p.add_argument("--dtype", default="int4", choices=["float32", "bfloat16", "int8", "int4"],
                   help="int4 (default, fastest) and int8 quantize the weights and run float32 activations "
                        "with a bfloat16 KV cache; float32 is the exact reference")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")


def _pull_first(name: str | None) -> None:
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


def _llm(args):
    _pull_first(args.model)
    from zenlm.engine.llm import LLM

    return LLM(args.model, dtype=args.dtype, device=args.device, progress=sys.stderr.isatty())


def _params(args):
    from zenlm.engine.sampling import SamplingParams

    return SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed)


def cmd_generate(args) -> int:
    llm = _llm(args)
    if args.raw:
        if args.system:
            raise ValueError("--system needs the chat template; drop --raw")
        pieces = llm.stream(args.prompt, _params(args))
    else:
        messages = ([{"role": "system", "content": args.system}] if args.system else [])
        pieces = llm.stream_chat(messages + [{"role": "user", "content": args.prompt}], _params(args))
    for piece in pieces:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    return 0


def cmd_chat(args) -> int:
    llm = _llm(args)
    system = [{"role": "system", "content": args.system}] if args.system else []
    history: list[dict] = []
    print(f"zen chat with {llm.path.name}. /reset clears the history, /exit leaves, "
          "Ctrl-C stops an answer.", file=sys.stderr)
    while True:
        try:
            line = input(">>> ")
        except EOFError:
            print(file=sys.stderr)
            return 0
        except KeyboardInterrupt:
            print("\n(use /exit or Ctrl-D to leave)", file=sys.stderr)
            continue
        text = line.strip()
        if not text:
            continue
        if text in ("/exit", "/quit", "/bye"):
            return 0
        if text == "/reset":
            history.clear()
            print("(history cleared)", file=sys.stderr)
            continue
        history.append({"role": "user", "content": line})
        answer = []
        try:
            for piece in llm.stream_chat(system + history, _params(args)):
                answer.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
        except KeyboardInterrupt:
            sys.stdout.write(" [stopped]")
        sys.stdout.write("\n")
        sys.stdout.flush()
        history.append({"role": "assistant", "content": "".join(answer)})


def cmd_serve(args) -> int:
    import os

    from zenlm.server.serve import serve

    return serve(args.model, args.host, args.port, args.api_key or os.environ.get("ZEN_API_KEY"), args.dtype,
                 args.device, args.served_model_name, args.max_num_seqs, args.log_level, args.allowed_origins,
                 args.allowed_hosts, args.max_body_bytes, args.max_waiting, args.kv_cache_tokens,
                 before_load=lambda: _pull_first(args.model))


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
    config = _config_of(args.model)
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

    _pull_first(args.model)
    r = run(args.model, args.dtype, args.device, args.prompt_tokens, args.gen_tokens, args.concurrency)
    if args.json:
        print(json.dumps(r))
        return 0
    for key, value in r.items():
        print(f"{key:18s} {value}")
    return 0


def cmd_train(args) -> int:
    from zenlm.train.run import load_yaml, make_config, run

    settings = load_yaml(args.config) if args.config else {}
    given = {k: v for k, v in vars(args).items() if k not in ("func", "command", "config") and v is not None}
    settings |= given
    _pull_first(settings.get("model"))
    run(make_config(settings))
    return 0


def cmd_estimate(args) -> int:
    from zenlm.train.estimate import estimate, format_estimate

    est = estimate(_config_of(args.model), args.method, args.seq_len, args.batch, lora_rank=args.lora_rank,
                   checkpointing=args.checkpointing, bf16=not args.fp32)
    print(json.dumps(est) if args.json else format_estimate(est))
    return 0


def cmd_eval(args) -> int:
    import os

    from zenlm.eval.run import parse_tasks, run, summary, table

    tasks = parse_tasks(args.tasks)  # bad input fails before a model loads
    limit, shots = _count("--limit", args.limit, 1), _count("--num-shots", args.num_shots, 0)
    if "mc" in tasks:
        from zenlm.eval.tasks.mc import MC

        MC(**_mc_options(args))  # reads and checks the question files before a model loads
    max_tokens = _count("--max-tokens", args.max_tokens, 1)
    if "needle" in tasks:
        _needle_options(args, None)  # bad needle flags fail before a model loads
    if args.base_url:
        from zenlm.eval.backends import OpenAIBackend

        backend = OpenAIBackend(args.base_url, args.model, args.api_key or os.environ.get("OPENAI_API_KEY"),
                                args.concurrency)
    else:
        from zenlm.eval.backends import EngineBackend

        _pull_first(args.model)
        backend = EngineBackend(args.model or "default", args.dtype, args.device, progress=sys.stderr.isatty(),
                                max_num_seqs=_count("--max-num-seqs", args.max_num_seqs, 1))
    results = run(tasks, backend, args.output, limit, shots, max_tokens, args.mode,
                  progress=not args.no_progress, task_options=_task_options(args, backend))
    print(table(results))
    if args.json:
        print(json.dumps(summary(results)))
    return 0


def _task_options(args, backend) -> dict[str, dict]:
    """Each task's constructor arguments, from its own flags (and what the backend knows of the model)."""
    from zenlm.eval.run import parse_tasks

    tasks, options = parse_tasks(args.tasks), {}
    if "mc" in tasks:
        options["mc"] = _mc_options(args)
    if "needle" in tasks:
        options["needle"] = _needle_options(args, backend)
    return options


def _needle_options(args, backend) -> dict:
    """--max-context and --depths checked; with a backend, the model's context and its token counter."""
    from zenlm.eval.tasks.needle import lengths, parse_depths

    max_context = _count("--max-context", args.max_context, 1)
    lengths(None, max_context)  # the same one-line error the task gives
    options = {"max_context": max_context, "depths": parse_depths(args.depths)}
    if backend is not None:
        options |= {"context_length": backend.context_length, "counter": backend.token_counter()}
    return options


def _mc_options(args) -> dict:
    return {"data": args.data, "dev_data": args.dev_data}


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


def cmd_pull(args) -> int:
    from zenlm.weights.download import human_bytes
    from zenlm.weights.store import pull

    local = pull(args.name, progress=sys.stderr.isatty())
    size = sum(f.stat().st_size for f in local.files)
    print(f"{args.name}: {len(local.files)} file(s), {human_bytes(size)} at {local.path}", file=sys.stderr)
    print(local.path)
    return 0


def cmd_list(args) -> int:
    from pathlib import Path

    from zenlm.weights.download import human_bytes
    from zenlm.weights.load import quantized_copies
    from zenlm.weights.store import complete, entries

    rows = []
    for e in entries():
        copies = quantized_copies(Path(e.path)) if complete(e) else {}
        rows.append({"name": e.name, "format": e.format, "quantization": e.quantization, "size": e.size,
                     "quantized_copy": sorted(copies), "complete": complete(e), "path": e.path})
    if args.json:
        print(json.dumps(rows, indent=1))
        return 0
    print(f"{'NAME':48s} {'FORMAT':12s} {'QUANT':8s} {'SIZE':>9s}  QUANTIZED COPY")
    for r in rows:
        copy = ",".join(r["quantized_copy"]) or "-"
        note = "" if r["complete"] else "  (files missing: pull again)"
        print(f"{r['name']:48s} {r['format']:12s} {r['quantization']:8s} {human_bytes(r['size']):>9s}  {copy}{note}")
    return 0


def cmd_rm(args) -> int:
    from zenlm.weights.store import remove

    for name in args.names:
        removed = remove(name)
        print(f"removed {name} ({len(removed)} file(s))", file=sys.stderr)
    return 0


def _add_store(sub) -> None:
    p = sub.add_parser("pull", help="download a model by hub name into the local cache")
    p.add_argument("name", help="Org/Name (safetensors), Org/Name-GGUF:q4_k_m, NAME@revision, modelscope:Org/Name")
    p.set_defaults(func=cmd_pull)
    ls = sub.add_parser("list", help="the models pulled: name, format, quantization, size, quantized copy")
    ls.add_argument("--json", action="store_true")
    ls.set_defaults(func=cmd_list)
    r = sub.add_parser("rm", help="remove pulled models and their quantized copies")
    r.add_argument("names", nargs="+")
    r.set_defaults(func=cmd_rm)


def _count(flag: str, value: str | None, least: int) -> int | None:
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


def _add_eval(sub) -> None:
    v = sub.add_parser("eval", help="benchmarks (gsm8k, ...) in process or against an OpenAI-compatible server")
    v.add_argument("tasks", help="comma-separated task names, e.g. gsm8k")
    v.add_argument("--model", default=None, help=f"{MODEL_HELP}; with --base-url "
                                                  "the served model id (default: the first /v1/models lists)")
    v.add_argument("--dtype", default="int4", choices=["float32", "bfloat16", "int8", "int4"])
    v.add_argument("--device", default="cpu")
    v.add_argument("--base-url", default=None, help="an OpenAI-compatible server, e.g. http://127.0.0.1:8000/v1")
    v.add_argument("--api-key", default=None, help="for --base-url (default: $OPENAI_API_KEY)")
    v.add_argument("--concurrency", type=int, default=4, help="requests in flight with --base-url")
    v.add_argument("--max-num-seqs", default="16", help="sequences the in-process engine decodes together")
    v.add_argument("--limit", default=None, help="only the first N samples of each task")
    v.add_argument("--num-shots", default=None, help="few-shot examples (default: the task's own)")
    v.add_argument("--max-tokens", default="512")
    v.add_argument("--mode", default="auto", choices=["auto", "chat", "completion"],
                   help="chat template (instruct models) or raw completion (base models); auto: from the model")
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


def _add_train(sub) -> None:
    t = sub.add_parser("train", help="pretrain, SFT or DPO (LoRA/QLoRA; torchrun for many processes)")
    t.add_argument("task", choices=["pretrain", "sft", "dpo"])
    t.add_argument("--config", help="YAML file of settings (flags override it)")
    t.add_argument("--model", help=f"a preset (trains from scratch) or {MODEL_HELP}")
    t.add_argument("--data", nargs="+", help="text/jsonl files or directories")
    t.add_argument("--eval-data", nargs="+", help="held-out files (default: a slice of --data)")
    t.add_argument("--output", help="output directory: checkpoints, metrics.jsonl, loss.png, the HF model")
    t.add_argument("--tokenizer", help="tokenizer for a preset: 'default', a .gguf file or an HF directory")
    t.add_argument("--device", help="cpu or cuda (default: cuda under torchrun when present)")
    flag = argparse.BooleanOptionalAction
    for name, kind in [("max-steps", int), ("seq-len", int), ("batch-size", int), ("grad-accum", int),
                       ("lr", float), ("min-lr-ratio", float), ("warmup-steps", int), ("weight-decay", float),
                       ("grad-clip", float), ("eval-every", int), ("eval-items", int), ("save-every", int),
                       ("seed", int), ("val-fraction", float), ("lora-rank", int), ("lora-alpha", float),
                       ("lora-dropout", float), ("beta", float)]:
        t.add_argument(f"--{name}", type=kind)
    t.add_argument("--lora-targets", nargs="+")
    t.add_argument("--qlora-type", choices=["nf4", "int4"])
    for name in ("lora", "qlora", "bf16", "checkpointing", "resume", "progress"):
        t.add_argument(f"--{name}", action=flag, default=None)
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("estimate", help="training memory: weights, gradients, optimizer, activations")
    e.add_argument("model", help=f"a preset or {MODEL_HELP}")
    e.add_argument("--method", default="full", choices=["full", "lora", "qlora"])
    e.add_argument("--seq-len", type=int, default=512)
    e.add_argument("--batch", type=int, default=1)
    e.add_argument("--lora-rank", type=int, default=16)
    e.add_argument("--checkpointing", action="store_true", help="activation checkpointing per block")
    e.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_estimate)


def _config_of(name: str):
    from zenlm.weights.registry import resolve

    _pull_first(name)
    return resolve(name).config()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="zen", description="zenlm: run the zen model family")
    sub = parser.add_subparsers(dest="command", required=True)

    g = sub.add_parser("generate", help="complete one prompt and print only the completion")
    g.add_argument("prompt")
    _add_model(g)
    g.add_argument("--system", help="system message (chat template)")
    g.add_argument("--max-tokens", type=int, default=256)
    g.add_argument("--temperature", type=float, default=None, help="0 = greedy; default from the model")
    g.add_argument("--seed", type=int, default=None)
    g.add_argument("--raw", action="store_true", help="no chat template: complete the text as it is")
    g.set_defaults(func=cmd_generate)

    c = sub.add_parser("chat", help="interactive chat in the terminal")
    _add_model(c)
    c.add_argument("--system", help="system message")
    c.add_argument("--max-tokens", type=int, default=1024)
    c.add_argument("--temperature", type=float, default=None)
    c.add_argument("--seed", type=int, default=None)
    c.set_defaults(func=cmd_chat)

    s = sub.add_parser("serve", help="OpenAI-compatible HTTP server (and Ollama's API, and a web chat)")
    _add_model(s)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8000, help="0 picks a free port (the URL printed says which)")
    s.add_argument("--api-key", default=None, help="require 'Authorization: Bearer KEY' (default: $ZEN_API_KEY)")
    s.add_argument("--served-model-name", default=None, help="the model id clients use (default: --model)")
    s.add_argument("--max-num-seqs", type=int, default=16, help="sequences decoded together")
    s.add_argument("--max-waiting", type=int, default=256,
                   help="requests queued beyond those running; more get 429 with Retry-After")
    s.add_argument("--kv-cache-tokens", type=int, default=None,
                   help="tokens the paged KV cache holds, all sequences together (default: the model's context); "
                        "its memory is touched as it fills")
    s.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    s.add_argument("--allowed-origins", default=None, metavar="LIST",
                   help="comma-separated origins browsers may call from, '*' for any; loopback origins always "
                        "may (default: $ZEN_ALLOWED_ORIGINS)")
    s.add_argument("--allowed-hosts", default=None, metavar="LIST",
                   help="comma-separated Host names accepted besides loopback ones; bound to loopback, others "
                        "get 403 (DNS rebinding); setting it turns the check on for any --host "
                        "(default: $ZEN_ALLOWED_HOSTS)")
    s.add_argument("--max-body-bytes", type=int, default=16 * 1024 * 1024,
                   help="request bodies over this get 413 (default: 16 MiB)")
    s.set_defaults(func=cmd_serve)

    b = sub.add_parser("bench", help="measure load, prefill, decode, time to first token, throughput, memory")
    b.add_argument("--model", default="default")
    b.add_argument("--dtype", default="int4", choices=["float32", "bfloat16", "int8", "int4"])
    b.add_argument("--device", default="cpu")
    b.add_argument("--prompt-tokens", type=int, default=512)
    b.add_argument("--gen-tokens", type=int, default=128)
    b.add_argument("--concurrency", type=int, default=8)
    b.add_argument("--json", action="store_true")
    b.set_defaults(func=cmd_bench)

    i = sub.add_parser("info", help="config and parameter counts of a model or preset; --system: the kernels here")
    i.add_argument("model", nargs="?", help=f"a preset name or {MODEL_HELP}")
    i.add_argument("--json", action="store_true")
    i.add_argument("--list", action="store_true", help="list the presets")
    i.add_argument("--system", action="store_true",
                   help="which kernels run here (avx512-vnni, avx2, plain C or torch ops), compiler, torch, threads")
    i.set_defaults(func=cmd_info)
    _add_train(sub)
    _add_eval(sub)
    _add_store(sub)
    le = sub.add_parser("lm-eval", add_help=False,
                        help="lm-eval-harness's command line with zenlm as a model: zen lm-eval --model zenlm "
                             "--model_args model=default,dtype=int4 --tasks ...")
    le.add_argument("args", nargs=argparse.REMAINDER)
    le.set_defaults(func=cmd_lm_eval)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["lm-eval"]:  # every argument is lm-eval's, flags included (argparse would claim them)
        args = argparse.Namespace(func=cmd_lm_eval, args=argv[1:])
    else:
        args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"zen: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
