"""Reward functions for RL: exact_number (GSM8K-style), unit_tests (candidate code runs only in zenlm's process
sandbox), module:function, a reward-model directory, bad specs; and `zen train grpo|ppo` from the CLI.
"""

import json

import pytest
import torch

from tests.tiny_train import write_model_dir
from zenlm.cli import main
from zenlm.train.reward import load_scorer, save_head, scalar_head
from zenlm.train.rewards import exact_number, resolve_reward, unit_tests


def test_exact_number():
    recs = [{"answer": "Natalia sold 48/2 = 24 clips.\n#### 1,000"}, {"answer": 18}, {"answer": "7"}, {"answer": "3"}]
    outs = ["so it is \\boxed{1000}", "She pays $18.00.", "7 or maybe 8", "no number"]
    assert exact_number(recs, outs) == [1.0, 1.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="answer"):
        exact_number([{}], ["1"])


def test_unit_tests_run_in_the_sandbox(tmp_path):
    recs = [{"tests": ["assert add(2, 3) == 5", "assert add(-1, 1) == 0"]}] * 3 + [
        {"test_list": ["assert open('x', 'w') and True"], "test_imports": ["import os"]}]
    outs = ["```python\ndef add(a, b):\n    return a + b\n```",
            "```python\ndef add(a, b):\n    return a - b\n```",
            "def add(a, b):\n    while True: pass\n",
            "```python\nx = 1\n```"]
    got = unit_tests(recs, outs, timeout=3.0)
    assert got[:3] == [1.0, 0.0, 0.0]
    assert got[3] == 1.0  # writes inside its own work directory, not here
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="tests"):
        unit_tests([{}], ["x"])


def double_length(record, completion):
    return 2.0 * len(completion)


def test_resolve_reward_specs(tmp_path):
    assert resolve_reward("tests.test_train_rl_rewards:double_length")([{}], ["abc"]) == [6.0]
    assert resolve_reward(lambda r, c: 1.5)([{}, {}], ["a", "b"]) == [1.5, 1.5]
    for bad, msg in [("nope", "unknown reward"), ("tests.nothing_here:f", "cannot load"),
                     ("tests.test_train_rl_rewards:json", "not a function"), (str(tmp_path), "not a reward model")]:
        with pytest.raises(ValueError, match=msg):
            resolve_reward(bad)
    rm = write_model_dir(tmp_path / "rm")
    torch.manual_seed(0)
    head = scalar_head(64)
    torch.nn.init.normal_(head.weight)
    save_head(rm, head)
    fn = resolve_reward(str(rm))
    want = load_scorer(rm).score([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}])
    assert fn([{"prompt": "hi"}], ["yo"]) == [want] and want != 0.0


def test_cli_grpo_and_ppo(tmp_path):
    base = write_model_dir(tmp_path / "base")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{i} + 1 = ?", "answer": i + 1}) + "\n" for i in range(4)))
    common = ["--model", str(base), "--data", str(prompts), "--max-steps", "1", "--batch-size", "4",
              "--max-new-tokens", "4", "--no-progress", "--no-bf16", "--val-fraction", "0"]
    assert main(["train", "grpo", *common, "--output", str(tmp_path / "g"), "--reward", "exact_number",
                 "--group-size", "2"]) == 0
    rec = json.loads((tmp_path / "g" / "metrics.jsonl").read_text())
    assert rec["reward"] == 0.0 and "kl" in rec  # a random tiny model does not do sums
    assert main(["train", "ppo", *common, "--output", str(tmp_path / "p"), "--reward", "exact_number",
                 "--group-size", "1", "--lora"]) == 0
    assert "value_loss" in json.loads((tmp_path / "p" / "metrics.jsonl").read_text())
    assert main(["train", "grpo", *common, "--output", str(tmp_path / "x")]) == 1  # no reward given
