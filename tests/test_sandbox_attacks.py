"""The attack suite, through `zen sandbox` as a real subprocess, at the strongest level and at rlimits only.

Each attack program records what each attempt did (ok, or the exception and errno) and prints it as JSON.
At the strongest level every attack must be contained. At the rlimits level the test asserts the documented
difference wherever rlimits cannot contain an attack (README, "The code sandbox"), and containment elsewhere.
Where an uncontained attack would harm this machine (a fork bomb as root, mounting, killing everything), the
rlimits run uses a bounded version that shows the same gap.
"""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid

import pytest

from zenlm.agent.sandbox import Level

LEVELS = [Level.FULL, Level.RLIMITS]
ROOT = os.geteuid() == 0
SECRET = f"zen-secret-{uuid.uuid4().hex}"

PRELUDE = """\
import json, os, sys
report = {}
def attempt(name, f):
    try:
        value = f()
        report[name] = "ok" if value is None else f"ok {value}"
    except BaseException as e:
        report[name] = f"{type(e).__name__} {getattr(e, 'errno', None)}"
"""


def zen_sandbox(tmp_path, source: str, level: Level, *args: str, wait=True, env=None, name=None):
    f = tmp_path / (name or f"attack-{uuid.uuid4().hex[:8]}.py")
    f.write_text(source)
    cmd = [sys.executable, "-m", "zenlm", "sandbox", str(f), "--level", level.short, "--timeout", "5", *args]
    env = {**os.environ, "ZEN_TEST_SECRET": SECRET, **(env or {})}
    if not wait:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)


def attack(tmp_path, body: str, level: Level, *args: str) -> dict:
    r = zen_sandbox(tmp_path, PRELUDE + body + "\nprint(json.dumps(report))\n", level, *args)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout.splitlines()[-1])


def outcome(f) -> str:
    """The same record the attack programs make, for an attempt made by this (unconfined) test process."""
    try:
        value = f()
        return "ok" if value is None else f"ok {value}"
    except BaseException as e:  # noqa: BLE001
        return f"{type(e).__name__} {getattr(e, 'errno', None)}"


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


def wait_for(condition, patience: float = 20.0) -> bool:
    """Poll until condition() holds; whether it did within `patience` seconds (a bound, not a measurement)."""
    deadline = time.monotonic() + patience
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def unreachable(result: str) -> bool:
    return result == f"OSError {errno.ENETUNREACH}"


def denied(result: str) -> bool:
    return result.split()[0] in ("PermissionError", "FileNotFoundError")


# ---- network ---------------------------------------------------------------------------------------------------

NETWORK_OUT = """
import socket
def tcp():
    s = socket.socket()
    s.settimeout(1)
    s.connect(("192.0.2.1", 80))
def udp():
    socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b"x", ("192.0.2.1", 9))
attempt("tcp", tcp)
attempt("udp", udp)
attempt("interfaces", lambda: sorted(name for _, name in socket.if_nameindex()))
"""


@pytest.mark.parametrize("level", LEVELS, ids=lambda v: v.short)
def test_network_out(tmp_path, level):
    got = attack(tmp_path, NETWORK_OUT, level)
    if level.namespaces:
        assert unreachable(got["tcp"]) and unreachable(got["udp"]) and got["interfaces"] == "ok ['lo']"
    else:  # rlimits: the host's network, exactly as this (unconfined) test process has it
        here: dict = {}
        exec(PRELUDE + NETWORK_OUT, here)
        assert got == here["report"]


@pytest.mark.parametrize("level", LEVELS, ids=lambda v: v.short)
def test_loopback_service(tmp_path, level):
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    port = server.getsockname()[1]
    try:
        got = attack(tmp_path, f"import socket\nattempt('connect', lambda: socket.create_connection(('127.0.0.1', "
                               f"{port}), timeout=2).close())\n", level)
        reached = outcome(server.accept)
    finally:
        server.close()
    if level.namespaces:
        assert unreachable(got["connect"]) and reached.startswith("BlockingIOError")
    else:  # rlimits: the code reaches a service on this machine's 127.0.0.1
        assert got["connect"] == "ok" and reached.startswith("ok")


@pytest.mark.parametrize("level", LEVELS, ids=lambda v: v.short)
def test_unix_socket_service(tmp_path, level):
    path = f"/run/zen-test-{uuid.uuid4().hex[:12]}.sock"  # where daemons keep theirs; world-writable, like D-Bus's
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    os.chmod(path, 0o666)
    server.listen()
    server.setblocking(False)
    try:
        got = attack(tmp_path, f"import socket\nattempt('connect', lambda: socket.socket(socket.AF_UNIX).connect("
                               f"{path!r}))\n", level)
        reached = outcome(server.accept)
    finally:
        server.close()
        os.unlink(path)
    if level.namespaces:  # /run is an empty tmpfs inside
        assert got["connect"] == f"FileNotFoundError {errno.ENOENT}" and reached.startswith("BlockingIOError")
    else:
        assert got["connect"] == "ok" and reached.startswith("ok")


@pytest.mark.parametrize("level", LEVELS, ids=lambda v: v.short)
def test_dns(tmp_path, level):
    resolver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    resolver.bind(("127.0.0.1", 0))
    resolver.setblocking(False)
    port = resolver.getsockname()[1]
    query = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01"
    body = (f"import socket\nattempt('query', lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto("
            f"{query!r}, ('127.0.0.1', {port})))\n"
            "attempt('resolve', lambda: socket.getaddrinfo('example.com', 80)[0][4][0])\n")
    try:
        got = attack(tmp_path, body, level)
        received = outcome(lambda: resolver.recvfrom(512)[0])
    finally:
        resolver.close()
    if level.namespaces:
        assert unreachable(got["query"]) and got["resolve"].startswith("gaierror")
        assert received.startswith("BlockingIOError")
    else:  # rlimits: a query reaches a resolver on this machine, and names resolve as they do here
        assert got["query"] == f"ok {len(query)}" and received == f"ok {query!r}"
        here = outcome(lambda: socket.getaddrinfo("example.com", 80)[0][4][0])
        assert got["resolve"].split()[0] == here.split()[0]


# ---- processes, memory, disk -----------------------------------------------------------------------------------

FORK_BOMB = """
import os
while True:
    try:
        os.fork()
    except OSError:
        pass
"""

# At most 200 children, each blocked on a pipe until the parent has counted them (and held them HOLD seconds).
PROCESS_STORM = """
import time
HOLD = 0
r, w = os.pipe()
children = 0
for _ in range(200):
    try:
        pid = os.fork()
    except OSError:
        break
    if pid == 0:
        os.close(w)
        os.read(r, 1)
        os._exit(0)
    children += 1
time.sleep(HOLD)
os.close(w)
while True:
    try:
        os.wait()
    except ChildProcessError:
        break
report["children"] = children
"""

NUMERIC = """
import numpy as np, sympy as sp
a = np.array([[3.0, 1.0], [1.0, 2.0]])
print(np.linalg.solve(a, np.array([9.0, 8.0])).round(6).tolist(), sp.factorint(2**32 + 1), sp.pi.evalf(20))
"""
NUMERIC_OUT = "[2.0, 3.0] {641: 1, 6700417: 1} 3.1415926535897932385\n"


def bomb_is_capped(level: Level) -> bool:
    return level.namespaces or not ROOT  # the kernel does not apply RLIMIT_NPROC to root


@pytest.mark.parametrize("level", LEVELS, ids=lambda v: v.short)
def test_fork_bomb(tmp_path, level):
    if bomb_is_capped(level):
        r = zen_sandbox(tmp_path, FORK_BOMB, level, "--timeout", "3")
        assert r.returncode == 124 and "killed after 3 s" in r.stderr
        got = attack(tmp_path, PROCESS_STORM, level)
        assert 0 < got["children"] < 64  # the process limit, per sandbox
    else:  # rlimits as root: no process limit at all; a real bomb would take this machine's last pid
        got = attack(tmp_path, PROCESS_STORM, level)
        assert got["children"] == 200
    r = zen_sandbox(tmp_path, NUMERIC, level)
    assert (r.returncode, r.stdout) == (0, NUMERIC_OUT), r.stderr


@pytest.mark.parametrize("level", LEVELS, ids=lambda v: v.short)
def test_two_sandboxes_one_fork_bombing(tmp_path, level):
    name = f"bomb-{uuid.uuid4().hex[:8]}.py"  # in the command lines of zen and of every bomb process
    source = FORK_BOMB if bomb_is_capped(level) else PRELUDE + PROCESS_STORM.replace("HOLD = 0", "HOLD = 60")
    bomb = zen_sandbox(tmp_path, source, level, "--timeout", "60", wait=False, name=name)
    try:
        assert wait_for(lambda: len(processes_with(name)) > 10), "the bomb did not get going"
        other = zen_sandbox(tmp_path, NUMERIC, level, "--timeout", "30")
        assert (other.returncode, other.stdout) == (0, NUMERIC_OUT), other.stderr
        assert bomb.poll() is None, "the bomb should still be running"
    finally:
        if level.namespaces:
            bomb.send_signal(signal.SIGINT)  # zen, as Ctrl-C would: it kills the whole tree on its way out
        else:
            for pid in set(processes_with(name)) - {bomb.pid}:  # rlimits: the storm, not zen
                os.kill(pid, signal.SIGKILL)
        bomb.wait(60)
    assert bomb.returncode == (130 if level.namespaces else 128 + signal.SIGKILL), bomb.stderr.read()
    assert wait_for(lambda: not processes_with(name))


@pytest.mark.parametrize("level", LEVELS, ids=lambda v: v.short)
def test_memory_bomb(tmp_path, level):
    body = ("attempt('at_once', lambda: len(bytearray(8 << 30)))\n"
            "chunks = []\n"
            "attempt('gradually', lambda: [chunks.append(bytearray(16 << 20)) for _ in range(10_000)] and None)\n"
            "report['held_mb'] = 16 * len(chunks)\n"
            "chunks.clear()\n")
    got = attack(tmp_path, body, level, "--memory-mb", "256")
    assert got["at_once"] == "MemoryError None" and got["gradually"] == "MemoryError None"
    assert got["held_mb"] < 256


DISK_FILL = """
def fill(prefix, count, size):
    made = 0
    try:
        for i in range(count):
            with open(f"{prefix}{i}", "wb") as f:
                f.write(bytes(size))
            made += 1
    except OSError as e:
        return f"{made} {e.errno}"
    return f"{made} None"
attempt("one_64mb_file", lambda: open("huge", "wb").write(bytes(64 << 20)))
report["files_8mb"] = fill("big", 8, 8 << 20)
report["empty_files"] = fill("small", 6000, 0)
"""


@pytest.mark.parametrize("level", LEVELS, ids=lambda v: v.short)
def test_disk_fill(tmp_path, level):
    got = attack(tmp_path, DISK_FILL, level, "--disk-mb", "32")
    assert got["one_64mb_file"] == f"OSError {errno.EFBIG}"  # every level: the file-size limit
    if level.namespaces:  # a 32 MiB tmpfs with a bounded number of inodes
        made, err = got["files_8mb"].split()  # after the 16 MiB the big file got before its limit
        assert int(made) <= 2 and err == str(errno.ENOSPC)
        made, err = got["empty_files"].split()
        assert int(made) < 6000 and err == str(errno.ENOSPC)
    else:  # rlimits: only each file is capped; the total lands on the host's disk
        assert got["files_8mb"] == "8 None" and got["empty_files"] == "6000 None"


# ---- files -----------------------------------------------------------------------------------------------------

@pytest.fixture
def secrets_on_host(tmp_path):
    private = tmp_path / "private-secret"
    private.write_text(SECRET)
    private.chmod(0o600)
    public = tmp_path / "public-secret"
    public.write_text(SECRET)
    public.chmod(0o644)
    return private, public


@pytest.mark.parametrize("level", LEVELS, ids=lambda v: v.short)
def test_reading_outside_the_work_directory(tmp_path, secrets_on_host, level):
    private, public = secrets_on_host
    body = (f"attempt('private', lambda: open({str(private)!r}).read())\n"
            f"attempt('public', lambda: open({str(public)!r}).read())\n"
            "attempt('shadow', lambda: open('/etc/shadow').read(4))\n"
            "attempt('passwd', lambda: open('/etc/passwd').read(4))\n"
            "attempt('root_home', lambda: len(os.listdir('/root')))\n"
            "attempt('parent_dir', lambda: len(os.listdir('..')))\n"
            "report['env'] = [k for k, v in os.environ.items() if 'zen-secret' in v]\n")
    got = attack(tmp_path, body, level)
    assert got["env"] == []  # every level: the environment is an allowlist
    if level.landlock:
        assert all(denied(got[k]) for k in ("private", "public", "shadow", "passwd", "root_home", "parent_dir")), got
    else:  # rlimits: whatever this user can read
        assert got["public"] == f"ok {SECRET}" and got["passwd"] == "ok root"
        assert got["parent_dir"].startswith("ok") and got["root_home"].startswith("ok") == ROOT
        assert (got["private"] == f"ok {SECRET}") == ROOT and got["shadow"].startswith("ok") == ROOT


@pytest.mark.parametrize("level", LEVELS, ids=lambda v: v.short)
def test_writing_outside_the_work_directory(tmp_path, level):
    name = f"zen-attack-{uuid.uuid4().hex}"
    targets = [str(tmp_path / name), f"/tmp/{name}", f"/dev/shm/{name}", f"../{name}"]
    body = "".join(f"attempt({t!r}, lambda: open({t!r}, 'w').write('pwned'))\n" for t in targets)
    try:
        got = attack(tmp_path, body, level)
        on_host = [os.path.exists(t) for t in targets[:3]]
    finally:
        for t in targets[:3]:
            if os.path.exists(t):
                os.unlink(t)
    if level.landlock:
        assert all(denied(got[t]) for t in targets) and on_host == [False, False, False], got
    else:  # rlimits: anywhere this user may write (the work directory's parent is /tmp here)
        assert all(got[t] == "ok 5" for t in targets) and on_host == [True, True, True], got


@pytest.mark.parametrize("level", LEVELS, ids=lambda v: v.short)
def test_symlinks_out_of_the_work_directory(tmp_path, secrets_on_host, level):
    private, public = secrets_on_host
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep").write_text("keep")
    body = (f"os.symlink({str(public)!r}, 'link')\n"
            "attempt('via_link', lambda: open('link').read())\n"
            "os.symlink('/etc/passwd', 'passwd')\n"
            "attempt('passwd_via_link', lambda: open('passwd').read(4))\n"
            f"os.symlink({str(victim)!r}, 'victim')\n"  # left behind for the host's clean-up to (not) follow
            "attempt('write_via_dir_link', lambda: open('victim/planted', 'w').write('x'))\n")
    got = attack(tmp_path, body, level)
    assert (victim / "keep").read_text() == "keep" and public.read_text() == SECRET  # the host followed nothing
    if level.landlock:
        assert denied(got["via_link"]) and denied(got["passwd_via_link"]) and denied(got["write_via_dir_link"])
        assert not (victim / "planted").exists()
    else:  # rlimits: a link reaches whatever the user can
        assert got["via_link"] == f"ok {SECRET}" and got["passwd_via_link"] == "ok root"
        assert got["write_via_dir_link"] == "ok 1" and (victim / "planted").exists()


# ---- the parent, /proc, privileges -----------------------------------------------------------------------------

@pytest.mark.parametrize("level", LEVELS, ids=lambda v: v.short)
def test_signalling_the_parent(tmp_path, level):
    body = (f"import signal, time\nreport['ppid'] = os.getppid()\n"
            f"attempt('probe_test_process', lambda: os.kill({os.getpid()}, 0))\n"
            "report['visible'] = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
            "attempt('kill_parent', lambda: os.kill(os.getppid(), signal.SIGTERM))\n"
            "time.sleep(0.5)\n")
    r = zen_sandbox(tmp_path, PRELUDE + body + "print(json.dumps(report))\n", level)
    if level.namespaces:
        got = json.loads(r.stdout.splitlines()[-1])
        assert r.returncode == 0 and got["ppid"] == 1  # the parent is the namespace's own init
        assert got["probe_test_process"] == f"ProcessLookupError {errno.ESRCH}"
        assert os.getpid() not in got["visible"] and max(got["visible"]) < 100
        assert got["kill_parent"] == "ok"  # delivered to nothing: PID 1 ignores it and zen is out of reach
    else:  # rlimits: the program's parent is the zen process itself, and SIGTERM ends it
        assert r.returncode == 128 + signal.SIGTERM and r.stdout == ""


@pytest.mark.parametrize("level", LEVELS, ids=lambda v: v.short)
def test_proc_escapes(tmp_path, secrets_on_host, level):
    private, _ = secrets_on_host
    body = ("ppid = os.getppid()\n"
            "attempt('parent_environ', lambda: 'zen-secret' in open(f'/proc/{ppid}/environ').read())\n"
            f"attempt('parent_root', lambda: open(f'/proc/{{ppid}}/root{private}').read())\n"
            f"attempt('init_root', lambda: open('/proc/1/root{private}').read())\n"
            f"attempt('self_root', lambda: open('/proc/self/root{private}').read())\n"
            "attempt('shadow_via_init', lambda: open('/proc/1/root/etc/shadow').read(4))\n"
            f"attempt('test_cmdline', lambda: len(open('/proc/{os.getpid()}/cmdline').read()))\n")
    got = attack(tmp_path, body, level)
    if level.namespaces:
        assert got["parent_environ"] in ("ok False",) or denied(got["parent_environ"]), got
        for key in ("parent_root", "init_root", "self_root", "shadow_via_init", "test_cmdline"):
            assert denied(got[key]), (key, got[key])
    else:  # rlimits: every process's /proc entry is there; without capabilities it cannot enter zen's
        assert denied(got["parent_environ"]) and denied(got["parent_root"])
        assert got["test_cmdline"].startswith("ok") and (got["self_root"] == f"ok {SECRET}") == ROOT


@pytest.mark.parametrize("level", LEVELS, ids=lambda v: v.short)
def test_ctypes_and_posix_tricks(tmp_path, level):
    body = """
import ctypes, posix
libc = ctypes.CDLL(None, use_errno=True)
def call(f, *args):
    r = f(*args)
    return f"{r} {ctypes.get_errno() if r != 0 else 0}"
status = dict(line.split(":\\t") for line in open("/proc/self/status").read().splitlines() if ":\\t" in line)
report["uid"] = os.getuid()
report["cap_eff"] = status["CapEff"]
report["no_new_privs"] = status["NoNewPrivs"]
posix.system("id -u > uid.txt")
report["system_uid"] = open("uid.txt").read().strip()
attempt("os_setuid_0", lambda: os.setuid(0))
report["libc_setuid_0"] = call(libc.setuid, 0)
report["unshare_net"] = call(libc.unshare, 0x40000000)
report["unshare_user"] = call(libc.unshare, 0x10000000)
"""
    got = attack(tmp_path, body, level)
    assert got["no_new_privs"] == "1" and int(got["cap_eff"], 16) == 0  # every level: no capabilities, none to gain
    if level.namespaces:
        assert got["uid"] != 0 and got["system_uid"] == str(got["uid"])
        assert got["os_setuid_0"] == f"PermissionError {errno.EPERM}" and got["libc_setuid_0"] == f"-1 {errno.EPERM}"
        assert got["unshare_user"] == f"-1 {errno.ENOSPC}"  # no nested user namespaces allowed
        assert got["unshare_net"] == f"-1 {errno.EPERM}"
    elif ROOT:  # rlimits as root: uid 0 (root's files are its own), though without capabilities
        assert got["uid"] == 0 and got["system_uid"] == "0"
        assert got["unshare_user"] == "0 0" and got["unshare_net"] == f"-1 {errno.EPERM}"


@pytest.mark.parametrize("level", LEVELS, ids=lambda v: v.short)
def test_timeout_kills_the_whole_tree(tmp_path, level):
    child, daemon = f"zen-child-{uuid.uuid4().hex}", f"zen-daemon-{uuid.uuid4().hex}"
    body = (f"import subprocess\n"
            f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)', '{child}'])\n"
            f"subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)', '{daemon}'], "
            "start_new_session=True)\n"
            "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\nwhile True:\n    pass\n")
    r = zen_sandbox(tmp_path, PRELUDE + body, level, "--timeout", "2")
    left = processes_with(daemon)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert r.returncode == 124 and processes_with(child) == []
    if level.namespaces:
        assert left == []  # the PID namespace died with its init, daemons included
    else:  # rlimits: a process that left the process group (setsid) outlives the run
        assert len(left) == 1


@pytest.mark.parametrize("level", LEVELS, ids=lambda v: v.short)
def test_numpy_and_sympy_work_inside(tmp_path, level):
    r = zen_sandbox(tmp_path, NUMERIC, level)
    assert (r.returncode, r.stdout) == (0, NUMERIC_OUT), r.stderr
