"""The one training loop: items -> micro-batches -> loss fn -> AdamW step, for pretraining, SFT, DPO, reward
models, GRPO and PPO alike (RL's data source is a rollout stage, train/rollout.py, that generates its items).

Each step counts the loss's normaliser (valid tokens, or pairs) over all micro-batches and ranks
first, then backpropagates sum / count per micro-batch, so accumulation and data parallelism equal
one big batch. Warmup + cosine LR, grad clipping, bf16 autocast, activation checkpointing per block,
held-out loss, progress bar, metrics.jsonl, loss-curve PNG, DCP checkpoints with exact resume.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

from zenlm.train import distributed as D
from zenlm.train.data import Batch, Loader
from zenlm.train.losses import LossOut
from zenlm.train.plot import loss_curve


@dataclass(slots=True)
class TrainConfig:
    output: str = "out"
    max_steps: int = 100
    batch_size: int = 4  # rows per micro-batch on each rank
    grad_accum: int = 1  # micro-batches per optimizer step
    lr: float = 3e-4
    embedding_lr_scale: float = 1.0  # the input embedding's lr = lr * this (no weight decay on it if != 1)
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 10
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 = off
    bf16: bool = True  # bf16 autocast (weights and optimizer stay fp32)
    checkpointing: bool = False  # activation checkpointing per block
    eval_every: int = 0  # steps between held-out losses; 0 = only at the end
    eval_items: int = 32  # held-out rows (or pairs) evaluated each time
    save_every: int = 0  # steps between checkpoints; 0 = only at the end
    seed: int = 0
    progress: bool = True
    resume: bool = True  # continue from the newest complete checkpoint under output/checkpoints

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def lr_factor(step: int, cfg: TrainConfig) -> float:
    """Linear warmup to 1 over warmup_steps, then cosine down to min_lr_ratio at max_steps."""
    if step < cfg.warmup_steps:
        return (step + 1) / cfg.warmup_steps
    span = max(1, cfg.max_steps - cfg.warmup_steps)
    t = min(1.0, (step - cfg.warmup_steps) / span)
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))


def hidden_states(model: nn.Module, batch: Batch, checkpointing: bool = False) -> torch.Tensor:
    """tokens [B, T] -> final-norm hidden states [B, T, C], block-causal over batch.docs."""
    x = model.model.embed_tokens(batch.tokens)  # [B, T, C]
    cos, sin = model.rotary(batch.positions, x.dtype)
    for block in model.model.layers:
        if checkpointing and torch.is_grad_enabled():
            x = checkpoint(block, x, cos, sin, batch.positions, None, batch.docs, use_reentrant=False)
        else:
            x = block(x, cos, sin, batch.positions, None, batch.docs)
    return model.model.norm(x)


def eval_batches(n: int, rank: int, world: int, batch_size: int) -> list[list[int]]:
    """This rank's held-out batches as item indices (items rank, rank + world, ...), padded with empty
    batches so that every rank gets the same number: ceil(ceil(n / world) / batch_size)."""
    mine = list(range(rank, n, world))
    count = math.ceil(math.ceil(n / world) / batch_size)
    return [mine[s * batch_size:(s + 1) * batch_size] for s in range(count)]


class Objective(nn.Module):
    """The model plus how a loss sees it; the root module FSDP wraps (its forward is one micro-batch).
    `heads` holds trainable modules a loss uses besides the model (a reward model's or PPO's scalar head):
    they are optimized and checkpointed with it, and left out of the exported model."""

    def __init__(self, model: nn.Module, checkpointing: bool = False, heads: nn.Module | None = None):
        super().__init__()
        self.model, self.checkpointing = model, checkpointing
        if heads is not None:
            self.heads = heads

    def forward(self, batch: Batch, loss) -> tuple[torch.Tensor, dict]:
        out: LossOut = loss(lambda b: hidden_states(self.model, b, self.checkpointing),
                            self.model.lm_head.weight, batch)
        return out.total, out.metrics


class Trainer:
    def __init__(self, model: nn.Module, loss, data: Loader, collate: Callable[[list], Batch], cfg: TrainConfig,
                 held_out: list | None = None, dist: D.Dist | None = None, heads: nn.Module | None = None):
        self.cfg, self.loss, self.data, self.collate = cfg, loss, data, collate
        self.held_out, self.d = held_out or [], dist or D.Dist()
        self.model = model
        self.objective = Objective(model, cfg.checkpointing, heads)
        if self.d.active:
            D.shard(self.objective, model.model.layers, self.d)
        params = [p for p in self.objective.parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        self.frozen_too = all(p.requires_grad for p in self.objective.parameters())
        emb = model.model.embed_tokens.weight
        own = cfg.embedding_lr_scale != 1.0 and emb.requires_grad  # its own group: rows learn only when seen
        decay = [p for p in params if p.ndim >= 2 and not (own and p is emb)]
        rest = [p for p in params if p.ndim < 2]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": rest, "weight_decay": 0.0}]
        if own:
            groups.append({"params": [emb], "weight_decay": 0.0, "lr": cfg.lr * cfg.embedding_lr_scale})
        self.opt = torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), foreach=True)
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, cfg))
        self.step = 0
        self.history: list[dict] = []
        self.out = Path(cfg.output)
        self.out.mkdir(parents=True, exist_ok=True)
        if cfg.resume and (ck := D.latest_checkpoint(self.out / "checkpoints")) is not None:
            self.load(ck)

    # ---- one optimizer step ------------------------------------------------------------------
    def _micro_batches(self, items: list) -> list[Batch]:
        B, A = self.cfg.batch_size, self.cfg.grad_accum
        mine = items[self.d.rank * B * A:(self.d.rank + 1) * B * A]
        return [self.collate(mine[a * B:(a + 1) * B]).to(self.d.device) for a in range(A)]

    def _autocast(self):
        return torch.autocast(self.d.device.type, dtype=torch.bfloat16, enabled=self.cfg.bf16)

    def train_step(self) -> dict:
        t0 = time.perf_counter()
        self.objective.train()
        micro = self._micro_batches(self.data.next_step())
        count = D.all_reduce_sum(torch.tensor(float(sum(self.loss.count(b) for b in micro)),
                                              device=self.d.device), self.d)
        total = torch.zeros((), device=self.d.device)
        sums: dict[str, float] = {}
        for b in micro:
            with self._autocast():
                loss_sum, metrics = self.objective(b, self.loss)
            (loss_sum * self.d.world / count.clamp_min(1)).backward()  # FSDP averages over ranks
            total += loss_sum.detach().float()
            for k, v in metrics.items():
                sums[k] = sums.get(k, 0.0) + v
        keys = sorted(sums)
        stats = D.all_reduce_sum(torch.tensor([float(total)] + [sums[k] for k in keys], device=self.d.device), self.d)
        params = [p for p in self.objective.parameters() if p.grad is not None]
        norm = torch.nn.utils.clip_grad_norm_(params, self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf"))
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        lr = self.opt.param_groups[0]["lr"]
        self.opt.step()
        self.sched.step()
        self.opt.zero_grad(set_to_none=True)
        self.step += 1
        n = max(float(count), 1.0)
        tokens = sum(b.tokens.numel() for b in micro) * self.d.world
        dt = time.perf_counter() - t0
        rec = {"step": self.step, "loss": float(stats[0]) / n, "lr": lr, "tokens_per_s": tokens / dt,
               "grad_norm": float(norm), "tokens": tokens}
        rec |= {k: float(v) / n for k, v in zip(keys, stats[1:])}
        rec |= getattr(self.data, "stats", {})  # a rollout stage's own figures (mean reward, lengths)
        return rec

    def evaluate(self) -> float | None:
        """Mean held-out loss (sum over the first eval_items items / their count), over all ranks."""
        return self.evaluate_metrics().get("eval_loss")

    @torch.no_grad()
    def evaluate_metrics(self) -> dict[str, float]:
        """Held-out loss and the loss's metrics ("eval_" + name), each summed over the first eval_items
        items and divided by their count, over all ranks; {} without held-out items.

        Every rank runs the same number of forwards (FSDP's collectives need it): a rank whose share
        is short runs padding batches whose loss is dropped.
        """
        items = self.held_out[:self.cfg.eval_items]
        if not items:
            return {}
        self.objective.eval()
        total: torch.Tensor | None = None
        keys: list[str] = []
        for part in eval_batches(len(items), self.d.rank, self.d.world, self.cfg.batch_size):
            b = self.collate([items[i] for i in part] or items[:1]).to(self.d.device)
            with self._autocast():
                loss_sum, metrics = self.objective(b, self.loss)
            keys = sorted(metrics)
            row = torch.tensor([float(loss_sum), float(self.loss.count(b))] + [metrics[k] for k in keys],
                               device=self.d.device)
            total = row * bool(part) if total is None else total + row * bool(part)
        D.all_reduce_sum(total, self.d)
        n = float(total[1].clamp_min(1))
        return {"eval_loss": float(total[0]) / n} | {f"eval_{k}": float(v) / n for k, v in zip(keys, total[2:])}

    # ---- the run -----------------------------------------------------------------------------
    def fit(self) -> list[dict]:
        cfg = self.cfg
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", unit="step",
                   disable=not (cfg.progress and self.d.main), dynamic_ncols=True)
        while self.step < cfg.max_steps:
            rec = self.train_step()
            last = self.step == cfg.max_steps
            if (cfg.eval_every and self.step % cfg.eval_every == 0) or last:
                rec |= self.evaluate_metrics()
            self.history.append(rec)
            if self.d.main:
                with open(self.out / "metrics.jsonl", "a") as f:
                    f.write(json.dumps(rec) + "\n")
            bar.set_postfix(loss=f"{rec['loss']:.4f}", lr=f"{rec['lr']:.2e}", tok_s=f"{rec['tokens_per_s']:.0f}")
            bar.update(1)
            if (cfg.save_every and self.step % cfg.save_every == 0) or last:
                self.save()
        bar.close()
        if self.d.main:
            self.plot()
        return self.history

    def plot(self) -> None:
        train = [(r["step"], r["loss"]) for r in self.history]
        held = [(r["step"], r["eval_loss"]) for r in self.history if "eval_loss" in r]
        reward = [(r["step"], r["reward"]) for r in self.history if "reward" in r]
        loss_curve(self.out / "loss.png", train, held, reward)

    # ---- checkpoints -------------------------------------------------------------------------
    def save(self) -> Path:
        path = self.out / "checkpoints" / f"step_{self.step:07d}"
        state = {"step": self.step, "scheduler": self.sched.state_dict(), "data": self.data.state_dict(),
                 "history": self.history}
        D.save_checkpoint(path, self.objective, self.opt, state, self.d, self.frozen_too)
        return path

    def load(self, path: Path) -> None:
        state = D.load_checkpoint(path, self.objective, self.opt, self.d, self.frozen_too)
        self.step = state["step"]
        self.sched.load_state_dict(state["scheduler"])
        self.data.load_state_dict(state["data"])
        self.history = [r for r in state["history"] if r["step"] <= self.step]
        if self.d.main:  # metrics.jsonl holds exactly the steps this run stands on
            with open(self.out / "metrics.jsonl", "w") as f:
                f.writelines(json.dumps(r) + "\n" for r in self.history)

    def state_dict_for_export(self) -> dict[str, torch.Tensor]:
        """The model's tensors under HF names (before LoRA folding), gathered on rank 0."""
        sd = D.full_state_dict(self.objective, self.d)
        return {k.removeprefix("model."): v for k, v in sd.items() if k.startswith("model.")}
