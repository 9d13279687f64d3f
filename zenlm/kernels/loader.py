"""Builds the C kernels (csrc/*.c) once per machine with the system C compiler and loads them with ctypes.

The shared library lands in the zenlm cache, named by a hash of the sources, the compiler and the
CPU, so an edit or another machine rebuilds it (about two seconds). The first build holds a file lock
in the cache, so processes that start together compile once; the compiler gets ZEN_CC_TIMEOUT seconds.
`lib()` returns None, after one warning saying why, when there is no compiler, the build fails or
ZEN_NO_NATIVE is set; callers then take their pure-torch path. Calls go through ops.py, never lib().
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import logging
import os
import platform
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from zenlm.cache import cache_dir

log = logging.getLogger("zenlm.kernels")

CSRC = Path(__file__).with_name("csrc")
SOURCES = sorted(CSRC.glob("*.c"))
QUANTIZER = [CSRC / "common.h", CSRC / "linear.c"]  # what decides a quantized weight's bytes
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-shared", "-fPIC", "-std=c11"]
TIMEOUT_S = 300.0  # the compiler's limit unless ZEN_CC_TIMEOUT says otherwise (a build takes ~2 s)

P, N, F = ctypes.c_void_p, ctypes.c_int, ctypes.c_float  # pointer, int, float
SIGNATURES = {
    "zen_isa": ([], ctypes.c_char_p),
    "zen_linear": ([P, N, N, N, N, P, P, P, N, N, P, P, N], N),
    "zen_quantize": ([P, N, N, N, P, P, P], None),
    "zen_dequant_rows": ([P, P, P, N, N, N, P, N, P], N),
    "zen_attention": ([P, N, N, N, N, N, P, P, P, P, N, N, N, P, N, P, N, F, P], N),
    "zen_rmsnorm": ([P, P, F, N, N, P], None),
    "zen_argmax": ([P, N, N, P], None),
}


class BuildError(OSError):
    """The kernels could not be built: no compiler, a failed or timed-out compile."""


@dataclass(frozen=True, slots=True)
class Kernels:
    """What runs here: the loaded library (None: torch ops), the code path, the compiler, and why not."""

    dll: ctypes.CDLL | None
    path: str  # "avx512-vnni+bf16", "avx512-vnni", "avx2", "plain C" or "torch ops"
    compiler: str | None
    reason: str | None  # why the kernels are not in use


def _cpu_id() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
        return next((line for line in info.splitlines() if line.startswith("flags")), "") + platform.machine()
    except OSError:
        return platform.processor() + platform.machine()


def compiler() -> str:
    """The C compiler's path: $CC (a path or a name on PATH), else gcc or cc on PATH; BuildError if none."""
    cc = os.environ.get("CC")
    if cc:
        found = shutil.which(cc)
        if found is None:
            raise BuildError(f"the C compiler CC={cc!r} was not found")
        return found
    found = shutil.which("gcc") or shutil.which("cc")
    if found is None:
        raise BuildError("no C compiler found (CC is unset and neither gcc nor cc is on PATH)")
    return found


def _timeout() -> float:
    raw = os.environ.get("ZEN_CC_TIMEOUT")
    try:
        value = TIMEOUT_S if raw is None else float(raw)
    except ValueError:
        raise ValueError(f"ZEN_CC_TIMEOUT must be a number of seconds, got {raw!r}") from None
    if value <= 0:
        raise ValueError(f"ZEN_CC_TIMEOUT must be positive, got {raw!r}")
    return value


def compile_to(cc: str, flags: list[str], target: Path, timeout: float) -> None:
    """Compile the sources into target unless it exists, under a lock in target's folder: a process
    that finds the lock taken waits, then finds the library built. BuildError on failure or timeout."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / "kernels.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, also if this process dies
        if target.exists():  # built by another process while this one waited
            return
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = Path(tmp) / target.name
            cmd = [cc, *flags, *map(str, SOURCES), "-o", str(out), "-lm"]
            try:  # its own process group: a timeout ends the compiler's children (cc1, as) too
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                        start_new_session=True)
            except OSError as e:
                raise BuildError(f"the C compiler {cc} could not run: {e}") from None
            try:
                _, stderr = proc.communicate(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.communicate()
                raise BuildError(f"the C compiler {cc} took longer than {timeout:g} s on the kernels "
                                 "(ZEN_CC_TIMEOUT sets the limit)") from None
            if proc.returncode != 0:
                errors = [ln for ln in stderr.splitlines() if "error" in ln] or stderr.strip().splitlines()
                raise BuildError(f"the C kernels did not build with {cc}: {errors[0] if errors else 'compiler failed'}")
            os.replace(out, target)  # atomic: a reader never sees a half-written file


@cache
def build(march: str) -> ctypes.CDLL:
    """The kernels compiled for `march` ("native": this CPU; "x86-64-v3": AVX2; "x86-64": plain C) and
    loaded; BuildError when there is no compiler or the build fails."""
    import torch  # noqa: F401  (loads torch's OpenMP runtime first, so the kernels share its threads)

    cc = compiler()
    flags = [f if f != "-march=native" else f"-march={march}" for f in FLAGS]
    code = b"".join(f.read_bytes() for f in sorted(CSRC.iterdir()))
    key = hashlib.sha256(code + " ".join(flags + [cc, _cpu_id()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"kernels-{key}.so"
    if not target.exists():
        compile_to(cc, flags, target, _timeout())
    dll = ctypes.CDLL(str(target))
    for name, (args, res) in SIGNATURES.items():
        fn = getattr(dll, name)
        fn.argtypes, fn.restype = args, res
    return dll


@cache
def kernels() -> Kernels:
    """This process's kernels, built on first use; warns once (logger zenlm.kernels) when it falls back."""
    if os.environ.get("ZEN_NO_NATIVE"):
        reason, cc = "ZEN_NO_NATIVE is set", None
    else:
        cc = None
        try:
            cc = compiler()
            dll = build("native")
            return Kernels(dll, dll.zen_isa().decode(), cc, None)
        except BuildError as e:
            reason = str(e)
    log.warning("zenlm: %s; falling back to slower torch ops instead of the C kernels", reason)
    return Kernels(None, "torch ops", cc, reason)


def lib() -> ctypes.CDLL | None:
    """The loaded kernels, or None (then take the torch path)."""
    return kernels().dll
