"""The native kernels' edges: every guarded entry point rejects bad input with ValueError before the C code
sees it, a bad token id no longer kills the process, allocation failures become MemoryError, and the
build compiles once under a lock, times out, and falls back to torch ops with one warning."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from zenlm import kernels
from zenlm.kernels import loader
from zenlm.kernels.norm import NativeRMSNorm
from zenlm.quant.linear import QLinear

ROOT = Path(__file__).resolve().parent.parent


def python(code: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run code in a fresh interpreter with this tree's zenlm."""
    full = os.environ | {"PYTHONPATH": str(ROOT)} | (env or {})
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=full, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


@pytest.fixture(scope="module")
def q():
    """A quantized [40, 64] weight: 3 tiles, the last one partial."""
    torch.manual_seed(0)
    return QLinear.from_float(torch.randn(40, 64), torch.randn(40), 4)


def test_linear_rejects_bad_input(q):
    args = (q.qs, q.d, q.m, 4, 64, 40)
    good = torch.randn(3, 64)
    cases = [
        (torch.randn(3, 63), "shape"), (torch.randn(3, 64, dtype=torch.float64), "dtype"),
        (torch.randn(64, 3).t(), "contiguous"), (torch.randn(3, 64, device="meta"), "CPU"),
    ]
    for x, what in cases:
        with pytest.raises(ValueError, match=f"zen_linear: x .*{what}" if what != "dtype" else "float32"):
            kernels.linear(x, *args)
    with pytest.raises(ValueError, match="x must have shape \\[\\*, 128\\]"):
        kernels.linear(good, *args, glu=True)
    with pytest.raises(ValueError, match="bias must be torch.float32"):
        kernels.linear(good, *args, bias=torch.zeros(40, dtype=torch.float16))
    with pytest.raises(ValueError, match="qs must have shape"):
        kernels.linear(good, q.qs[:2].contiguous(), q.d, q.m, 4, 64, 40)
    with pytest.raises(ValueError, match="bits must be 4, 5 or 8"):
        kernels.linear(good, q.qs, q.d, q.m, 6, 64, 40)
    with pytest.raises(ValueError, match="K must be a multiple of 32"):
        kernels.linear(good, q.qs, q.d, q.m, 4, 48, 40)


def test_a_weight_changed_after_its_first_check_is_checked_again(q):
    """Weights and caches are checked once and remembered (by identity and data pointers): a new tensor,
    a .data swap or other sizes are checked again."""
    x, qs = torch.randn(2, 64), q.qs.clone()
    assert kernels.linear(x, qs, q.d, q.m, 4, 64, 40).shape == (2, 40)  # checked, remembered
    with pytest.raises(ValueError, match="d must be torch.float16"):
        kernels.linear(x, qs, q.d.float(), q.m, 4, 64, 40)
    with pytest.raises(ValueError, match="qs must have shape \\[4, 512\\]"):
        kernels.linear(x, qs, q.d, q.m, 4, 64, 56)
    qs.data = torch.zeros(1, 512, dtype=torch.uint8)
    with pytest.raises(ValueError, match="qs must have shape \\[3, 512\\], got \\[1, 512\\]"):
        kernels.linear(x, qs, q.d, q.m, 4, 64, 40)
    a = _attention_args()
    kernels.attention(**a)
    a["v_cache"].data = torch.zeros(4, 2, 8, 32, 2, dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="v_cache must have shape \\[5, 2, 8, 32, 2\\]"):
        kernels.attention(**a)


def test_quantize_dequant_rows_rmsnorm_and_argmax_reject_bad_input(q):
    with pytest.raises(ValueError, match="zen_quantize: w must be torch.float32"):
        kernels.quantize(torch.randn(16, 64, dtype=torch.float64), 4)
    with pytest.raises(ValueError, match="K a positive multiple of 32"):
        kernels.quantize(torch.randn(16, 40), 4)
    table = (q.qs, q.d, q.m, 4, 64, 40)
    for bad in (40, 47, -1, 10**9):  # 40..47 sit inside the last tile's padding: still not rows of the table
        with pytest.raises(ValueError, match=f"zen_dequant_rows: row {bad} is out of range for a table of 40"):
            kernels.dequant_rows(*table, torch.tensor([3, bad]))
    with pytest.raises(ValueError, match="rows must be torch.int64"):
        kernels.dequant_rows(*table, torch.tensor([3], dtype=torch.int32))
    with pytest.raises(ValueError, match="zen_rmsnorm: x must have shape \\[\\*, 8\\]"):
        kernels.rmsnorm(torch.randn(2, 7), torch.ones(8), 1e-6)
    with pytest.raises(ValueError, match="zen_rmsnorm: weight must be contiguous"):
        kernels.rmsnorm(torch.randn(2, 8), torch.ones(16)[::2], 1e-6)
    with pytest.raises(ValueError, match="zen_argmax: x must have shape \\[\\*, \\*\\]"):
        kernels.argmax(torch.randn(5))
    with pytest.raises(ValueError, match="at least one column"):
        kernels.argmax(torch.randn(3, 0))
    with pytest.raises(ValueError, match="zen_argmax: x must be contiguous"):
        kernels.argmax(torch.randn(8, 3).t())


def _attention_args(B=2, T=1, H=4, KV=2, D=32, bs=16, blocks=5, nb=2, dtype=torch.bfloat16):
    P = 2 if dtype == torch.bfloat16 else 1
    return dict(qkv=torch.randn(B, T, (H + 2 * KV) * D), cos=torch.randn(B, T, D), sin=torch.randn(B, T, D),
                k_cache=torch.zeros(blocks, KV, D // P, bs, P, dtype=dtype),
                v_cache=torch.zeros(blocks, KV, bs // P, D, P, dtype=dtype),
                tables=torch.tensor([[0, 1], [2, 3]])[:B, :nb], ctx=torch.tensor([20, 5])[:B],
                heads=(H, KV, D), block_size=bs, window=0, scale=D ** -0.5)


def test_attention_rejects_bad_input():
    assert kernels.attention(**_attention_args()).shape == (2, 1, 128)  # the good case runs (with kernels)
    cases = [
        ({"tables": torch.tensor([[0, 1], [2, 5]])}, "block id 5 is out of range for a cache of 5 blocks"),
        ({"tables": torch.tensor([[0, -1], [2, 3]])}, "block id -1 is out of range"),
        ({"ctx": torch.tensor([33, 5])}, "context lengths must lie in \\[1, 32\\]"),
        ({"ctx": torch.tensor([0, 5])}, "context lengths must lie in"),
        ({"tables": torch.tensor([[0, 1], [2, 3]], dtype=torch.int32)}, "tables must be torch.int64"),
        ({"cos": torch.randn(2, 1, 16)}, "cos must have shape \\[2, 1, 32\\]"),
        ({"v_cache": torch.zeros(5, 2, 8, 32, 2)}, "v_cache must be torch.bfloat16"),
        ({"k_cache": torch.zeros(5, 2, 32, 16, 1, dtype=torch.bfloat16)}, "k_cache must have shape"),
        ({"heads": (3, 2, 32)}, "H \\(3\\) must be a multiple of KV \\(2\\)"),
        ({"qkv": torch.randn(2, 1, 255)}, "qkv must have shape"),
        ({"window": -1}, "window must be an integer"),
    ]
    for change, message in cases:
        with pytest.raises(ValueError, match=f"zen_attention: {message}"):
            kernels.attention(**(_attention_args() | change))


def test_wrappers_compute_what_torch_does(q):
    assert kernels.available(), "the C kernels did not load (is gcc installed?)"
    x = torch.randn(5, 64)
    norm = NativeRMSNorm(torch.nn.Parameter(torch.rand(64) + 0.5), 1e-6)
    torch.testing.assert_close(norm(x), F.rms_norm(x, (64,), norm.weight, 1e-6))
    rows = torch.tensor([39, 0, 17])
    torch.testing.assert_close(kernels.dequant_rows(q.qs, q.d, q.m, 4, 64, 40, rows), q.dequantize()[rows])
    torch.testing.assert_close(kernels.argmax(x), x.argmax(-1), rtol=0, atol=0)


def test_the_c_kernel_itself_refuses_a_row_past_the_table(q):
    """The C side checks too: zen_dequant_rows and zen_attention return ZEN_ERANGE and write nothing."""
    dll = loader.build("native")
    rows, out = torch.tensor([1, 40]), torch.full((2, 64), 7.0)
    rc = dll.zen_dequant_rows(q.qs.data_ptr(), q.d.data_ptr(), q.m.data_ptr(), 4, 64, 40, rows.data_ptr(), 2,
                              out.data_ptr())
    assert rc == 2 and bool((out == 7).all())
    a = _attention_args(dtype=torch.float32)
    a["tables"][1, 1] = 5  # the cache has blocks 0..4
    before = a["k_cache"].clone()
    rc = dll.zen_attention(a["qkv"].data_ptr(), 2, 1, 4, 2, 32, a["cos"].data_ptr(), a["sin"].data_ptr(),
                           a["k_cache"].data_ptr(), a["v_cache"].data_ptr(), 0, 16, 5, a["tables"].data_ptr(), 2,
                           a["ctx"].data_ptr(), 0, 0.1, torch.empty(2, 1, 128).data_ptr())
    assert rc == 2 and torch.equal(a["k_cache"], before)


@pytest.mark.slow  # starts processes
def test_an_out_of_vocabulary_token_is_a_value_error_and_the_process_lives():
    """Before: a token id >= vocab on the quantized embedding read past zen_dequant_rows' table (SIGSEGV)."""
    r = python("""
        import torch
        from zenlm.quant.linear import QEmbedding, QLinear
        emb = QEmbedding(QLinear.from_float(torch.randn(37, 64), None, 4), torch.float32)
        assert emb(torch.tensor([[1, 36]])).shape == (1, 2, 64)
        for bad in (37, 1 << 40):
            try:
                emb(torch.tensor([[1, bad]]))
            except ValueError as e:
                print("refused:", e)
        print("alive")
    """)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("refused: zen_dequant_rows: row") == 2 and r.stdout.endswith("alive\n")


@pytest.mark.slow  # starts processes
def test_an_allocation_failure_in_c_is_a_memory_error():
    """zen_linear's scratch (an int8 copy of x) cannot be had under an address-space limit set after x."""
    r = python("""
        import resource
        import torch
        from zenlm import kernels
        from zenlm.quant.linear import QLinear
        q = QLinear.from_float(torch.randn(16, 4096), None, 4)
        x = torch.randn(4096, 4096)  # 64 MiB; the kernel's scratch is 16 MiB + 1 MiB
        kernels.linear(x[:2].contiguous(), q.qs, q.d, q.m, 4, 4096, 16)  # threads started, code paged in
        vm = int(next(ln for ln in open("/proc/self/status") if ln.startswith("VmSize")).split()[1]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + (8 << 20), resource.RLIM_INFINITY))
        try:
            kernels.linear(x, q.qs, q.d, q.m, 4, 4096, 16)
        except MemoryError as e:
            print("MemoryError:", e)
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        print("alive", tuple(kernels.linear(x[:3].contiguous(), q.qs, q.d, q.m, 4, 4096, 16).shape))
    """)
    assert r.returncode == 0, r.stderr
    assert "MemoryError: zen_linear: could not allocate scratch memory for 4096 rows" in r.stdout
    assert r.stdout.endswith("alive (3, 16)\n")


@pytest.mark.slow  # starts processes
def test_two_processes_starting_together_compile_once(tmp_path):
    """Both wait at a barrier, then load the kernels from an empty cache: the compiler (a wrapper that
    logs each run, holds on a second, then hands over a built library) runs once."""
    built, log = loader.build("native")._name, tmp_path / "cc.log"
    cc = tmp_path / "cc"
    cc.write_text(f'#!/bin/sh\necho run >> {log}\nsleep 1\nwhile [ "$1" != -o ]; do shift; done\ncp {built} "$2"\n')
    cc.chmod(0o755)
    code = """
        import sys, time
        from pathlib import Path
        import torch
        from zenlm.kernels import loader
        Path(sys.argv[1]).touch()
        while len(list(Path(sys.argv[1]).parent.glob("ready-*"))) < 2:
            time.sleep(0.01)
        print(loader.lib() is not None)
    """
    env = os.environ | {"PYTHONPATH": str(ROOT), "CC": str(cc), "ZEN_CACHE": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), str(tmp_path / f"ready-{i}")], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [o for o, _ in outs] == ["True\n", "True\n"], outs
    assert log.read_text().splitlines() == ["run"]
    assert len(list((tmp_path / "cache").glob("kernels-*.so"))) == 1


@pytest.mark.slow  # starts processes
def test_a_compiler_that_hangs_is_stopped_with_a_clear_error(tmp_path):
    cc = tmp_path / "cc"
    cc.write_text("#!/bin/sh\nsleep 60\n")  # a child of the shell: the whole process group must go
    cc.chmod(0o755)
    with pytest.raises(loader.BuildError, match=f"the C compiler {cc} took longer than 0.5 s"):
        loader.compile_to(str(cc), loader.FLAGS, tmp_path / "kernels-x.so", timeout=0.5)
    assert not list(tmp_path.glob("kernels-x.so")) and not list(tmp_path.glob("tmp*"))


FALLBACK = """
    import torch
    from zenlm import kernels
    from zenlm.quant.linear import QLinear
    q = QLinear.from_float(torch.randn(16, 64), None, 4)
    print(kernels.available(), tuple(q(torch.randn(2, 64)).shape), kernels.available())
"""


@pytest.mark.slow  # starts processes
@pytest.mark.parametrize("env, missing", [
    ({"CC": "/nonexistent/cc"}, "the C compiler CC='/nonexistent/cc' was not found"),
    ({"PATH": "/nonexistent"}, "no C compiler found (CC is unset and neither gcc nor cc is on PATH)"),
    ({"ZEN_NO_NATIVE": "1"}, "ZEN_NO_NATIVE is set"),
])
def test_without_kernels_one_warning_says_why_and_torch_runs(tmp_path, env, missing):
    base = {k: v for k, v in os.environ.items() if k not in ("CC", "ZEN_NO_NATIVE")}
    r = subprocess.run([sys.executable, "-c", textwrap.dedent(FALLBACK)], capture_output=True, text=True, timeout=120,
                       env=base | {"PYTHONPATH": str(ROOT), "ZEN_CACHE": str(tmp_path)} | env)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "False (2, 16) False\n"
    warnings = [ln for ln in r.stderr.splitlines() if "torch ops" in ln]
    assert len(warnings) == 1, r.stderr
    assert warnings[0].endswith(f"zenlm: {missing}; falling back to slower torch ops instead of the C kernels")


@pytest.mark.slow  # starts processes
def test_a_failed_build_warns_with_the_compilers_error(tmp_path):
    cc = tmp_path / "cc"
    cc.write_text("#!/bin/sh\necho 'kernels.c:1: error: no such luck' >&2\nexit 1\n")
    cc.chmod(0o755)
    r = python(FALLBACK, {"CC": str(cc), "ZEN_CACHE": str(tmp_path)})
    assert r.returncode == 0 and r.stdout == "False (2, 16) False\n", r.stderr
    assert r.stderr.count("torch ops") == 1
    assert f"the C kernels did not build with {cc}: kernels.c:1: error: no such luck" in r.stderr


@pytest.mark.slow  # starts processes
def test_zen_info_system_says_which_path_runs():
    run, env = [sys.executable, "-m", "zenlm", "info", "--system"], os.environ | {"PYTHONPATH": str(ROOT)}
    on, off = (subprocess.Popen(run, env=env | extra, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
               for extra in ({}, {"ZEN_NO_NATIVE": "1"}))
    (out, err), (off_out, _) = on.communicate(timeout=120), off.communicate(timeout=120)
    assert on.returncode == 0 and off.returncode == 0, err
    rows = dict(line.split(None, 1) for line in out.splitlines())
    assert rows["kernels"] in ("avx512-vnni+bf16", "avx512-vnni", "avx2", "plain C")
    assert rows["kernels"] == kernels.isa() and Path(rows["compiler"]).exists()
    assert rows["torch"] == torch.__version__ and int(rows["threads"]) >= 1
    assert "kernels    torch ops (ZEN_NO_NATIVE is set)" in off_out.splitlines()
    from zenlm.bench import _kernels  # what `zen bench` reports

    assert _kernels() == rows["kernels"]
