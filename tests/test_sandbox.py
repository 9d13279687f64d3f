"""The code interpreter's sandbox: levels, stateful sessions (state, errors, figures, timeouts, restarts, output
caps), one-shot programs, and `zen sandbox`'s exit statuses. The attacks are in test_sandbox_attacks.py."""

import ast
import os
import signal
import struct
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import pytest

from zenlm.agent.sandbox import CellResult, Level, Limits, Session, resolve, run_program
from zenlm.agent.sandbox.landlock import abi
from zenlm.agent.sandbox.levels import parse
from zenlm.eval.sandbox import default_sandbox

LEVELS = ["namespaces+landlock+rlimits", "rlimits"]


def png_size(png: bytes) -> tuple[int, int]:
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    return struct.unpack(">II", png[16:24])


@pytest.fixture(scope="module")
def session():
    with Session(timeout=10) as s:
        yield s


def test_the_strongest_level_here():
    level = resolve()
    assert str(level) == level.value
    if os.geteuid() == 0 and abi() >= 1:
        assert level is Level.FULL and not level.degraded
    assert default_sandbox().level is level  # the eval harness runs at the same level


def test_what_runs_inside_imports_only_the_standard_library():
    root = Path(__file__).resolve().parent.parent / "zenlm" / "agent" / "sandbox"
    for name in ("launcher.py", "kernel.py", "landlock.py", "syscalls.py"):
        body = ast.parse((root / name).read_text()).body  # module level; the kernel imports pyplot after a cell did
        modules = {a.name for n in body if isinstance(n, ast.Import) for a in n.names}
        modules |= {n.module for n in body if isinstance(n, ast.ImportFrom) and n.module}
        tops = {m.split(".")[0] for m in modules} - {"__future__", "landlock", "syscalls"}
        assert tops <= sys.stdlib_module_names, (name, tops - sys.stdlib_module_names)


def test_an_unprivileged_user_gets_the_strongest_level_too():
    """As root, start the sandbox as uid 65534 (on the system Python, which that uid can reach): user
    namespaces without privilege, the only id mapping an ordinary user may write, Landlock."""
    root = Path(__file__).resolve().parent.parent
    code = ("from zenlm.agent.sandbox import Level, run_program\n"
            "r = run_program(\"import os, socket\\nst = open('/proc/self/status').read()\\n"
            "print(os.getuid(), [l.split()[1] for l in st.splitlines() if l.startswith(('CapEff', 'NoNewPrivs'))])\\n"
            "try:\\n    open('/etc/passwd')\\nexcept PermissionError:\\n    print('passwd denied')\\n"
            "try:\\n    socket.create_connection(('127.0.0.1', 9))\\nexcept OSError as e:\\n    print(e.errno)\\n\", "
            "level=Level.FULL)\nprint(r.exit_code, r.stdout, r.stderr)\n")
    as_nobody = {"user": 65534, "group": 65534, "extra_groups": []} if os.geteuid() == 0 else {}
    python = "/usr/bin/python3" if as_nobody else sys.executable
    r = subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60, cwd="/",
                       env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, **as_nobody)
    # exit status 0; inside uid 0 (the user's own uid, mapped), no capabilities, no_new_privs; Landlock; no network
    assert r.stdout == "0 0 ['0000000000000000', '1']\npasswd denied\n101\n \n", r.stdout + r.stderr


def test_level_names():
    assert parse("rlimits") is Level.RLIMITS and parse(Level.RLIMITS.value) is Level.RLIMITS
    assert parse("auto") is None and parse(None) is None
    assert Level.LANDLOCK.landlock and not Level.LANDLOCK.namespaces and Level.LANDLOCK.degraded
    assert "degraded" in Level.RLIMITS.value and "degraded" not in Level.FULL.value
    with pytest.raises(ValueError, match="unknown sandbox level 'docker'"):
        parse("docker")


def test_degraded_level_warns(caplog):
    with caplog.at_level("WARNING", logger="zenlm.agent.sandbox"):
        assert resolve("rlimits") is Level.RLIMITS
    assert "SANDBOX DEGRADED" in caplog.text and "reaches the network" in caplog.text


def test_variables_persist_and_the_last_expression_prints(session):
    assert session.run("x = 6\ny = [i * x for i in range(3)]") == CellResult("", "", [], None, False)
    r = session.run("x * 7")
    assert r.stdout == "42\n" and r.error is None
    assert session.run("print(y, _ + 1)").stdout == "[0, 6, 12] 43\n"
    assert session.run("def f(n):\n    return n * x\n").stdout == ""
    assert session.run("f(2)").stdout == "12\n"


def test_an_error_is_the_last_traceback_line_and_the_kernel_goes_on(session):
    r = session.run("a = 1\nb = a / 0\n")
    assert r.error == "ZeroDivisionError: division by zero"
    assert 'line 2, in <module>' in r.stderr and "b = a / 0" in r.stderr and "kernel" not in r.stderr
    r = session.run("def broken(:\n")
    assert r.error.startswith("SyntaxError:")
    assert session.run("raise SystemExit(3)").error == "SystemExit: 3"
    assert session.run("a + 1").stdout == "2\n"


def test_stdout_and_stderr_are_separate_and_stdin_is_empty(session):
    r = session.run("import sys\nprint('out')\nprint('err', file=sys.stderr)\nprint('é ✓')")
    assert r.stdout == "out\né ✓\n" and r.stderr == "err\n"
    assert session.run("input()").error == "EOFError: EOF when reading a line"


def test_figures_come_back_as_png(session):
    r = session.run("import matplotlib.pyplot as plt\n"
                    "plt.figure(figsize=(2, 1), dpi=50); plt.plot([1, 2, 3]); plt.show()\n"
                    "plt.figure(figsize=(3, 2), dpi=50); plt.plot([3, 1])\n")
    assert r.error is None, r.stderr
    assert [png_size(p) for p in r.images] == [(100, 50), (150, 100)]  # shown, then left open
    r = session.run("plt.figure(figsize=(1, 1), dpi=40); plt.bar([0], [1]); plt.show(); plt.close('all')")
    assert [png_size(p) for p in r.images] == [(40, 40)]
    assert session.run("print(len(plt.get_fignums()))").stdout == "0\n"  # every figure was collected once


def test_numpy_and_sympy_work(session):
    r = session.run("import numpy as np, sympy as sp\n"
                    "print(int(np.arange(10).sum()), sp.factor('x**2 - 1'), sp.integrate('x**2', ('x', 0, 3)))")
    assert r.stdout == "45 (x - 1)*(x + 1) 9\n", r.stderr


def test_output_keeps_its_head_and_tail():
    with Session(limits=Limits(output_bytes=1000)) as s:
        r = s.run("for i in range(10000):\n    print(f'line {i}')")
        assert r.stdout.startswith("line 0\nline 1\n") and r.stdout.endswith("line 9998\nline 9999\n")
        assert "bytes cut ...]" in r.stdout and len(r.stdout) < 1100
        r = s.run("while True:\n    print('x' * 100000)")  # a flood stops at the file-size limit
        assert r.error == "OSError: [Errno 27] File too large" and len(r.stdout) < 1100
        assert s.run("print('still here')").stdout == "still here\n"


def test_a_timeout_kills_the_session_and_the_next_cell_says_state_was_lost():
    with Session(timeout=2) as s:
        s.run("x = 1")
        r = s.run("import time\nprint('before')\ntime.sleep(60)")
        assert r.timed_out and r.error == "TimeoutError: the cell ran past 2 s"
        assert r.stdout == "before\n" and "state is lost" in r.stderr
        r = s.run("x")
        assert r.error == "NameError: name 'x' is not defined" and not r.timed_out
        assert r.stderr.startswith("[sandbox] the previous cell ran past 2 s") and "gone" in r.stderr
        assert s.run("y = 2\ny").stdout == "2\n" and not s.run("y").stderr


def test_an_interrupted_cell_loses_the_session():
    with Session() as s:
        s.run("x = 1")
        threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT)).start()  # Ctrl-C while the cell runs
        with pytest.raises(KeyboardInterrupt):
            s.run("import time\ntime.sleep(30)")
        r = s.run("x")  # not the sleeping cell's reply: a fresh kernel
        assert r.error == "NameError: name 'x' is not defined" and "was interrupted" in r.stderr


def test_a_dead_kernel_is_restarted():
    with Session() as s:
        s.run("x = 1")
        r = s.run("import os\nprint('bye', flush=True)\nos._exit(7)")
        assert r.stdout == "bye\n" and r.error.startswith("SandboxError: the kernel died (exit status 7)")
        r = s.run("print('back')")
        assert r.stdout == "back\n" and r.error is None and "the kernel died" in r.stderr


@pytest.mark.parametrize("level", LEVELS)
def test_close_ends_every_process_of_the_session(level):
    marker = f"zen-sandbox-test-{uuid.uuid4().hex}"
    s = Session(level=level)
    r = s.run(f"import subprocess, sys\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', "
              f"'{marker}'])\n")
    assert r.error is None, r.stderr
    assert wait_for(lambda: processes_with(marker)), "the child should be running before close()"
    s.close()
    assert not processes_with(marker)  # close() returns once the whole tree is gone
    with pytest.raises(ValueError, match="closed"):
        s.run("1")


def wait_for(condition, patience: float = 10.0) -> bool:
    """Poll until condition() holds; whether it did within `patience` seconds (a bound, not a measurement)."""
    deadline = time.monotonic() + patience
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def processes_with(marker: str) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def test_the_tree_dies_with_its_host(tmp_path):
    marker = f"zen-sandbox-test-{uuid.uuid4().hex}"
    host = subprocess.Popen([sys.executable, "-c", (
        f"import time\nfrom zenlm.agent.sandbox import Session\ns = Session({str(tmp_path)!r})\n"
        f"s.run(\"import subprocess, sys\\nsubprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)', "
        f"'{marker}'])\")\nprint('ready', flush=True)\ntime.sleep(60)\n")], stdout=subprocess.PIPE, text=True)
    try:
        assert host.stdout.readline() == "ready\n" and wait_for(lambda: processes_with(marker))
    finally:
        host.kill()  # SIGKILL: no clean-up code runs in the host
        host.wait()
    assert wait_for(lambda: not processes_with(marker))  # the launcher saw its lifeline close, killed the tree


def test_work_directory_files_go_in_and_the_host_directory_is_left_alone(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "numbers.csv").write_text("a,b\n1,2\n3,4\n")
    with Session(workdir=tmp_path) as s:
        assert s.workdir == str(tmp_path)
        r = s.run("import csv, os\nrows = list(csv.DictReader(open('data/numbers.csv')))\n"
                  "print(sum(int(r['b']) for r in rows), os.getcwd() == os.environ['HOME'])\n"
                  "n = open('made.txt', 'w').write('x')\nn = open('data/numbers.csv', 'a').write('5,6\\n')")
        assert r.stdout == "6 True\n" and r.error is None, r.stderr
        assert s.run("print(sorted(os.listdir('.')))").stdout == "['data', 'made.txt']\n"
    if s.level.namespaces:  # a private tmpfs: nothing the code writes reaches the host's directory
        assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
        assert (tmp_path / "data" / "numbers.csv").read_text() == "a,b\n1,2\n3,4\n"


def test_rlimits_level_sessions_work_too(tmp_path):
    with Session(workdir=tmp_path, level="rlimits") as s:
        assert s.level is Level.RLIMITS
        assert s.run("x = 5").error is None and s.run("x * 2").stdout == "10\n"
        r = s.run("import matplotlib.pyplot as plt\nplt.plot([1, 2]); plt.show()\nopen('made.txt', 'w').write('x')")
        assert len(r.images) == 1 and r.error is None
    assert (tmp_path / "made.txt").read_text() == "x"  # at this level the code writes the host's directory


def test_two_sessions_do_not_share_state():
    with Session() as a, Session() as b:
        a.run("secret = 'a'")
        assert b.run("secret").error == "NameError: name 'secret' is not defined"
        assert a.run("secret").stdout == "'a'\n"


def test_run_program_statuses():
    r = run_program("import sys\nprint('out')\nprint('err', file=sys.stderr)\nsys.exit(3)")
    assert (r.exit_code, r.stdout, r.stderr, r.timed_out, r.level) == (3, "out\n", "err\n", False, resolve())
    r = run_program("import os, signal\nos.kill(os.getpid(), signal.SIGKILL)")
    assert r.exit_code == 128 + 9
    r = run_program("import time\ntime.sleep(30)", timeout=1)
    assert r.timed_out and r.exit_code is None
    r = run_program("import sys\nprint(1, flush=True)\nprint(2, file=sys.stderr)\nprint(3)", merge_output=True)
    assert r.stdout == "1\n2\n3\n" and r.stderr == ""


def test_bad_input():
    with pytest.raises(ValueError, match="timeout must be positive"):
        Session(timeout=0)
    with pytest.raises(ValueError, match="unknown sandbox level"):
        Session(level="docker")
    with pytest.raises(ValueError, match="memory_mb must be at least 64"):
        Session(memory_mb=10)
    with pytest.raises(ValueError, match="not a directory"):
        Session(workdir="/no/such/dir")
    with pytest.raises(ValueError, match="would hide /usr"):
        Session(workdir="/usr")
    with pytest.raises(ValueError, match="nproc must be a positive integer"):
        Limits(nproc=0)
    with pytest.raises(ValueError, match="plain file name"):
        run_program("pass", name="../x.py")
    with Session() as s, pytest.raises(ValueError, match="a cell is a str"):
        s.run(b"print(1)")


def zen_sandbox(path, *args, timeout=60):
    return subprocess.run([sys.executable, "-m", "zenlm", "sandbox", str(path), *args], capture_output=True,
                          text=True, timeout=timeout)


def test_zen_sandbox_cli(tmp_path):
    f = tmp_path / "prog.py"
    f.write_text("import sys\nprint('to stdout')\nprint('to stderr', file=sys.stderr)\nsys.exit(5)\n")
    r = zen_sandbox(f, "--verbose")
    assert (r.returncode, r.stdout) == (5, "to stdout\n")
    assert r.stderr.startswith(f"zen sandbox: level {resolve().value}\nto stderr\n")
    f.write_text("while True:\n    pass\n")
    r = zen_sandbox(f, "--timeout", "1", "--level", "rlimits")
    assert r.returncode == 124 and "killed after 1 s" in r.stderr and "SANDBOX DEGRADED" in r.stderr
    r = zen_sandbox(tmp_path / "missing.py")
    assert r.returncode == 1 and r.stderr.startswith("zen: error: [Errno 2] No such file or directory")
    r = zen_sandbox(f, "--memory-mb", "12")
    assert r.returncode == 1 and r.stderr == "zen: error: --memory-mb must be at least 64, got 12\n"
