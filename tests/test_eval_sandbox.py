"""The code sandbox: right answers pass, and wrong, looping, greedy or hostile programs fail cleanly."""

import os
import socket

import pytest

from zenlm.eval.sandbox import ProcessSandbox, Result, default_sandbox, run_code, run_many


@pytest.fixture(scope="module")
def box():
    return default_sandbox()


def test_isolation_is_the_strongest_the_host_allows(box):
    assert box.isolation in ("namespaces", "userns", "rlimits")
    if os.geteuid() == 0 and os.path.exists("/usr/bin/unshare") and os.path.exists("/usr/bin/setpriv"):
        assert box.isolation == "namespaces"


def test_right_and_wrong_programs(box):
    good = run_code("def f(x):\n    return x + 1\n\nassert f(1) == 2\nprint('done')\n", sandbox=box)
    assert good == Result("passed", "done\n") and good.passed
    bad = run_code("def f(x):\n    return x - 1\n\nassert f(1) == 2\n", sandbox=box)
    assert bad.status == "failed" and "AssertionError" in bad.detail
    syntax = run_code("def f(:\n", sandbox=box)
    assert syntax.status == "failed" and "SyntaxError" in syntax.detail


def test_the_program_runs_in_its_own_empty_directory(box):
    r = run_code("import os, sys\nprint(os.listdir('.'), sys.flags.isolated, os.environ.get('HOME') == os.getcwd())",
                 sandbox=box)
    assert r.passed and r.detail.strip() == "['program.py'] 1 True"


def test_infinite_loop_and_sleep_time_out(box):
    assert run_code("while True:\n    pass\n", timeout=1, sandbox=box).status == "timeout"
    r = run_code("import signal, time\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\ntime.sleep(60)\n", timeout=1,
                 sandbox=box)
    assert r.status == "timeout" and "timed out" in r.detail


def test_memory_bomb_fails(box):
    r = run_code("x = bytearray(8 << 30)\n", sandbox=box)
    assert r.status == "failed" and "MemoryError" in r.detail
    r = run_code("x = []\nwhile True:\n    x.append(bytearray(1 << 24))\n", timeout=5, sandbox=box)
    assert not r.passed


def test_fork_bomb_is_contained_and_the_next_run_works(box):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    assert not run_code(bomb, timeout=2, sandbox=box).passed
    after = run_many(["import os\nif os.fork() == 0:\n    os._exit(0)\nos.wait()\nprint('ok')\n"] * 4, sandbox=box)
    assert all(r.passed for r in after), [r.detail for r in after]


def test_file_size_and_output_flood_are_capped(box):
    big = "with open('big', 'wb') as f:\n    for _ in range(64):\n        f.write(bytes(1 << 20))\n"
    r = run_code(big, sandbox=box)
    assert r.status == "failed" and "File too large" in r.detail
    r = run_code("while True:\n    print('x' * 100000)\n", sandbox=box)
    assert r.status == "failed" and len(r.detail) < 10_000


def test_stdin_is_empty(box):
    r = run_code("input()\n", sandbox=box)
    assert r.status == "failed" and "EOFError" in r.detail


def test_no_network(box):
    if box.isolation == "rlimits":
        pytest.skip("no network namespace on this host")
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    try:
        r = run_code(f"import socket\nsocket.create_connection(('127.0.0.1', {port}), timeout=2)\n", sandbox=box)
        assert r.status == "failed" and "OSError" in r.detail
    finally:
        server.close()


def test_os_system_cannot_touch_the_host(box, tmp_path):
    if box.isolation != "namespaces":
        pytest.skip("only the root tier drops to a throwaway uid")
    marker = tmp_path / "pwned"
    secret = tmp_path / "secret"
    secret.write_text("s3cret")
    secret.chmod(0o600)
    prog = (f"import os, subprocess\nos.system('touch {marker} 2>/dev/null')\n"
            f"out = subprocess.run(['cat', '{secret}'], capture_output=True, text=True).stdout\n"
            "assert 's3cret' in out\n")
    r = run_code(prog, sandbox=box)
    assert r.status == "failed" and not marker.exists()
    assert run_code("import os\nassert os.getuid() != 0\n", sandbox=box).passed


def test_run_many_keeps_order(box):
    progs = ["assert True", "assert False", "while True: pass", "print(3)"]
    got = run_many(progs, timeout=1, workers=2, sandbox=box)
    assert [r.status for r in got] == ["passed", "failed", "timeout", "passed"]


def test_bad_arguments():
    with pytest.raises(ValueError, match="isolation"):
        ProcessSandbox(isolation="docker")
    with pytest.raises(ValueError, match="positive"):
        ProcessSandbox(memory_mb=0)
    with pytest.raises(ValueError, match="timeout"):
        default_sandbox().run("pass", timeout=0)
    with pytest.raises(ValueError, match="workers"):
        run_many(["pass"], workers=0)


def test_rlimits_tier_still_limits():
    box = ProcessSandbox(isolation="rlimits")
    assert box.isolation == "rlimits"
    assert run_code("x = bytearray(8 << 30)\n", sandbox=box).status == "failed"
    assert run_code("while True: pass\n", timeout=1, sandbox=box).status == "timeout"
