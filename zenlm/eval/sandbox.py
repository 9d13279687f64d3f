"""Run model-written programs in a confined child process tree, never in zenlm's own process.

Each program runs in a fresh interpreter (`python -I`) in its own temporary directory, under rlimits (memory,
processes, file size, open files, CPU) and a wall-clock watchdog that kills the whole process group. Where the host
allows it, the run also gets new network, PID and mount namespaces and (as root) a throwaway uid. It is a test
harness, not a security boundary: docs/eval-isolation.md says what it does and does not guarantee. Anything with
`isolation` and `run(program, timeout) -> Result` (the Sandbox protocol) can replace it.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, Protocol

log = logging.getLogger("zenlm.eval")

Status = Literal["passed", "failed", "timeout", "error"]
Isolation = Literal["namespaces", "userns", "rlimits"]

# Runs inside the child, before the program: lower every limit (soft and hard, so the program cannot raise them
# again), then run the program file as __main__. argv: memory, nproc, fsize, nofile, cpu seconds, program path.
_LAUNCHER = """\
import resource, runpy, sys
mem, nproc, fsize, nofile, cpu = (int(a) for a in sys.argv[1:6])
path = sys.argv[6]
for res, value in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_NPROC, nproc), (resource.RLIMIT_FSIZE, fsize),
                   (resource.RLIMIT_NOFILE, nofile), (resource.RLIMIT_CPU, cpu), (resource.RLIMIT_CORE, 0)):
    hard = resource.getrlimit(res)[1]
    value = value if hard == resource.RLIM_INFINITY else min(value, hard)
    resource.setrlimit(res, (value, value))
sys.argv = [path]
del mem, nproc, fsize, nofile, cpu, path, res, value, hard, resource
runpy.run_path(sys.argv[0], run_name="__main__")
"""

# As root inside the new namespaces: bind the interpreter's prefix (which may sit under a mode-0700 home) read-only
# where the throwaway uid can reach it, then drop to that uid for good and start the launcher.
_ROOT_SHELL = (
    'src=$1 mp=$2 uid=$3 exe=$4; shift 4; '
    'mount --bind -o ro "$src" "$mp" && '
    'exec setpriv --reuid="$uid" --regid="$uid" --clear-groups --no-new-privs --inh-caps=-all --bounding-set=-all '
    '-- "$mp/$exe" -I -c "$@"'
)
_UID_BASE = 2_000_000_000  # throwaway uids (no passwd entry), one per concurrent run so NPROC counts stay apart
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
    """A child process tree per program, with the strongest isolation this host allows (probed once)."""

    def __init__(self, memory_mb: int = 1024, nproc: int = 64, fsize_mb: int = 16, nofile: int = 64,
                 isolation: Isolation | Literal["auto"] = "auto"):
        if min(memory_mb, nproc, fsize_mb, nofile) <= 0:
            raise ValueError("sandbox limits must be positive")
        if isolation not in ("auto", "namespaces", "userns", "rlimits"):
            raise ValueError(f"unknown isolation {isolation!r}: use auto, namespaces, userns or rlimits")
        self.limits = (memory_mb << 20, nproc, fsize_mb << 20, nofile)
        self._uids_free = list(range(_UID_BASE, _UID_BASE + 256))
        self._lock = threading.Lock()
        self.isolation = self._choose(isolation)

    def _choose(self, wanted: str) -> str:
        order = [wanted] if wanted != "auto" else ["namespaces", "userns", "rlimits"]
        for level in order:
            if level == "namespaces" and not (os.geteuid() == 0 and all(map(shutil.which, ("unshare", "setpriv")))):
                continue
            if level == "userns" and not shutil.which("unshare"):
                continue
            result = self._run(level, "print('sandbox ok')\n", 20.0)
            if result.passed and "sandbox ok" in result.detail:
                if level == "rlimits":
                    log.warning("code sandbox: rlimits only (no namespaces here): model code can reach the network")
                if level != "namespaces" and os.geteuid() == 0:
                    log.warning("code sandbox: %s isolation as root: model code can write root's files", level)
                return level
            log.info("code sandbox: %s isolation unavailable: %s", level, result.detail.strip()[-200:])
        raise ValueError(f"code sandbox: isolation {wanted!r} does not work on this host")

    def run(self, program: str, timeout: float = 10.0) -> Result:
        if timeout <= 0:
            raise ValueError("timeout must be positive")
        return self._run(self.isolation, program, timeout)

    def run_many(self, programs: list[str], timeout: float = 10.0, workers: int = 2) -> list[Result]:
        """Run programs concurrently (each still in its own process tree); results in input order."""
        return run_many(programs, timeout, workers, self)

    def _command(self, level: str, base: str, work: str, uid: int | None, path: str, timeout: float) -> list[str]:
        mem, nproc, fsize, nofile = self.limits
        limits = [str(mem), str(nproc), str(fsize), str(nofile), str(int(timeout) + 1), path]
        if level == "namespaces":
            exe = os.path.realpath(sys.executable)
            prefix = os.path.realpath(sys.base_prefix)
            if not exe.startswith(prefix + os.sep):
                prefix = os.path.dirname(os.path.dirname(exe))
            mount = os.path.join(base, "py")
            os.mkdir(mount, 0o755)
            ns = ["unshare", "--net", "--pid", "--fork", "--kill-child", "--mount", "--mount-proc"]
            shell = ["/bin/sh", "-c", _ROOT_SHELL, "sh", prefix, mount, str(uid), os.path.relpath(exe, prefix)]
            return ns + ["--"] + shell + [_LAUNCHER] + limits
        python = [sys.executable, "-I", "-c", _LAUNCHER] + limits
        if level == "userns":
            return ["unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--kill-child",
                    "--mount", "--mount-proc", "--"] + python
        return python

    def _run(self, level: str, program: str, timeout: float) -> Result:
        uid = None
        if level == "namespaces":
            with self._lock:
                if not self._uids_free:
                    return Result("error", "too many concurrent sandbox runs")
                uid = self._uids_free.pop()
        base = tempfile.mkdtemp(prefix="zenlm-sandbox-")
        try:
            os.chmod(base, 0o711)
            work = os.path.join(base, "work")
            os.mkdir(work, 0o700)
            path = os.path.join(work, "program.py")
            with open(path, "w", encoding="utf-8", errors="replace") as f:
                f.write(program)
            if uid is not None:
                os.chown(work, uid, uid)
                os.chown(path, uid, uid)
            env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": work, "TMPDIR": work, "LANG": "C.UTF-8",
                   "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
            cmd = self._command(level, base, work, uid, path, timeout)
            if level == "namespaces":
                env["LD_LIBRARY_PATH"] = os.path.join(base, "py", "lib")  # the bound prefix's libpython
            return self._watch(cmd, work, env, os.path.join(base, "output"), timeout)
        except OSError as e:
            return Result("error", f"sandbox could not start: {e}")
        finally:
            shutil.rmtree(base, ignore_errors=True)
            if uid is not None:
                with self._lock:
                    self._uids_free.append(uid)

    def _watch(self, cmd: list[str], work: str, env: dict, out_path: str, timeout: float) -> Result:
        # Output goes to a file the parent never reads whole: RLIMIT_FSIZE caps a print flood.
        with open(out_path, "wb") as out:
            proc = subprocess.Popen(cmd, cwd=work, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, start_new_session=True)
            try:
                rc = proc.wait(timeout)
                status: Status = "passed" if rc == 0 else "failed"
            except subprocess.TimeoutExpired:
                status, rc = "timeout", None
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the group; the PID namespace dies with its first process
                except ProcessLookupError:
                    pass
                proc.wait()
        with open(out_path, "rb") as f:
            f.seek(max(0, os.path.getsize(out_path) - _TAIL))
            detail = f.read().decode("utf-8", "replace")
        if status == "timeout":
            detail = f"timed out after {timeout:g} s\n{detail}"
        elif rc is not None and rc < 0:
            detail = f"killed by {signal.Signals(-rc).name}\n{detail}"
        return Result(status, detail)


_default: ProcessSandbox | None = None
_default_lock = threading.Lock()


def default_sandbox() -> ProcessSandbox:
    """The process-wide sandbox with default limits (probed on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = ProcessSandbox()
            log.info("code sandbox: %s isolation", _default.isolation)
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
