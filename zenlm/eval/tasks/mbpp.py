"""MBPP (sanitized): 427 crowd-sourced Python problems shipped in zenlm/eval/data/mbpp (CC-BY-4.0), pass@1.

The prompt is the problem statement followed by three of its test asserts, in a docstring as EvalPlus writes it;
chat mode wraps it in the same instruction as HumanEval, completion mode lets a base model continue it.
score() runs the extracted solution and every one of the problem's asserts through sandbox.py.
"""

from __future__ import annotations

import json
import re
from importlib import resources

from zenlm.eval.extract import MBPP_STOPS, cut_at_stops, extract_code, sanitize
from zenlm.eval.task import Mode, Sample
from zenlm.eval.tasks.humaneval import CodeTask, chat_messages, check_modes

SHOWN_TESTS = 3  # asserts shown in the prompt; all of them are run


def problems() -> list[dict]:
    """The sanitized set (task_id, prompt, code, test_imports, test_list), by task_id."""
    data = resources.files("zenlm.eval").joinpath("data/mbpp/sanitized-mbpp.json").read_text(encoding="utf-8")
    return sorted(json.loads(data), key=lambda p: p["task_id"])


def entry_point(problem: dict) -> str:
    """The reference solution's function that the tests call."""
    tests = "\n".join(problem["test_list"])
    names = re.findall(r"^def\s+(\w+)\s*\(", problem["code"], re.MULTILINE)
    called = [n for n in names if re.search(rf"\b{n}\s*\(", tests)]
    if not called:
        raise ValueError(f"mbpp/{problem['task_id']}: no function of the reference solution is tested")
    return called[-1]


def task_prompt(problem: dict) -> str:
    tests = "\n".join(problem["test_list"][:SHOWN_TESTS])
    return f'"""\n{problem["prompt"]}\n{tests}\n"""\n'


def program(solution: str, problem: dict) -> str:
    imports = "\n".join(problem["test_imports"])
    return f"{imports}\n{solution}\n\n" + "\n".join(problem["test_list"]) + "\n"


class MBPP(CodeTask):
    name = "mbpp"

    def samples(self, mode: Mode, num_shots: int | None = None) -> list[Sample]:
        check_modes(mode, num_shots)
        out = []
        for p in problems():
            ref = {"mode": mode, "entry_point": entry_point(p), "test_imports": p["test_imports"],
                   "test_list": p["test_list"]}
            text = task_prompt(p)
            if mode == "chat":
                out.append(Sample(f"mbpp/{p['task_id']}", chat_messages(text), ref))
            else:
                out.append(Sample(f"mbpp/{p['task_id']}", text, ref, stop=list(MBPP_STOPS)))
        return out

    def solution(self, sample: Sample, output: str) -> str:
        ref = sample.reference
        if ref["mode"] == "completion":
            return sanitize(cut_at_stops(output, MBPP_STOPS))
        return sanitize(extract_code(output, ref["entry_point"]))

    def score(self, sample: Sample, output: str) -> tuple[str, bool]:
        solution = self.solution(sample, output or "")
        return solution, self.run(sample, program(solution, sample.reference))
