"""Stateful Python sessions: a kernel process inside the sandbox runs cells in one namespace, so variables
persist from cell to cell.

Each cell's stdout and stderr go into files the host made (sent over the control socket with the request), so
a cell that runs past its timeout still returns what it printed. A timeout or a dead kernel kills the whole
tree; the next cell starts a fresh kernel and its stderr says that the earlier state is gone.
"""

from __future__ import annotations

import array
import base64
import binascii
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
import weakref
from dataclasses import dataclass, field, replace
from pathlib import Path

from zenlm.agent.sandbox.levels import Level, resolve
from zenlm.agent.sandbox.limits import Limits
from zenlm.agent.sandbox.output import capture_file, read_capped
from zenlm.agent.sandbox.process import SandboxError, Tree, check_workdir, program_env, spawn

KERNEL_SOURCE = Path(__file__).with_name("kernel.py").read_text()
MAX_CODE = 1 << 20  # characters in one cell
MAX_REPLY = 48 << 20  # the kernel sends at most 8 PNGs of 4 MiB, base64; anything longer is not a reply
SESSION_CPU_SECONDS = 3600  # RLIMIT_CPU of a kernel, summed over all its cells
_PNG = b"\x89PNG\r\n\x1a\n"


@dataclass(slots=True)
class CellResult:
    stdout: str
    stderr: str
    images: list[bytes] = field(default_factory=list)  # PNG files, one per figure
    error: str | None = None  # the exception's last traceback line, e.g. "ZeroDivisionError: division by zero"
    timed_out: bool = False


class _Kernel:
    """One running kernel: its process tree, the control socket and the log of what it printed between cells."""

    def __init__(self, level: Level, workdir: str, limits: Limits, startup_timeout: float):
        host, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock = host
        self.log = capture_file("kernel-log")
        self.pending = b""
        try:
            self.tree: Tree = spawn(level, [sys.executable, "-I", "-c", KERNEL_SOURCE], workdir, limits,
                                    SESSION_CPU_SECONDS, program_env(workdir, "module://zenlm_figures"), self.log,
                                    self.log, control=child.fileno(), startup_timeout=startup_timeout)
        except BaseException:
            host.close()
            os.close(self.log)
            raise
        finally:
            child.close()
        try:
            ready = self.reply(time.monotonic() + startup_timeout)
        except TimeoutError:
            ready = None
        if not isinstance(ready, dict) or ready.get("ready") is not True:
            why = self.stop()
            raise SandboxError(f"the sandbox kernel did not start: {why}")

    def request(self, code: str, out: int, err: int, deadline: float) -> None:
        data = json.dumps({"code": code}).encode() + b"\n"
        self.sock.settimeout(max(0.001, deadline - time.monotonic()))
        sent = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [out, err]))])
        self.sock.sendall(data[sent:])

    def reply(self, deadline: float):
        """The kernel's next JSON line; None when it died, said something that is not a reply, or ran past
        the deadline (TimeoutError)."""
        while b"\n" not in self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(1 << 20)
            except socket.timeout:
                raise TimeoutError from None
            except OSError:
                return None
            if not chunk or len(self.pending) > MAX_REPLY:
                return None
            self.pending += chunk
        line, self.pending = self.pending.split(b"\n", 1)
        try:
            return json.loads(line)
        except ValueError:
            return None

    def stop(self, grace: float = 0.0) -> str:
        """End the kernel (closing the socket ends it gently; grace seconds later, SIGKILL); why it ended."""
        self.sock.close()
        code = self.tree.wait(grace) if grace > 0 else None
        if code is None:
            code = self.tree.kill()
        log = read_capped(self.log, 2000).strip()
        os.close(self.log)
        return f"exit status {code}" + (f": {log}" if log else "")


class Session:
    """A stateful Python session in the sandbox. `level` reports how strongly it is confined."""

    def __init__(self, workdir: str | os.PathLike | None = None, timeout: float = 30.0, memory_mb: int = 1024,
                 level: Level | str | None = None, *, limits: Limits | None = None, startup_timeout: float = 30.0):
        if not timeout > 0:
            raise ValueError(f"session timeout must be positive, got {timeout}")
        self.limits = replace(limits or Limits(), memory_mb=memory_mb)
        self.timeout = float(timeout)
        self.startup_timeout = startup_timeout
        self.level = resolve(level)  # checked, and warned about when degraded, once per session
        self._own_dir = workdir is None
        self.workdir = check_workdir(tempfile.mkdtemp(prefix="zenlm-session-") if workdir is None else str(workdir))
        self._lock = threading.Lock()
        self._kernel: _Kernel | None = None
        self._lost: str | None = None  # why the previous kernel died, told in the next cell's stderr
        self._closed = False
        self._holder = [None]  # the finalizer's view of the running kernel (it must not hold self)
        self._finalizer = weakref.finalize(self, _cleanup, self._holder, self.workdir if self._own_dir else None)
        try:
            self._start()
        except BaseException:
            self.close()
            raise

    def _start(self) -> None:
        self._kernel = _Kernel(self.level, self.workdir, self.limits, self.startup_timeout)
        self._holder[0] = self._kernel

    def run(self, code: str) -> CellResult:
        """Run one cell; never raises for what the code does (SandboxError only if no kernel can start)."""
        if not isinstance(code, str):
            raise ValueError(f"a cell is a str of Python code, got {type(code).__name__}")
        if len(code) > MAX_CODE:
            raise ValueError(f"a cell is limited to {MAX_CODE:,} characters of code")
        with self._lock:
            if self._closed:
                raise ValueError("this sandbox session is closed")
            note = ""
            if self._kernel is None:
                self._start()
                note = (f"[sandbox] {self._lost}; this cell ran in a fresh session: the variables and files of "
                        "earlier cells are gone\n")
                self._lost = None
            result = self._run(self._kernel, code)
            result.stderr = note + result.stderr
            return result

    def _run(self, kernel: _Kernel, code: str) -> CellResult:
        out, err = capture_file("stdout"), capture_file("stderr")
        try:
            deadline = time.monotonic() + self.timeout
            try:
                kernel.request(code, out, err, deadline)
                reply = kernel.reply(deadline)
            except (TimeoutError, socket.timeout):
                self._lose(f"the previous cell ran past {self.timeout:g} s and the sandbox was killed", kernel)
                stderr = read_capped(err, self.limits.output_bytes)
                stderr += ("\n" if stderr and not stderr.endswith("\n") else "") + (
                    f"[sandbox] killed after {self.timeout:g} s; the session's state is lost\n")
                return CellResult(read_capped(out, self.limits.output_bytes), stderr, [],
                                  f"TimeoutError: the cell ran past {self.timeout:g} s", True)
            except OSError:
                reply = None
            except BaseException:  # interrupted (KeyboardInterrupt): the kernel may still be in this cell
                self._lose("the previous cell was interrupted and the sandbox was killed", kernel)
                raise
            stdout, stderr = read_capped(out, self.limits.output_bytes), read_capped(err, self.limits.output_bytes)
            if not isinstance(reply, dict) or not _valid(reply):
                why = self._lose("the kernel died", kernel)
                return CellResult(stdout, stderr, [],
                                  f"SandboxError: the kernel died ({why}); the session's state is lost")
            images = [png for png in map(_png, reply["images"]) if png is not None]
            return CellResult(stdout, stderr, images, reply["error"], False)
        finally:
            os.close(out)
            os.close(err)

    def _lose(self, why: str, kernel: _Kernel) -> str:
        status = kernel.stop()
        self._kernel = self._holder[0] = None
        self._lost = why
        return status

    def close(self) -> None:
        """Stop the kernel (its whole tree) and remove the work directory if the session made it."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._kernel is not None:
                self._kernel.stop(grace=1.0)
                self._kernel = self._holder[0] = None
            self._finalizer()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _valid(reply: dict) -> bool:
    return (isinstance(reply.get("error"), (str, type(None))) and isinstance(reply.get("images"), list)
            and all(isinstance(i, str) for i in reply["images"]))


def _png(text: str) -> bytes | None:
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return None
    return data if data.startswith(_PNG) else None


def _cleanup(holder: list, own_dir: str | None) -> None:
    if holder[0] is not None:
        holder[0].stop()
        holder[0] = None
    if own_dir is not None:
        shutil.rmtree(own_dir, ignore_errors=True)
