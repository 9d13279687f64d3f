"""The rollout stage: the RL data source of the one training loop.

Each optimizer step asks it for items (Trainer calls next_step() as on any Loader). It takes the next
prompts, samples completions with zenlm's batched engine (zenlm.engine.Engine built around the very
model being trained, so it always samples the current weights; seeded per request, so a resumed run
samples the same), scores them with the reward function, and computes under no_grad what the loss
needs per completion token: the sampling policy's and the frozen reference's log-probs, and the
advantages: group-relative (GRPO) or GAE over a value head with the KL penalty in the rewards (PPO).
A batch of rollouts may serve `reuse` optimizer steps (PPO epochs); `stats` holds the last one's
reward figures for metrics.jsonl. Its state (prompt order, cached rollouts) goes into checkpoints.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from zenlm.train.data import IGNORE, Batch, Loader
from zenlm.train.rewards import RewardFn, prompt_messages
from zenlm.train.rl import RolloutBatch, gae, group_advantages, token_logps_entropy, whiten

# (batch) -> (final hidden states [B, T, C], head weight [V, C]) of the policy or of the reference
HiddenFn = Callable[[Batch], tuple[torch.Tensor, torch.Tensor]]


@dataclass(slots=True)
class RolloutConfig:
    algorithm: str = "grpo"  # grpo | ppo
    group_size: int = 4  # completions per prompt (GRPO's group; PPO may use 1)
    max_new_tokens: int = 64
    temperature: float = 1.0
    reuse: int = 1  # optimizer steps per batch of rollouts
    kl_coef: float = 0.04  # PPO: per-token KL penalty in the reward (GRPO puts it in the loss)
    gamma: float = 1.0
    lam: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.algorithm not in ("grpo", "ppo"):
            raise ValueError(f"unknown RL algorithm {self.algorithm!r}")
        if self.algorithm == "grpo" and self.group_size < 2:
            raise ValueError("GRPO needs group_size >= 2 (advantages are relative to the group)")
        if self.group_size < 1 or self.max_new_tokens < 1 or self.reuse < 1:
            raise ValueError("group_size, max_new_tokens and reuse must be >= 1")


@dataclass(slots=True)
class Rollout:
    """One sampled completion as a training row, with per-token float lists at label positions."""
    tokens: list[int]
    labels: list[int]
    advantages: list[float]
    old_logps: list[float]
    ref_logps: list[float]
    returns: list[float]
    old_values: list[float]


def collate_rollouts(items: list[Rollout], pad_id: int = 0) -> RolloutBatch:
    """Rows padded on the right to the longest; padding carries no label."""
    T = max(len(r.tokens) for r in items)

    def pad(xs: list, fill) -> list:
        return list(xs) + [fill] * (T - len(xs))

    ints = lambda key, fill: torch.tensor([pad(getattr(r, key), fill) for r in items], dtype=torch.long)  # noqa: E731
    floats = lambda key: torch.tensor([pad(getattr(r, key), 0.0) for r in items], dtype=torch.float32)  # noqa: E731
    positions = torch.arange(T).repeat(len(items), 1)
    return RolloutBatch(ints("tokens", pad_id), ints("labels", IGNORE), positions, None, 0, floats("advantages"),
                        floats("old_logps"), floats("ref_logps"), floats("returns"), floats("old_values"))


class Rollouts:
    def __init__(self, model: nn.Module, tokenizer, prompts: list[dict], reward: RewardFn, per_step: int,
                 cfg: RolloutConfig, policy: HiddenFn, reference: HiddenFn, value_head: nn.Module | None = None,
                 device: torch.device | str = "cpu", bf16: bool = False, forward_rows: int = 8):
        if per_step % cfg.group_size:
            raise ValueError(f"rows per step ({per_step}) must be a multiple of group_size ({cfg.group_size})")
        if cfg.algorithm == "ppo" and value_head is None:
            raise ValueError("PPO rollouts need a value head")
        self.model, self.tokenizer, self.reward, self.cfg = model, tokenizer, reward, cfg
        self.policy, self.reference, self.value_head = policy, reference, value_head
        self.device, self.bf16, self.forward_rows = torch.device(device), bf16, forward_rows
        self.prompt_ids = [self.encode(p) for p in prompts]
        self.prompts = Loader(list(range(len(prompts))), per_step // cfg.group_size, seed=cfg.seed)
        self.records, self.per_step = prompts, per_step
        self.calls, self.cache, self.stats = 0, [], {}
        self._engine = None

    def encode(self, record: dict) -> list[int]:
        text = self.tokenizer.apply_chat(prompt_messages(record), record.get("tools"), add_generation_prompt=True)
        return self.tokenizer.encode(text)

    # ---- sampling ------------------------------------------------------------------------------
    def engine(self):
        if self._engine is None:
            from zenlm.engine.engine import Engine, EngineConfig

            longest = max(len(p) for p in self.prompt_ids) + self.cfg.max_new_tokens
            rows = min(self.per_step, 64)
            ec = EngineConfig(kv_cache_tokens=min(rows * (longest + 16), self.model.config.context_length * rows),
                              max_num_seqs=rows, max_num_batched_tokens=max(512, longest))
            self._engine = Engine(self.model, self.tokenizer, {}, torch.float32, self.device, ec)
        return self._engine

    def generate(self, prompt_ids: list[list[int]], temperature: float, seeds: list[int]) -> list[list[int]]:
        """Completion token ids (ending with the end-of-turn token when the model stopped) of each prompt."""
        from zenlm.engine.sampling import SamplingParams

        engine, was_training = self.engine(), self.model.training
        self.model.eval()
        seqs = []
        try:
            for ids, seed in zip(prompt_ids, seeds):
                p = SamplingParams(max_tokens=self.cfg.max_new_tokens, temperature=temperature, top_p=1.0, top_k=0,
                                   min_p=0.0, repetition_penalty=1.0, seed=seed)
                seqs.append(engine.add(ids, p))
            while engine.has_work:
                engine.step()
        finally:
            for s in seqs:
                engine.abort(s)
            self.model.train(was_training)
        for s in seqs:
            if s.finish_reason and s.finish_reason.startswith("error"):
                raise RuntimeError(f"rollout generation failed ({s.finish_reason})")
        return [list(s.output_ids) for s in seqs]

    def mean_reward(self, records: list[dict], temperature: float = 0.0) -> float:
        """Mean reward of one completion per record (greedy by default): the held-out figure."""
        outs = self.generate([self.encode(r) for r in records], temperature, [self.cfg.seed] * len(records))
        texts = [self.tokenizer.decode(o, True) for o in outs]
        return sum(self.reward(records, texts)) / max(1, len(records))

    # ---- the data-source interface the Trainer uses --------------------------------------------
    def next_step(self) -> list[Rollout]:
        if self.calls % self.cfg.reuse == 0:
            self.cache = self.make()
        self.calls += 1
        return self.cache

    def make(self) -> list[Rollout]:
        G = self.cfg.group_size
        picks = [i for i in self.prompts.next_step() for _ in range(G)]  # G adjacent copies of each prompt
        base = (self.cfg.seed * 1_000_003 + self.calls) * 4096
        outs = self.generate([self.prompt_ids[i] for i in picks], self.cfg.temperature,
                             [base + k for k in range(len(picks))])
        records = [self.records[i] for i in picks]
        scores = torch.tensor(self.reward(records, [self.tokenizer.decode(o, True) for o in outs]),
                              dtype=torch.float32)
        rows = []
        for i, out in zip(picks, outs):
            p = self.prompt_ids[i]
            tokens = p + out
            labels = [IGNORE] * (len(p) - 1) + out + [IGNORE]
            rows.append(Rollout(tokens, labels, [], [], [], [], []))
        self.fill(rows, scores)
        lengths = [len(o) for o in outs]
        self.stats = {"reward": float(scores.mean()), "reward_std": float(scores.std()) if len(scores) > 1 else 0.0,
                      "completion_tokens": sum(lengths) / len(lengths)}
        return rows

    @torch.no_grad()
    def fill(self, rows: list[Rollout], scores: torch.Tensor) -> None:
        """Per-token log-probs (policy, reference), values and advantages of the rows, in place."""
        autocast = (torch.autocast(self.device.type, dtype=torch.bfloat16) if self.bf16
                    else contextlib.nullcontext())
        was_training = self.model.training
        self.model.eval()
        parts = []
        try:
            for s in range(0, len(rows), self.forward_rows):
                b = collate_rollouts(rows[s:s + self.forward_rows]).to(self.device)
                with autocast:
                    h, w = self.policy(b)
                    old, _ = token_logps_entropy(h, w, b.labels)
                    values = (self.value_head(h).float()[..., 0] if self.value_head is not None
                              else torch.zeros_like(old))
                    hr, wr = self.reference(b)
                    ref, _ = token_logps_entropy(hr, wr, b.labels)
                parts.append(((b.labels != IGNORE).float(), old.float(), ref.float(), values.float()))
        finally:
            self.model.train(was_training)
        T = max(len(r.tokens) for r in rows)

        def cat(i: int) -> torch.Tensor:  # the row groups' [b, t] pieces -> [rows, T]
            return torch.cat([torch.nn.functional.pad(p[i], (0, T - p[i].shape[1])) for p in parts])

        mask, old, ref, values = cat(0).bool(), cat(1), cat(2), cat(3)
        if self.cfg.algorithm == "grpo":
            adv = group_advantages(scores, self.cfg.group_size)[:, None].to(old.device) * mask
            returns = torch.zeros_like(old)
        else:
            per_token = -self.cfg.kl_coef * (old - ref) * mask
            last = torch.where(mask, torch.arange(T, device=mask.device), -1).amax(1)
            has = last >= 0
            per_token[has.nonzero()[:, 0], last[has]] += scores.to(per_token.device)[has]
            adv, returns = gae(per_token, values * mask, mask, self.cfg.gamma, self.cfg.lam)
            adv = whiten(adv, mask)
        for k, r in enumerate(rows):
            n = len(r.tokens)
            r.advantages, r.old_logps, r.ref_logps = adv[k, :n].tolist(), old[k, :n].tolist(), ref[k, :n].tolist()
            r.returns, r.old_values = returns[k, :n].tolist(), (values[k, :n] * mask[k, :n]).tolist()

    def state_dict(self) -> dict:
        return {"prompts": self.prompts.state_dict(), "calls": self.calls, "cache": self.cache, "stats": self.stats}

    def load_state_dict(self, s: dict) -> None:
        self.prompts.load_state_dict(s["prompts"])
        self.calls, self.cache, self.stats = s["calls"], s["cache"], s["stats"]
