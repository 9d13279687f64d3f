"""`zen train` (pretrain, SFT, DPO, reward models, GRPO, PPO; train/run.py does the work) and `zen estimate`.
"""

from __future__ import annotations

import argparse
import json

from zenlm.cli.common import MODEL_HELP, config_of, pull_first


def cmd_train(args) -> int:
    from zenlm.train.run import load_yaml, make_config, run

    settings = load_yaml(args.config) if args.config else {}
    given = {k: v for k, v in vars(args).items() if k not in ("func", "command", "config") and v is not None}
    settings |= given
    pull_first(settings.get("model"))
    run(make_config(settings))
    return 0


def cmd_estimate(args) -> int:
    from zenlm.train.estimate import estimate, format_estimate

    est = estimate(config_of(args.model), args.method, args.seq_len, args.batch, lora_rank=args.lora_rank,
                   checkpointing=args.checkpointing, bf16=not args.fp32, qlora_dtype=args.qlora_dtype)
    print(json.dumps(est) if args.json else format_estimate(est))
    return 0


def add(sub) -> None:
    t = sub.add_parser("train", help="pretrain, SFT, DPO, reward model, GRPO or PPO (LoRA/QLoRA; torchrun: not RL)")
    t.add_argument("task", choices=["pretrain", "sft", "dpo", "rm", "grpo", "ppo"])
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
                       ("lora-dropout", float), ("beta", float), ("group-size", int), ("max-new-tokens", int),
                       ("temperature", float), ("rollout-reuse", int), ("kl-coef", float), ("clip", float),
                       ("value-clip", float), ("vf-coef", float), ("gamma", float), ("lam", float)]:
        t.add_argument(f"--{name}", type=kind)
    t.add_argument("--lora-targets", nargs="+")
    t.add_argument("--reward", help="grpo/ppo: exact_number, unit_tests, module:function or a `zen train rm` directory")
    t.add_argument("--qlora-type", choices=["nf4", "int4"])
    t.add_argument("--qlora-dtype", choices=["bf16", "fp32"], help="QLoRA: dtype of the weights not in 4 bits")
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
    e.add_argument("--qlora-dtype", default="bf16", choices=["bf16", "fp32"], help="QLoRA: the weights not in 4 bits")
    e.add_argument("--json", action="store_true")
    e.set_defaults(func=cmd_estimate)
