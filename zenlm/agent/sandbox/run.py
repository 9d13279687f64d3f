"""Run one Python program to completion in the sandbox: `zen sandbox FILE.py` and the eval harness use this.

The program is written into a fresh work directory, run as `python -I NAME` (zenlm's interpreter, its
installed packages, nothing of the environment), and its stdout and stderr come back as text, each cut to its
head and tail. A program that runs past the timeout is killed with its whole tree.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass

from zenlm.agent.sandbox.levels import Level, resolve
from zenlm.agent.sandbox.limits import Limits
from zenlm.agent.sandbox.output import capture_file, read_capped
from zenlm.agent.sandbox.process import check_workdir, program_env, spawn


@dataclass(slots=True)
class RunResult:
    exit_code: int | None  # the program's exit status (128+N when killed by signal N); None when it timed out
    stdout: str
    stderr: str  # with merge_output, empty: everything is in stdout, in the order it was written
    timed_out: bool
    level: Level
    seconds: float  # wall time from starting the sandbox to the program's end


def run_program(source: str, *, timeout: float = 10.0, level: Level | str | None = None,
                limits: Limits | None = None, name: str = "main.py", merge_output: bool = False) -> RunResult:
    """Run `source` as the file `name` in its own empty work directory at `level`: a Level is used as it is
    (the caller resolved it), a name or None (the strongest) goes through resolve()."""
    if timeout <= 0:
        raise ValueError(f"sandbox timeout must be positive, got {timeout}")
    if os.path.basename(name) != name or not name.endswith(".py"):
        raise ValueError(f"sandbox program name must be a plain file name ending in .py, got {name!r}")
    level = level if isinstance(level, Level) else resolve(level)
    limits = limits or Limits()
    base = tempfile.mkdtemp(prefix="zenlm-sandbox-")
    out, err = capture_file("stdout"), capture_file("stderr")
    try:
        workdir = check_workdir(base)
        with open(os.path.join(workdir, name), "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(source)
        start = time.monotonic()
        tree = spawn(level, [sys.executable, "-I", name], workdir, limits, int(timeout) + 1,
                     program_env(workdir, "Agg"), out, out if merge_output else err)
        try:
            code = tree.wait(max(0.0, timeout - (time.monotonic() - start)))
        finally:
            tree.kill()  # after a timeout, or an exception here (KeyboardInterrupt): the whole tree goes
        timed_out = code is None
        seconds = time.monotonic() - start
        return RunResult(code, read_capped(out, limits.output_bytes),
                         "" if merge_output else read_capped(err, limits.output_bytes), timed_out, level, seconds)
    finally:
        os.close(out)
        os.close(err)
        shutil.rmtree(base, ignore_errors=True)
