"""`zen train grpo|ppo`: prompts + a reward -> the rollout stage, an RL loss -> the one Trainer -> HF directory.

The policy is the loaded model (full weights or LoRA); the reference is a frozen copy of it, or the same
model with its adapters disabled; PPO adds a value head on the policy's hidden states. Before and after
training the greedy mean reward on held-out prompts is measured and written to rl_eval.json.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path
from typing import TYPE_CHECKING

from zenlm.train import data as data_mod
from zenlm.train.lora import adapters_disabled
from zenlm.train.reward import scalar_head
from zenlm.train.rewards import prompt_messages, resolve_reward
from zenlm.train.rl import GRPO, PPO
from zenlm.train.rollout import RolloutConfig, Rollouts, collate_rollouts
from zenlm.train.trainer import Trainer, hidden_states

if TYPE_CHECKING:
    from zenlm.train.run import RunConfig

RL_TASKS = ("grpo", "ppo")


def prompt_records(paths: list[str]) -> list[dict]:
    """JSONL prompt records ("prompt" or "messages", plus what the reward reads: "answer", "tests", ...)."""
    out = []
    for f in data_mod.expand_files(paths):
        for n, rec in enumerate(data_mod.read_jsonl(f), 1):
            try:
                prompt_messages(rec)
            except ValueError as e:
                raise ValueError(f"{f}:{n}: {e}") from None
            out.append(rec)
    return out


def split_prompts(rc: RunConfig) -> tuple[list[dict], list[dict]]:
    if not rc.data:
        raise ValueError("give prompts (--data FILE...)")
    records = prompt_records(rc.data)
    if rc.eval_data:
        return records, prompt_records(rc.eval_data)
    order = list(range(len(records)))
    random.Random(rc.train.seed).shuffle(order)
    k = int(len(records) * rc.val_fraction) if len(records) > 1 else 0
    return [records[i] for i in sorted(order[k:])], [records[i] for i in order[:k]]


def run_rl(rc: RunConfig, d, config, model, tokenizer, gen: dict, lora_cfg) -> Trainer:
    from zenlm.train.run import export

    if d.world > 1:
        raise ValueError("RL training runs in one process (no torchrun)")
    if rc.reward is None:
        raise ValueError("give a reward (--reward exact_number|unit_tests|module:function|REWARD_MODEL_DIR)")
    train, held = split_prompts(rc)
    reward = resolve_reward(rc.reward, str(d.device))
    if lora_cfg is not None:
        def reference(b):
            with adapters_disabled(model):
                return hidden_states(model, b), model.lm_head.weight
    else:
        frozen = copy.deepcopy(model).eval().requires_grad_(False)

        def reference(b):
            return hidden_states(frozen, b), frozen.lm_head.weight

    def policy(b):
        return hidden_states(model, b), model.lm_head.weight

    algo = rc.task
    heads = scalar_head(config.hidden_size).to(d.device) if algo == "ppo" else None
    cfg = RolloutConfig(algo, rc.group_size, rc.max_new_tokens, rc.temperature, rc.rollout_reuse, rc.kl_coef,
                        rc.gamma, rc.lam, rc.train.seed)
    per_step = rc.train.batch_size * rc.train.grad_accum
    rollouts = Rollouts(model, tokenizer, train, reward, per_step, cfg, policy, reference, heads, d.device,
                        rc.train.bf16, rc.train.batch_size)
    loss = GRPO(rc.clip, rc.kl_coef) if algo == "grpo" else PPO(heads, rc.clip, rc.value_clip, rc.vf_coef)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_ids[0]
    trainer = Trainer(model, loss, rollouts, lambda items: collate_rollouts(items, pad), rc.train, dist=d, heads=heads)
    start = rollouts.mean_reward(held) if held else None
    trainer.fit()
    end = rollouts.mean_reward(held) if held else None
    figures = {"held_out_prompts": len(held), "eval_reward_start": start, "eval_reward_end": end,
               "train_reward_first": trainer.history[0].get("reward") if trainer.history else None,
               "train_reward_last": trainer.history[-1].get("reward") if trainer.history else None}
    Path(rc.output, "rl_eval.json").write_text(json.dumps(figures, indent=2) + "\n")
    export(trainer, rc, config, tokenizer, gen, lora_cfg)
    return trainer
