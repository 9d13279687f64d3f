"""Built-in tools by name (`zen agent --tools python`): the code interpreter `python`.

`python` runs model-written code in a stateful sandboxed session (zenlm.agent.sandbox.Session,
imported when the first cell runs): variables persist between calls, figures come back as PNG images.
Its stdout, stderr and error are each cut to their head and tail when long. Code never runs in this
process. A session can be passed in (tests, or a caller managing its own); one made here is closed
with the tool.
"""

from __future__ import annotations

import re
import threading
from typing import Any

from zenlm.agent.tools import Tool, ToolOutput

_FENCE = re.compile(r"^\s*```[\w+-]*[ \t]*\n(.*?)\n?```\s*$", re.S)
TIMEOUT_MARGIN = 15.0  # the agent's timeout for the tool, past the sandbox's own per-cell timeout


def truncate(text: str, limit: int) -> str:
    """text cut to its first and last limit/2 characters around a note of how much was left out."""
    if len(text) <= limit:
        return text
    head, tail = limit // 2, limit - limit // 2
    return f"{text[:head]}\n... [{len(text) - head - tail} characters omitted] ...\n{text[len(text) - tail:]}"


def extract_code(code: str) -> str:
    """The code inside a ``` fence, if the model wrapped it in one."""
    m = _FENCE.match(code)
    return m.group(1) if m else code


def cell_output(cell: Any, limit: int) -> ToolOutput:
    """A sandbox CellResult (stdout, stderr, images, error, timed_out) as the text the model reads."""
    parts = []
    if cell.stdout:
        parts.append(truncate(cell.stdout.rstrip("\n"), limit))
    if cell.stderr:
        parts.append("stderr:\n" + truncate(cell.stderr.rstrip("\n"), limit))
    if cell.error:
        parts.append("error:\n" + truncate(cell.error.rstrip("\n"), limit))
    if cell.timed_out:
        parts.append("The cell ran past its time limit and was stopped; variables defined so far may be lost.")
    for i, png in enumerate(cell.images, 1):
        parts.append(f"[figure {i}: a PNG image of {len(png)} bytes, shown to the user]")
    return ToolOutput("\n".join(parts) if parts else "The code ran and printed nothing.", list(cell.images))


class CodeInterpreter:
    """The `python` tool's state: one sandbox session, started on the first cell, one cell at a time."""

    def __init__(self, session: Any = None, timeout: float = 30.0, memory_mb: int = 1024,
                 workdir: str | None = None, max_output: int = 2000):
        if not timeout > 0:
            raise ValueError(f"the code interpreter's timeout must be positive, got {timeout!r}")
        if max_output < 100:
            raise ValueError(f"max_output must be at least 100 characters, got {max_output!r}")
        self.session, self.owned = session, session is None
        self.timeout, self.memory_mb, self.workdir, self.max_output = timeout, memory_mb, workdir, max_output
        self.lock = threading.Lock()

    def run(self, code: str) -> ToolOutput:
        """Run Python code in a stateful sandbox and return what it prints.

        Args:
            code: The Python code to run. Variables and imports persist between calls; print() what you need.
        """
        with self.lock:
            if self.session is None:
                from zenlm.agent.sandbox import Session

                self.session = Session(workdir=self.workdir, timeout=self.timeout, memory_mb=self.memory_mb)
            return cell_output(self.session.run(extract_code(code)), self.max_output)

    def close(self) -> None:
        with self.lock:
            if self.owned and self.session is not None:
                self.session.close()
                self.session = None

    def tool(self) -> Tool:
        t = Tool.from_function(self.run, name="python", timeout=self.timeout + TIMEOUT_MARGIN)
        t.on_close = self.close
        return t


def python_tool(session: Any = None, timeout: float = 30.0, memory_mb: int = 1024, workdir: str | None = None,
                max_output: int = 2000) -> Tool:
    """The code-interpreter tool `python` (see CodeInterpreter)."""
    return CodeInterpreter(session, timeout, memory_mb, workdir, max_output).tool()


BUILTINS = {"python": python_tool}


def builtin_tools(names: list[str]) -> list[Tool]:
    """Built-in tools by name; ValueError for a name that is not one."""
    unknown = [n for n in names if n not in BUILTINS]
    if unknown:
        raise ValueError(f"unknown tool {unknown[0]!r}; the built-in tools are: {', '.join(BUILTINS)}")
    return [BUILTINS[n]() for n in names]
