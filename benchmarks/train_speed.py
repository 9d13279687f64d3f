"""Training tokens/s: zenlm's loop vs transformers' Qwen2ForCausalLM, side by side, same config, data and weights.

Default: the zen-tiny preset (4 layers, 96 wide, untied head, 151,936-token vocabulary), sequence 512, batch 4,
bf16 autocast, AdamW, one optimizer step per batch; the first --warmup steps are not timed.
`--lora-model default` also times LoRA SFT steps on a real checkpoint (the default 0.5B model).

    python benchmarks/train_speed.py [--preset zen-tiny] [--seq-len 512] [--batch 4] [--steps 5] [--fp32]
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from zenlm.config import preset
from zenlm.model import Transformer, checkpoint_state_dict
from zenlm.train.data import Batch, Loader, Row
from zenlm.train.export import hf_config
from zenlm.train.losses import CrossEntropy
from zenlm.train.trainer import TrainConfig, Trainer


def random_rows(n: int, T: int, vocab: int, seed: int = 0) -> list[Row]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        t = torch.randint(0, vocab, (T + 1,), generator=g).tolist()
        rows.append(Row(t[:T], t[1:], list(range(T)), [0] * T))
    return rows


def collate_causal(rows: list[Row]) -> Batch:
    t = lambda k: torch.tensor([getattr(r, k) for r in rows])  # noqa: E731
    return Batch(t("tokens"), t("labels"), t("positions"), None)


def time_zen(model, rows, args, out) -> float:
    cfg = TrainConfig(output=out, max_steps=10**6, batch_size=args.batch, lr=1e-4, warmup_steps=1,
                      bf16=not args.fp32, progress=False, resume=False, checkpointing=args.checkpointing)
    tr = Trainer(model, CrossEntropy(), Loader(rows, args.batch, shuffle=False), collate_causal, cfg)
    for _ in range(args.warmup):
        tr.train_step()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        tr.train_step()
    return args.steps * args.batch * args.seq_len / (time.perf_counter() - t0)


def time_hf(model, rows, args) -> float:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, foreach=True)
    batches = [collate_causal(rows[i:i + args.batch]) for i in range(0, len(rows), args.batch)]

    def step(b: Batch) -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=not args.fp32):
            # transformers shifts labels itself: pass the inputs as labels
            loss = model(input_ids=b.tokens, labels=b.tokens).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    for i in range(args.warmup):
        step(batches[i % len(batches)])
    t0 = time.perf_counter()
    for i in range(args.steps):
        step(batches[i % len(batches)])
    return args.steps * args.batch * args.seq_len / (time.perf_counter() - t0)


def time_lora(args) -> dict:
    """LoRA SFT steps on a real checkpoint (rank 16 on every projection), tokens/s."""
    from zenlm.train.lora import LoRAConfig, apply_lora
    from zenlm.weights.load import load

    model = load(args.lora_model, progress=False).model.train()
    apply_lora(model, LoRAConfig(rank=16, alpha=32))
    rows = random_rows(args.batch * (args.steps + args.warmup), args.lora_seq_len, 150000)
    a = argparse.Namespace(**{**vars(args), "seq_len": args.lora_seq_len, "checkpointing": True})
    return {"lora_model": args.lora_model, "lora_seq_len": args.lora_seq_len,
            "lora_tokens_per_s": round(time_zen(model, rows, a, "/tmp/zen-train-speed-lora"), 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="zen-tiny")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--fp32", action="store_true", help="no bf16 autocast")
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing (zenlm only)")
    p.add_argument("--lora-model", help="also time LoRA steps on this model (e.g. 'default')")
    p.add_argument("--lora-seq-len", type=int, default=256)
    p.add_argument("--skip-hf", action="store_true")
    args = p.parse_args()

    c = preset(args.preset)
    torch.manual_seed(0)
    zen = Transformer(c)
    rows = random_rows(args.batch * (args.steps + args.warmup), args.seq_len, c.vocab_size)
    result = {"preset": args.preset, "seq_len": args.seq_len, "batch": args.batch, "bf16": not args.fp32,
              "threads": torch.get_num_threads()}
    if not args.skip_hf:
        import transformers

        hf = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**hf_config(c)))
        hf.load_state_dict(copy.deepcopy(checkpoint_state_dict(zen)), strict=False)  # HF names, unfused
        hf.tie_weights()
        hf.train()
        result["transformers"] = transformers.__version__
        result["transformers_tokens_per_s"] = round(time_hf(hf, rows, args), 1)
        del hf
    result["zenlm_tokens_per_s"] = round(time_zen(zen, rows, args, "/tmp/zen-train-speed"), 1)
    if "transformers_tokens_per_s" in result:
        result["speedup"] = round(result["zenlm_tokens_per_s"] / result["transformers_tokens_per_s"], 2)
    if args.lora_model:
        result |= time_lora(args)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
