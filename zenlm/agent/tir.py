"""Tool-integrated reasoning (TIR, Qwen2.5-Math's format): the model writes ```python blocks, a sandbox runs them,
and their output goes back as an ```output block before the model continues.

    ...reasoning...
    ```python
    print(3 * 17)
    ```
    ```output
    51
    ```
    ...more reasoning... \\boxed{51}

Generation stops at every "```\\n" (FENCE_STOP). When that fence closes a ```python block, the block runs in
the problem's stateful sandbox session (variables persist between blocks; a short per-block timeout), its
stdout and the error's last line are cut to their head and tail (OUTPUT_CHARS), and "```output\\n...\\n```\\n"
is appended; any other fence (opening a block, closing a non-python one) is kept and generation goes on. A
round that ends otherwise (end of turn, the token budget) ends the problem, as does a round that wrote a
\\boxed{} answer; a closed python block just before the end of turn still runs (Qwen's rule: no \\boxed,
text ending in a complete program). After max_calls blocks have run, the next one is not run:
"Reach max function call limit." is appended and the problem ends.

Problem holds one problem's state and decides; it never generates. solve() drives one problem with any
generate function (tests use a scripted one); zenlm.eval.tir batches many through the engine.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from zenlm.agent.builtin import truncate

TIR_SYSTEM = ("Please integrate natural language reasoning with programs to solve the problem above, and put "
              "your final answer within \\boxed{}.")
COT_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
FENCE_STOP = "```\n"
OUTPUT_CHARS = 400  # head + tail of a block's output (Qwen2.5-Math's eval)
CELL_TIMEOUT = 10.0  # seconds per block
MAX_CALLS = 4  # blocks run per problem (Qwen2.5-Math's eval: max_func_call=4)
LIMIT_NOTE = "\nReach max function call limit."
PYTHON = ("python", "py", "python3")


def open_block(text: str) -> tuple[str | None, int]:
    """(language of the fenced block still open at the end of text, or None; where its code starts).
    A fence is a line starting with ``` (indentation allowed); one inside a block closes it only when bare."""
    lang, start, pos = None, 0, 0
    for line in text.splitlines(keepends=True):
        stripped = line.strip()
        if stripped.startswith("```") and line.endswith("\n"):
            if lang is None:
                lang, start = stripped[3:].strip().lower(), pos + len(line)
            elif stripped == "```":
                lang = None
        pos += len(line)
    return lang, start


def last_closed_python(text: str) -> str | None:
    """The code of a ```python block that text ends with (its closing ``` last, bar whitespace), else None."""
    body = text.rstrip()
    if not body.endswith("```"):
        return None
    lang, start = open_block(body[:-3])
    if lang in PYTHON and (body[:-3] == "" or body[:-3].endswith("\n")):
        return body[start:-3]
    return None


def output_block(cell, limit: int = OUTPUT_CHARS) -> str:
    """A sandbox CellResult as an ```output block: its stdout, then the error's last line, head/tail cut."""
    parts = [cell.stdout.rstrip("\n")] if cell.stdout.strip() else []
    if cell.error:
        parts.append(cell.error)
    text = truncate("\n".join(parts), limit)
    return f"```output\n{text}\n```\n"


@dataclass(slots=True)
class Problem:
    """One problem's TIR state: its chat messages and the assistant text written so far."""

    messages: list[dict]
    max_tokens: int = 1024  # generated tokens over all rounds
    max_calls: int = MAX_CALLS
    max_rounds: int = 12  # generation rounds (a stop at a fence that is not run is a round too)
    text: str = ""
    tokens: int = 0
    calls: int = 0
    rounds: int = 0
    done: bool = False
    reason: str = ""  # why it ended: "answer" | "boxed" | "length" | "max_calls" | "max_rounds"
    outputs: list[str] = field(default_factory=list)  # each block's output, as appended

    def prompt(self) -> list[dict]:
        """The messages to generate from: a non-empty assistant text goes last, to be continued."""
        return self.messages + ([{"role": "assistant", "content": self.text}] if self.text else [])

    def budget(self) -> int:
        return max(1, self.max_tokens - self.tokens)

    def advance(self, new: str, hit_fence: bool, tokens: int) -> str | None:
        """Take one round's text (hit_fence: it stopped at FENCE_STOP, which new leaves out) and its token
        count; return the code to run now, or None (then `done` says whether to generate again)."""
        self.rounds += 1
        self.tokens += tokens
        boxed = "\\boxed" in new
        self.text += new
        code = None
        if hit_fence:
            lang, start = open_block(self.text)
            at_line_start = self.text == "" or self.text.endswith("\n")
            self.text += FENCE_STOP
            if lang in PYTHON and at_line_start:
                code = self.text[start:-len(FENCE_STOP)]
        elif not boxed:
            code = last_closed_python(self.text)
            if code is not None:
                self.text = self.text.rstrip() + "\n"
        if boxed:
            return self._end("boxed")
        if code is not None and self.calls >= self.max_calls:
            self.text += LIMIT_NOTE
            return self._end("max_calls")
        if code is None and not hit_fence:
            return self._end("length" if self.tokens >= self.max_tokens else "answer")
        if self.tokens >= self.max_tokens:
            return self._end("length")
        if self.rounds >= self.max_rounds:
            return self._end("max_rounds")
        if code is not None:
            self.calls += 1
        return code

    def feed(self, block: str) -> None:
        """Append a run block's ```output block (output_block's text)."""
        self.outputs.append(block)
        self.text += block

    def _end(self, reason: str) -> None:
        self.done, self.reason = True, reason
        return None


Generate = Callable[[list[dict], int], tuple[str, bool, int]]  # (messages, max_tokens) -> (text, hit fence, tokens)


def solve(generate: Generate, question: str, session, max_tokens: int = 1024, max_calls: int = MAX_CALLS,
          system: str = TIR_SYSTEM, limit: int = OUTPUT_CHARS) -> Problem:
    """One problem, round by round: generate(messages, max_tokens) -> (text, stopped at FENCE_STOP, tokens);
    blocks run in `session` (a sandbox Session, or anything with run(code) -> CellResult)."""
    problem = Problem([{"role": "system", "content": system}, {"role": "user", "content": question}],
                      max_tokens=max_tokens, max_calls=max_calls)
    while not problem.done:
        text, hit, tokens = generate(problem.prompt(), problem.budget())
        code = problem.advance(text, hit, tokens)
        if code is not None:
            problem.feed(output_block(session.run(code), limit))
    return problem
