"""Builds the C kernels (kernels/*.c) once per machine with the system C compiler and loads them with ctypes.

The shared library lands in the zenlm cache, named by a hash of the sources, the compiler and the
CPU, so an edit or another machine rebuilds it (about two seconds). `lib()` returns None when there is
no compiler, the build fails (with a warning) or ZEN_NO_NATIVE is set; callers then take their
pure-torch path.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import warnings
from functools import cache
from pathlib import Path

from zenlm.cache import cache_dir

KERNELS = Path(__file__).with_name("csrc")
SOURCES = sorted(KERNELS.glob("*.c"))
QUANTIZER = [KERNELS / "common.h", KERNELS / "linear.c"]  # what decides a quantized weight's bytes
FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-shared", "-fPIC", "-std=c11"]

P, I, F = ctypes.c_void_p, ctypes.c_int, ctypes.c_float
SIGNATURES = {
    "zen_isa": ([], ctypes.c_char_p),
    "zen_linear": ([P, I, I, I, I, P, P, P, I, I, P, P, I], None),
    "zen_quantize": ([P, I, I, I, P, P, P], None),
    "zen_dequant_rows": ([P, P, P, I, I, P, I, P], None),
    "zen_attention": ([P, I, I, I, I, I, P, P, P, P, I, I, P, I, P, I, F, P], None),
    "zen_rmsnorm": ([P, P, F, I, I, P], None),
    "zen_argmax": ([P, I, I, P], None),
}


def _cpu_id() -> str:
    try:
        info = Path("/proc/cpuinfo").read_text()
        return next((line for line in info.splitlines() if line.startswith("flags")), "") + platform.machine()
    except OSError:
        return platform.processor() + platform.machine()


@cache
def lib() -> ctypes.CDLL | None:
    if os.environ.get("ZEN_NO_NATIVE"):
        return None
    try:
        return build("native")
    except OSError as e:
        warnings.warn(f"zenlm: the C kernels did not build ({e}); quantized models run on slower torch ops")
        return None


@cache
def build(march: str) -> ctypes.CDLL | None:
    """The kernels compiled for `march` ("native": this CPU; "x86-64-v3": AVX2; "x86-64": plain C) and
    loaded; None without a C compiler; OSError when the build fails."""
    import torch  # noqa: F401  (loads torch's OpenMP runtime first, so the kernels share its threads)

    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        return None
    flags = [f if f != "-march=native" else f"-march={march}" for f in FLAGS]
    code = b"".join(f.read_bytes() for f in sorted(KERNELS.iterdir()))
    key = hashlib.sha256(code + " ".join(flags + [cc, _cpu_id()]).encode()).hexdigest()[:16]
    target = cache_dir() / f"kernels-{key}.so"
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
            out = Path(tmp) / target.name
            r = subprocess.run([cc, *flags, *map(str, SOURCES), "-o", str(out), "-lm"], capture_output=True, text=True)
            if r.returncode != 0:
                errors = [ln for ln in r.stderr.splitlines() if "error" in ln] or r.stderr.strip().splitlines()
                raise OSError(errors[0] if errors else "compiler failed")
            os.replace(out, target)  # atomic: a concurrent build never leaves a half-written file
    dll = ctypes.CDLL(str(target))
    for name, (args, res) in SIGNATURES.items():
        fn = getattr(dll, name)
        fn.argtypes, fn.restype = args, res
    return dll
