"""The task registry: `zen eval` names -> task classes (each keeps the contract in zenlm/eval/task.py)."""

from __future__ import annotations

from zenlm.eval.tasks.gsm8k import GSM8K
from zenlm.eval.tasks.humaneval import HumanEval
from zenlm.eval.tasks.mbpp import MBPP
from zenlm.eval.tasks.mc import MC
from zenlm.eval.tasks.needle import Needle
from zenlm.eval.tasks.tooluse import ToolUse

TASKS: dict[str, type] = {"humaneval": HumanEval, "mbpp": MBPP, "gsm8k": GSM8K, "needle": Needle, "tooluse": ToolUse,
                          "mc": MC}


def get_task(name: str):
    """A fresh task object for a registered name."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}: choose from {', '.join(sorted(TASKS))}")
    return TASKS[name]()
