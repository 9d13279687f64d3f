"""The sandbox launcher: a trusted script that confines itself, then executes the untrusted program.

Run by the host as `python -E -s -S launcher.py CONFIG_JSON` (standard library only; it imports its siblings
syscalls.py and landlock.py as top-level modules). With namespaces it becomes a chain of four processes:

    launcher (host namespaces, writes the id maps, watches the host's lifeline)
      └ creator (new user, mount, network, PID, IPC, UTS and cgroup namespaces)
          └ init, PID 1 of the new namespace: mounts, drops to the sandbox uid, no_new_privs, Landlock
              └ the program (rlimits set, then exec)

When init exits, the kernel kills everything left in the PID namespace. Without namespaces the launcher drops
every capability, sets Landlock (if asked) and the rlimits on itself and executes the program in place. Any
failure before the program starts is written to the status pipe (which exec closes); the process exits with 125.
"""

from __future__ import annotations

import fcntl
import json
import os
import resource
import select
import signal
import stat
import sys

import landlock
import syscalls

INSIDE_UID = 1000  # the program's uid inside the user namespace when the host runs as root
SETUP_FAILED = 125
SYSTEM_READ = ["/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache", "/etc/localtime",
               "/etc/mime.types", "/etc/fonts", "/dev/urandom", "/dev/random", "/dev/zero", "/sys/devices/system/cpu"]
DEVICES_RW = ["/dev/null"]
SCRATCH = ["/tmp", "/var/tmp", "/dev/shm"]  # world-writable on the host: a small private tmpfs each, inside
HIDDEN = ["/run"]  # daemons' unix sockets (connecting to one is not a Landlock right): an empty tmpfs, inside
MAX_COPY_FILES = 512
IGNORED_BY_INIT = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2,
                   signal.SIGALRM, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)


class SetupError(Exception):
    pass


def main() -> None:
    cfg = json.loads(sys.argv[1])
    try:
        if cfg["namespaces"]:
            os._exit(_launch_namespaced(cfg))
        _confine_and_exec(cfg, cfg["workdir"], [*SYSTEM_READ, "/proc/self"])
    except BaseException as e:  # noqa: BLE001 - anything at all: report it, never run the program half-confined
        _fail(cfg, e)


def _fail(cfg: dict, error: BaseException) -> None:
    message = f"{type(error).__name__}: {error}" if not isinstance(error, SetupError) else str(error)
    try:
        os.write(cfg["status_fd"], message.encode("utf-8", "replace")[:4000])
    finally:
        os._exit(SETUP_FAILED)


def _exit_code(status: int) -> int:
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


# ---- the launcher, in the host's namespaces -------------------------------------------------------------------

def _launch_namespaced(cfg: dict) -> int:
    ready_r, ready_w = os.pipe()
    mapped_r, mapped_w = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        os.close(mapped_w)
        try:
            syscalls.set_parent_death_signal(signal.SIGKILL)
            if os.getppid() != parent:
                raise SetupError("the launcher died during setup")
            _creator(cfg, ready_w, mapped_r)
        except BaseException as e:  # noqa: BLE001
            _fail(cfg, e)
    os.close(ready_w)
    os.close(mapped_r)
    os.close(cfg["status_fd"])  # the children hold it; the launcher's copy would keep it open past exec
    if os.read(ready_r, 1) == b"1":
        try:
            _write_id_maps(pid, cfg.get("host_uid"))
        except OSError:
            os.kill(pid, signal.SIGKILL)
            raise
        os.write(mapped_w, b"1")
    os.close(mapped_w)
    return _supervise(pid, cfg["lifeline_fd"])


def _write_id_maps(pid: int, host_uid: int | None) -> None:
    """As root: inside uid 0 -> host_uid (setup), INSIDE_UID -> host_uid + 1 (the program). Otherwise the
    only mapping an unprivileged user may write: inside 0 -> itself."""
    if host_uid is not None:
        uid_map = gid_map = f"0 {host_uid} 1\n{INSIDE_UID} {host_uid + 1} 1\n"
    else:
        with open(f"/proc/{pid}/setgroups", "w") as f:
            f.write("deny")
        uid_map, gid_map = f"0 {os.geteuid()} 1\n", f"0 {os.getegid()} 1\n"
    for name, text in (("uid_map", uid_map), ("gid_map", gid_map)):
        with open(f"/proc/{pid}/{name}", "w") as f:
            f.write(text)


def _supervise(pid: int, lifeline: int) -> int:
    """Wait for the creator; if the host goes away (its end of the lifeline closes), kill the whole group."""
    pidfd = os.pidfd_open(pid)
    while True:
        readable, _, _ = select.select([pidfd, lifeline], [], [])
        if pidfd in readable:
            return _exit_code(os.waitpid(pid, 0)[1])
        os.killpg(0, signal.SIGKILL)


# ---- the creator: new namespaces ---------------------------------------------------------------------------

def _creator(cfg: dict, ready_w: int, mapped_r: int) -> None:
    syscalls.unshare(syscalls.CLONE_NEWUSER | syscalls.CLONE_NEWNS | syscalls.CLONE_NEWNET | syscalls.CLONE_NEWPID
                     | syscalls.CLONE_NEWIPC | syscalls.CLONE_NEWUTS | syscalls.CLONE_NEWCGROUP)
    os.write(ready_w, b"1")
    os.close(ready_w)
    if os.read(mapped_r, 1) != b"1":
        raise SetupError("the launcher could not write the user namespace's id maps")
    os.close(mapped_r)
    os.close(cfg["lifeline_fd"])
    pid = os.fork()
    if pid == 0:
        try:
            _init(cfg)
        except BaseException as e:  # noqa: BLE001
            _fail(cfg, e)
    os.close(cfg["status_fd"])
    os._exit(_exit_code(os.waitpid(pid, 0)[1]))


# ---- init: PID 1 of the new PID namespace ------------------------------------------------------------------

def _init(cfg: dict) -> None:
    syscalls.set_parent_death_signal(signal.SIGKILL)
    for sig in IGNORED_BY_INIT:
        signal.signal(sig, signal.SIG_IGN)  # nothing inside may stop PID 1 early (it ignores SIGKILL from inside)
    workdir = cfg["workdir"]
    root = cfg.get("host_uid") is not None
    files = _open_workdir_files(workdir, cfg["disk"], cfg["inodes"])
    plan = _mount_plan(workdir, cfg["python_paths"], root)  # needs the host's view, before any mount
    if root:
        os.setgroups([])
    os.setresgid(0, 0, 0)
    os.setresuid(0, 0, 0)  # inside root = the throwaway host uid: from here on, host files are someone else's
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    _apply_mounts(plan, workdir, cfg["disk"], cfg["inodes"], INSIDE_UID if root else 0)
    syscalls.mount("proc", "/proc", "proc", syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC)
    with open("/proc/sys/user/max_user_namespaces", "w") as f:
        f.write("0")  # no nested user namespaces: the program cannot gain capabilities anywhere
    syscalls.drop_bounding_set()
    if root:
        os.setresgid(INSIDE_UID, INSIDE_UID, INSIDE_UID)
        os.setresuid(INSIDE_UID, INSIDE_UID, INSIDE_UID)
    syscalls.clear_capabilities()
    syscalls.set_no_new_privs()
    syscalls.set_parent_death_signal(signal.SIGKILL)  # a uid change cleared it
    _copy_in(files, workdir)
    read = [*SYSTEM_READ, "/proc", *cfg["python_paths"]]
    if cfg["landlock"]:
        landlock.restrict(read, [workdir, *DEVICES_RW], cfg["landlock"], deny_tcp=False)  # no network here anyway
    pid = os.fork()
    if pid == 0:
        for sig in (*IGNORED_BY_INIT, signal.SIGPIPE, signal.SIGXFSZ):
            signal.signal(sig, signal.SIG_DFL)
        _exec_program(cfg, workdir)
    os.close(cfg["status_fd"])
    if cfg.get("control_fd") is not None:
        os.close(cfg["control_fd"])
    while True:
        done, status = os.wait()
        if done == pid:
            os._exit(_exit_code(status))


def _open_workdir_files(workdir: str, disk: int, inodes: int) -> list[tuple[str, int | None, int]]:
    """The work directory's files, opened now (as the host's user) to be copied into the private tmpfs later:
    (relative path, fd or None for a directory, mode). Symlinks and special files are left out."""
    out: list[tuple[str, int | None, int]] = []
    total = 0
    for top, dirs, names in os.walk(workdir):
        rel_top = os.path.relpath(top, workdir)
        for d in dirs:
            if not os.path.islink(os.path.join(top, d)):
                out.append((os.path.normpath(os.path.join(rel_top, d)), None, 0o755))
        for name in names:
            try:
                fd = os.open(os.path.join(top, name), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError:
                continue
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                os.close(fd)
                continue
            total += st.st_size
            out.append((os.path.normpath(os.path.join(rel_top, name)), fd, stat.S_IMODE(st.st_mode)))
        if len(out) > min(MAX_COPY_FILES, inodes) or total > disk:
            raise SetupError(f"the work directory {workdir} holds more than the sandbox's disk allows "
                             f"({MAX_COPY_FILES} files, {disk >> 20} MiB)")
    return out


def _copy_in(files: list[tuple[str, int | None, int]], workdir: str) -> None:
    for rel, fd, mode in files:
        path = os.path.join(workdir, rel)
        if fd is None:
            os.makedirs(path, 0o755, exist_ok=True)
            continue
        with os.fdopen(fd, "rb") as src, open(path, "xb") as dst:
            while chunk := src.read(1 << 20):
                dst.write(chunk)
        os.chmod(path, (mode | 0o600) & 0o755)


def _blocker(path: str, root: bool) -> str | None:
    """The outermost ancestor of path that the sandbox uid cannot pass through (as root: any directory
    without the world's x bit), or None."""
    parts = path.strip("/").split("/")
    for i in range(1, len(parts)):
        a = "/" + "/".join(parts[:i])
        mode = os.stat(a).st_mode
        if not (mode & 0o001 if root else os.access(a, os.X_OK)):
            return a
    return None


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _mount_plan(workdir: str, python_paths: list[str], root: bool) -> dict:
    """What to mount: small fresh tmpfs over the world-writable scratch places, /run, and every directory the
    sandbox uid could not pass through on the way to the interpreter or the work directory; the interpreter's
    directories bound back where they were (their sources opened now, before anything hides them)."""
    covers = [d for d in SCRATCH + HIDDEN if os.path.isdir(d) and not os.path.islink(d)]
    for p in [*python_paths, workdir]:
        if any(_under(p, c) for c in covers):
            continue
        b = _blocker(p, root)
        if b is not None and not any(_under(b, c) for c in covers):
            covers = [c for c in covers if not _under(c, b)] + [b]
    binds = {p: os.open(p, os.O_PATH | os.O_CLOEXEC) for p in python_paths if any(_under(p, c) for c in covers)}
    return {"covers": sorted(covers, key=lambda c: c.count("/")), "binds": binds}


def _apply_mounts(plan: dict, workdir: str, disk: int, inodes: int, uid: int) -> None:
    flags = syscalls.MS_NOSUID | syscalls.MS_NODEV
    for cover in plan["covers"]:
        mode = "1777" if cover in SCRATCH else "0755"
        syscalls.mount("tmpfs", cover, "tmpfs", flags, f"size=4m,nr_inodes=1024,mode={mode}")
    for path, fd in sorted(plan["binds"].items()):
        os.makedirs(path, 0o755, exist_ok=True)
        syscalls.mount(f"/proc/self/fd/{fd}", path, None, syscalls.MS_BIND | syscalls.MS_REC)
        os.close(fd)
    os.makedirs(workdir, 0o755, exist_ok=True)
    syscalls.mount("tmpfs", workdir, "tmpfs", flags,
                   f"size={disk},nr_inodes={inodes},mode=0700,uid={uid},gid={uid}")


# ---- the program ---------------------------------------------------------------------------------------------

def _confine_and_exec(cfg: dict, workdir: str, read: list[str]) -> None:
    """Without namespaces: no capabilities (as root, the bounding set emptied too, so exec grants none), Landlock
    if asked, then the program (the launcher's process becomes it)."""
    if os.geteuid() == 0:
        syscalls.drop_bounding_set()
    syscalls.clear_capabilities()
    if cfg["landlock"]:
        landlock.restrict([*read, *cfg["python_paths"]], [workdir, *DEVICES_RW], cfg["landlock"])
    _exec_program(cfg, workdir)


def _exec_program(cfg: dict, workdir: str) -> None:
    try:
        status = fcntl.fcntl(cfg["status_fd"], fcntl.F_DUPFD_CLOEXEC, 10)  # exec closes it: the host reads EOF
        cfg["status_fd"] = status
        if cfg.get("control_fd") is not None:
            os.dup2(cfg["control_fd"], 3)
        os.closerange(3 if cfg.get("control_fd") is None else 4, status)
        os.closerange(status + 1, 1 << 20)
        os.chdir(workdir)
        limits = cfg["limits"]
        for res, value in ((resource.RLIMIT_AS, limits["as"]), (resource.RLIMIT_NPROC, limits["nproc"]),
                           (resource.RLIMIT_FSIZE, limits["fsize"]), (resource.RLIMIT_NOFILE, limits["nofile"]),
                           (resource.RLIMIT_CPU, limits["cpu"]), (resource.RLIMIT_CORE, 0)):
            hard = resource.getrlimit(res)[1]
            value = value if hard == resource.RLIM_INFINITY else min(value, hard)
            resource.setrlimit(res, (value, value))  # soft and hard: the program cannot raise them again
        syscalls.set_no_new_privs()
        os.execve(cfg["argv"][0], cfg["argv"], cfg["env"])
    except BaseException as e:  # noqa: BLE001
        _fail(cfg, e)


if __name__ == "__main__":
    main()
