"""Sandbox levels, strongest first, and finding the strongest one this host allows.

namespaces: new user, mount, network, PID, IPC, UTS and cgroup namespaces, the program as an unprivileged uid
with no capabilities and no_new_privs, a private tmpfs work directory. landlock: the file system reduced to
read-only system and interpreter directories plus the read-write work directory (and no TCP, no signals out).
rlimits (always): memory, processes, file size, open files and CPU, a wall-clock kill of the whole tree, capped
output. Anything weaker than the first level is degraded: it says so in its name and logs a warning.
"""

from __future__ import annotations

import enum
import functools
import logging
import os

log = logging.getLogger("zenlm.agent.sandbox")


class Level(str, enum.Enum):
    FULL = "namespaces+landlock+rlimits"
    NAMESPACES = "namespaces+rlimits (degraded: no landlock)"
    LANDLOCK = "landlock+rlimits (degraded: no namespaces)"
    RLIMITS = "rlimits (degraded: no namespaces, no landlock)"

    @property
    def short(self) -> str:
        return self.value.split(" ")[0]

    @property
    def namespaces(self) -> bool:
        return "namespaces" in self.short

    @property
    def landlock(self) -> bool:
        return "landlock" in self.short

    @property
    def degraded(self) -> bool:
        return self is not Level.FULL

    def __str__(self) -> str:
        return self.value


NAMES = tuple(level.short for level in Level)


def parse(level: Level | str | None) -> Level | None:
    """A level from its enum, its full string or its short name; None (or 'auto') means the strongest."""
    if level is None or isinstance(level, Level):
        return level
    if level == "auto":
        return None
    for candidate in Level:
        if level in (candidate.value, candidate.short):
            return candidate
    raise ValueError(f"unknown sandbox level {level!r}: use auto, {', '.join(NAMES)}")


def resolve(level: Level | str | None = None) -> Level:
    """The level to use: the one asked for (ValueError if this host cannot give it) or the strongest that works.
    A degraded level logs a warning that says what the code can reach."""
    wanted = parse(level)
    if wanted is None:
        chosen = next((c for c in Level if works(c)[0]), None)
        if chosen is None:
            raise ValueError(f"no sandbox level works on this host: {works(Level.RLIMITS)[1]}")
    else:
        ok, why = works(wanted)
        if not ok:
            raise ValueError(f"sandbox level {wanted.short} does not work on this host: {why}")
        chosen = wanted
    if chosen.degraded:
        log.warning("SANDBOX DEGRADED: level %s; %s", chosen.short, _exposure(chosen))
    return chosen


def _exposure(level: Level) -> str:
    if level is Level.NAMESPACES:
        return "no Landlock here, so the code can read world-readable host files"
    if level is Level.LANDLOCK:
        return "no namespaces here, so the code shares the network (UDP, DNS) and sees host processes"
    return ("no namespaces and no Landlock here: the code runs as this user, reads and writes what this user can, "
            "reaches the network and can signal this user's processes")


@functools.cache
def works(level: Level) -> tuple[bool, str]:
    """Whether a trivial program runs at this level here (tried once per process), and why not."""
    from zenlm.agent.sandbox.landlock import abi
    from zenlm.agent.sandbox.process import SandboxError
    from zenlm.agent.sandbox.run import run_program

    if level.landlock and abi() < 1:
        return False, "the kernel offers no Landlock"
    if level.namespaces and os.geteuid() != 0 and _max_user_namespaces() == 0:
        return False, "user namespaces are disabled (user.max_user_namespaces = 0)"
    try:
        r = run_program("print('sandbox ok')", level=level, timeout=20.0)
    except SandboxError as e:
        return False, str(e)
    if r.exit_code != 0 or r.stdout != "sandbox ok\n":
        return False, f"a trivial program failed: exit {r.exit_code}: {(r.stdout + r.stderr).strip()[-300:]}"
    return True, ""


def _max_user_namespaces() -> int:
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            return int(f.read())
    except OSError:
        return 0
