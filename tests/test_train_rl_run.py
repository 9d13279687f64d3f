"""GRPO and PPO end to end on a tiny model (`zen train grpo|ppo` through train/run.py): a trivially learnable
reward (lowercase letters in the answer) rises, metrics.jsonl carries reward/kl/entropy (and PPO's
value_loss), the loss PNG and the held-out figures are written, and a resumed run repeats the losses.
"""

import json

from tests.tiny_train import write_model_dir
from zenlm.train.run import make_config, run

LETTERS = set("abcdefghijklmnopqrstuvwxyz")


def letters(record: dict, completion: str) -> float:
    """The share of (up to 8) answer characters that are lowercase letters: ~9% for a random tiny model."""
    return sum(c in LETTERS for c in completion) / 8


def settings(tmp_path, task: str, out: str, **over) -> dict:
    base = write_model_dir(tmp_path / "base") if not (tmp_path / "base").exists() else tmp_path / "base"
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Say {i}"}) + "\n" for i in range(24)))
    s = {"task": task, "model": str(base), "data": [str(prompts)], "output": str(tmp_path / out),
         "reward": "tests.test_train_rl_run:letters", "val_fraction": 0.25, "group_size": 4, "max_new_tokens": 8,
         "max_steps": 16, "batch_size": 16, "lr": 5e-3, "warmup_steps": 1, "min_lr_ratio": 1.0,
         "weight_decay": 0.0, "kl_coef": 0.01, "bf16": False, "progress": False}
    return s | over


def rewards(history: list[dict]) -> tuple[float, float]:
    first, last = history[:4], history[-4:]
    return sum(r["reward"] for r in first) / 4, sum(r["reward"] for r in last) / 4


def test_grpo_raises_the_mean_reward(tmp_path):
    tr = run(make_config(settings(tmp_path, "grpo", "grpo")))
    start, end = rewards(tr.history)
    assert end > start + 0.15, [round(r["reward"], 3) for r in tr.history]
    out = tmp_path / "grpo"
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert {"reward", "kl", "entropy", "clip_fraction", "loss"} <= set(rec) and "value_loss" not in rec
    assert rec["kl"] > 0 and rec["entropy"] > 0
    figures = json.loads((out / "rl_eval.json").read_text())
    assert figures["held_out_prompts"] == 6 and figures["eval_reward_start"] is not None
    assert (out / "loss.png").read_bytes()[:4] == b"\x89PNG" and (out / "model.safetensors").exists()


def test_ppo_raises_the_mean_reward(tmp_path):
    tr = run(make_config(settings(tmp_path, "ppo", "ppo", group_size=1)))
    start, end = rewards(tr.history)
    assert end > start + 0.1, [round(r["reward"], 3) for r in tr.history]
    rec = tr.history[-1]
    assert rec["value_loss"] > 0 and rec["kl"] > 0
    assert not any(k.startswith("heads") for k in tr.state_dict_for_export())  # the value head is not exported


def test_resumed_rl_run_repeats_the_losses(tmp_path):
    short = {"max_steps": 4, "batch_size": 8, "rollout_reuse": 2}
    straight = run(make_config(settings(tmp_path, "grpo", "a", **short))).history
    run(make_config(settings(tmp_path, "grpo", "b", **(short | {"max_steps": 3}))))
    resumed = run(make_config(settings(tmp_path, "grpo", "b", **short))).history
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for a, b in zip(straight, resumed):
        assert abs(a["loss"] - b["loss"]) < 1e-6 and a["reward"] == b["reward"], (a, b)
