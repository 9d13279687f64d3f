"""Reward functions for RL: (prompt records, completion texts) -> one float per completion.

Built-ins (verifiable rewards): `exact_number` (the last number of the answer, or the last \\boxed{} one,
equals the record's "answer" as a number; GSM8K's "#### 18" gold works too) and `unit_tests` (the
answer's code with the record's "tests" asserts, MBPP's "test_list" too, exits 0 in zenlm's process
sandbox; never run in this process). `module:function` names a Python function
f(record, completion) -> float. A directory written by `zen train rm` scores prompt + completion.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

RewardFn = Callable[[list[dict], list[str]], list[float]]


def prompt_messages(record: dict) -> list[dict]:
    """A prompt record's conversation: "prompt" (a string: one user turn, or messages) or "messages"."""
    prompt = record.get("prompt", record.get("messages"))
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list) or not prompt:
        raise ValueError("a prompt record needs 'prompt' (a string or a list of messages)")
    return prompt


def exact_number(records: list[dict], completions: list[str]) -> list[float]:
    from zenlm.eval.tasks.gsm8k import extract, normalize

    out = []
    for rec, text in zip(records, completions):
        if "answer" not in rec:
            raise ValueError("exact_number needs an 'answer' in every prompt record")
        gold = normalize(str(rec["answer"]).split("####")[-1])
        got = extract(text)
        out.append(float(gold is not None and got is not None and normalize(got) == gold))
    return out


def unit_tests(records: list[dict], completions: list[str], timeout: float = 10.0) -> list[float]:
    from zenlm.eval.extract import extract_code
    from zenlm.eval.sandbox import run_many

    programs = []
    for rec, text in zip(records, completions):
        tests = rec.get("tests", rec.get("test_list"))
        if isinstance(tests, str):
            tests = [tests]
        if not tests:
            raise ValueError("unit_tests needs 'tests' (asserts) in every prompt record")
        setup = "\n".join(rec.get("test_imports") or [])
        programs.append(f"{setup}\n{extract_code(text, rec.get('entry_point'))}\n\n" + "\n".join(tests) + "\n")
    return [float(r.passed) for r in run_many(programs, timeout)]


BUILTIN: dict[str, RewardFn] = {"exact_number": exact_number, "unit_tests": unit_tests}


def per_sample(fn: Callable[[dict, str], float]) -> RewardFn:
    def rewards(records: list[dict], completions: list[str]) -> list[float]:
        return [float(fn(r, c)) for r, c in zip(records, completions)]
    return rewards


def scorer_reward(directory: str | Path, device: str = "cpu") -> RewardFn:
    """A reward model's score of each prompt + completion (as the assistant's answer)."""
    from zenlm.train.reward import load_scorer

    scorer = load_scorer(directory, device)

    def rewards(records: list[dict], completions: list[str]) -> list[float]:
        return scorer.score_many([prompt_messages(r) + [{"role": "assistant", "content": c}]
                                  for r, c in zip(records, completions)])
    return rewards


def resolve_reward(spec: str | Callable, device: str = "cpu") -> RewardFn:
    """A built-in name, `module:function`, a reward-model directory, or a callable f(record, completion)."""
    from zenlm.train.reward import is_reward_model

    if callable(spec):
        return per_sample(spec)
    if spec in BUILTIN:
        return BUILTIN[spec]
    if Path(spec).is_dir():
        if not is_reward_model(spec):
            raise ValueError(f"reward {spec!r} is a directory but not a reward model (train one with `zen train rm`)")
        return scorer_reward(spec, device)
    module, sep, name = spec.partition(":")
    if not sep or not module or not name:
        raise ValueError(f"unknown reward {spec!r}: give {', '.join(BUILTIN)}, module:function or a reward model")
    try:
        fn = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"cannot load reward function {spec!r} ({e})") from None
    if not callable(fn):
        raise ValueError(f"reward {spec!r} is not a function")
    return per_sample(fn)
