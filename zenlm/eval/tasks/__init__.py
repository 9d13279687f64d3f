"""The benchmarks `zen eval` knows, by name: TASKS maps a task name to its class (each keeps eval/task.py's Task)."""

from zenlm.eval.tasks.gsm8k import GSM8K

TASKS = {"gsm8k": GSM8K}
