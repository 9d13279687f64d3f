"""The host's side of one sandboxed process tree: start the launcher, learn whether the program started, wait
with a deadline, and kill the whole tree.

The launcher gets three pipes besides stdin, stdout and stderr: a status pipe (it writes why setup failed;
the program's exec closes it), a lifeline (the host holds its write end; when the host dies the launcher kills
the tree) and, for a kernel, the control socket.
"""

from __future__ import annotations

import json
import os
import secrets
import select
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from zenlm.agent.sandbox.levels import Level
from zenlm.agent.sandbox.limits import Limits

LAUNCHER = Path(__file__).with_name("launcher.py")
SETUP_FAILED = 125  # the launcher's exit status when confinement could not be set up
_UID_BASE, _UID_SPAN = 2_000_000_000, 1 << 24  # throwaway host uids (no passwd entry), two per sandbox
_SYSTEM = ("/", "/usr", "/bin", "/sbin", "/lib", "/lib64", "/etc", "/dev", "/proc", "/sys")


class SandboxError(RuntimeError):
    """The sandbox could not be set up (the program never ran)."""


def python_paths() -> list[str]:
    """The interpreter's install and virtual environment: the sandbox may read these, nothing else of zenlm's."""
    paths = {os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix)}
    paths = {p for p in paths if not p.startswith("/usr/")}
    return sorted(p for p in paths if not any(p.startswith(q + "/") for q in paths))


def check_workdir(path: str) -> str:
    """The work directory as an absolute real path; ValueError when it is missing or holds system files."""
    real = os.path.realpath(path)
    if not os.path.isdir(real):
        raise ValueError(f"sandbox work directory {path!r} is not a directory")
    for p in (*_SYSTEM, *python_paths()):
        if real == p or p.startswith(real.rstrip("/") + "/"):
            raise ValueError(f"sandbox work directory {path!r} would hide {p}: give a directory of its own")
    return real


def program_env(workdir: str, mpl_backend: str) -> dict[str, str]:
    """The program's whole environment: an allowlist, nothing of zenlm's (no keys, no tokens)."""
    return {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8",
            "MPLBACKEND": mpl_backend, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass(slots=True)
class Tree:
    """A started launcher (the head of the sandbox's process group) and the host's end of its lifeline."""

    proc: subprocess.Popen
    lifeline: int

    def wait(self, timeout: float | None) -> int | None:
        """The program's exit status (128+N for signal N), or None if it is still running after timeout seconds.
        Whatever is left of the tree is killed before the status is collected."""
        pidfd = os.pidfd_open(self.proc.pid)
        try:
            if not select.select([pidfd], [], [], timeout)[0]:
                return None
        finally:
            os.close(pidfd)
        return self.kill()

    def kill(self) -> int:
        """SIGKILL the whole process group (the PID namespace dies with its init); the exit status."""
        if self.proc.returncode is None:
            try:
                os.killpg(self.proc.pid, signal.SIGKILL)  # the launcher is not reaped yet: its group id is ours
            except ProcessLookupError:
                pass
            self.proc.wait()
            _wait_until_gone(self.proc.pid)
        if self.lifeline >= 0:
            os.close(self.lifeline)
            self.lifeline = -1
        code = self.proc.returncode
        return 128 - code if code < 0 else code


def _wait_until_gone(group: int, patience: float = 2.0) -> None:
    """SIGKILL takes effect asynchronously: wait (a little) until no process of the group is left. With
    namespaces it is already so (the init of a PID namespace exits only after every process in it)."""
    deadline = time.monotonic() + patience
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except (ProcessLookupError, PermissionError):
            return
        time.sleep(0.01)


def spawn(level: Level, argv: list[str], workdir: str, limits: Limits, cpu_seconds: int, env: dict[str, str],
          stdout: int, stderr: int, control: int | None = None, startup_timeout: float = 30.0) -> Tree:
    """Start argv confined at `level`; returns once the program is executing. SandboxError if setup failed."""
    status_r, status_w = os.pipe()
    lifeline_r, lifeline_w = os.pipe()
    config = {
        "namespaces": level.namespaces, "landlock": _landlock_abi() if level.landlock else 0, "workdir": workdir,
        "argv": argv, "env": env, "limits": limits.rlimits(cpu_seconds), "disk": limits.disk_mb << 20,
        "inodes": limits.inodes, "python_paths": python_paths(),
        "host_uid": _UID_BASE + 2 * secrets.randbelow(_UID_SPAN // 2) if os.geteuid() == 0 else None,
        "status_fd": status_w, "lifeline_fd": lifeline_r, "control_fd": control,
    }
    fds = [status_w, lifeline_r] + ([control] if control is not None else [])
    try:
        proc = subprocess.Popen([sys.executable, "-E", "-s", "-S", str(LAUNCHER), json.dumps(config)],
                                stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, pass_fds=fds, cwd="/",
                                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}, start_new_session=True)
    finally:
        os.close(status_w)
        os.close(lifeline_r)
    tree = Tree(proc, lifeline_w)
    try:
        error = _read_until_eof(status_r, startup_timeout)
    finally:
        os.close(status_r)
    if error is None:
        tree.kill()
        raise SandboxError(f"the sandbox did not start within {startup_timeout:g} s")
    if error:
        tree.kill()
        raise SandboxError(f"the sandbox could not be set up at level {level.short}: {error}")
    return tree


def _read_until_eof(fd: int, timeout: float) -> str | None:
    """What the launcher wrote before the pipe closed ('' when nothing: the program started); None on timeout."""
    deadline = time.monotonic() + timeout
    data = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            return None
        chunk = os.read(fd, 4096)
        if not chunk:
            return data.decode("utf-8", "replace").strip()
        data += chunk


def _landlock_abi() -> int:
    from zenlm.agent.sandbox.landlock import abi

    return abi()
