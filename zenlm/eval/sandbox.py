"""Run model-written programs in a confined child process tree, never in zenlm's own process.

Each program runs in a fresh interpreter (`python -I`) in its own empty work directory, in the code
interpreter's sandbox (zenlm.agent.sandbox) at the strongest level the host allows: where it can, new user,
network, PID and mount namespaces, an unprivileged uid, Landlock; always rlimits (memory, processes, file size,
open files, CPU) and a wall-clock watchdog that kills the whole tree. docs/eval-isolation.md says what each level
guarantees. Anything with `isolation` and `run(program, timeout) -> Result` (the Sandbox protocol) can replace it.
"""

from __future__ import annotations

import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, Protocol

log = logging.getLogger("zenlm.eval")

Status = Literal["passed", "failed", "timeout", "error"]
Isolation = Literal["namespaces", "userns", "rlimits"]

_TAIL = 2000  # bytes of output kept as the detail


@dataclass(slots=True)
class Result:
    status: Status  # passed: exit status 0; failed: any other exit; timeout: killed by the watchdog; error: no run
    detail: str  # the tail of stdout+stderr, or why the run did not happen

    @property
    def passed(self) -> bool:
        return self.status == "passed"


class Sandbox(Protocol):
    isolation: str  # what confinement was in effect, for results.json and the tests

    def run(self, program: str, timeout: float = 10.0) -> Result:
        """Run one Python program to completion or timeout; never raises on what the program does."""
        ...


class ProcessSandbox:
    """A child process tree per program, at the strongest sandbox level this host allows (probed once): the
    code interpreter's sandbox (zenlm.agent.sandbox), run to completion with stdout and stderr merged."""

    def __init__(self, memory_mb: int = 1024, nproc: int = 64, fsize_mb: int = 16, nofile: int = 64,
                 isolation: Isolation | Literal["auto"] = "auto"):
        from zenlm.agent.sandbox import Level, Limits, resolve

        if min(memory_mb, nproc, fsize_mb, nofile) <= 0:
            raise ValueError("sandbox limits must be positive")
        if isolation not in ("auto", "namespaces", "userns", "rlimits"):
            raise ValueError(f"unknown isolation {isolation!r}: use auto, namespaces, userns or rlimits")
        self.limits = Limits(memory_mb=memory_mb, nproc=nproc, fsize_mb=fsize_mb, nofile=nofile,
                             output_bytes=4 * _TAIL)
        if isolation == "rlimits":
            self.level = resolve(Level.RLIMITS)
        elif isolation == "auto":
            self.level = resolve()
        else:
            self.level = resolve(Level.FULL if _works(Level.FULL) else Level.NAMESPACES)
        root = os.geteuid() == 0
        self.isolation = ("namespaces" if root else "userns") if self.level.namespaces else "rlimits"

    def run(self, program: str, timeout: float = 10.0) -> Result:
        from zenlm.agent.sandbox import SandboxError, run_program

        if timeout <= 0:
            raise ValueError("timeout must be positive")
        try:
            r = run_program(program, timeout=timeout, level=self.level, limits=self.limits, name="program.py",
                            merge_output=True)
        except SandboxError as e:
            return Result("error", str(e))
        detail = r.stdout[-_TAIL:]
        if r.timed_out:
            return Result("timeout", f"timed out after {timeout:g} s\n{detail}")
        return Result("passed" if r.exit_code == 0 else "failed", detail)

    def run_many(self, programs: list[str], timeout: float = 10.0, workers: int = 2) -> list[Result]:
        """Run programs concurrently (each still in its own process tree); results in input order."""
        return run_many(programs, timeout, workers, self)


def _works(level) -> bool:
    from zenlm.agent.sandbox.levels import works

    return works(level)[0]


_default: ProcessSandbox | None = None
_default_lock = threading.Lock()


def default_sandbox() -> ProcessSandbox:
    """The process-wide sandbox with default limits (probed on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ProcessSandbox()
            log.info("code sandbox: %s", _default.level.value)
        return _default


def run_code(program: str, timeout: float = 10.0, sandbox: Sandbox | None = None) -> Result:
    """Run one program in the given sandbox (default: default_sandbox())."""
    return (sandbox or default_sandbox()).run(program, timeout)


def run_many(programs: list[str], timeout: float = 10.0, workers: int = 2,
             sandbox: Sandbox | None = None) -> list[Result]:
    """Run many programs on a pool of `workers` threads, each program in its own process tree; input order."""
    if workers < 1:
        raise ValueError("workers must be at least 1")
    box = sandbox or default_sandbox()
    with ThreadPoolExecutor(workers, thread_name_prefix="zen-sandbox") as pool:
        return list(pool.map(lambda p: box.run(p, timeout), programs))
