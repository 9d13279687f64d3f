"""`zen sandbox FILE.py`: run one Python file in the code sandbox, print its output, exit with its status.

The exit status is the program's, 124 when it ran past --timeout, 125 when the sandbox could not be set up,
143 when zen itself got SIGTERM (the sandbox is killed and cleaned up first).
--verbose reports the sandbox level on stderr; a degraded level always logs a warning there.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from zenlm.cli.common import count

LEVELS = ("auto", "namespaces+landlock+rlimits", "namespaces+rlimits", "landlock+rlimits", "rlimits")


def cmd_sandbox(args) -> int:
    from zenlm.agent.sandbox import Limits, SandboxError, resolve, run_program

    if not args.timeout > 0:
        raise ValueError(f"--timeout must be positive, got {args.timeout:g}")
    limits = Limits(memory_mb=count("--memory-mb", args.memory_mb, 64), disk_mb=count("--disk-mb", args.disk_mb, 1),
                    nproc=count("--nproc", args.nproc, 1))
    path = Path(args.file)
    source = path.read_text(encoding="utf-8", errors="surrogateescape")
    level = resolve(args.level)
    if args.verbose:
        print(f"zen sandbox: level {level.value}", file=sys.stderr)
    name = path.name if path.suffix == ".py" and path.name.isprintable() else "main.py"
    signal.signal(signal.SIGTERM, _terminated)  # so a SIGTERM still kills the tree and removes the work directory
    try:
        r = run_program(source, timeout=args.timeout, level=level, limits=limits, name=name)
    except SandboxError as e:
        print(f"zen sandbox: {e}", file=sys.stderr)
        return 125
    sys.stdout.write(r.stdout)
    sys.stdout.flush()
    sys.stderr.write(r.stderr)
    if args.verbose:
        print(f"zen sandbox: {r.seconds:.3f} s", file=sys.stderr)
    if r.timed_out:
        print(f"zen sandbox: killed after {args.timeout:g} s", file=sys.stderr)
        return 124
    return r.exit_code


def _terminated(signum, frame):
    raise SystemExit(128 + signum)


def add(sub) -> None:
    p = sub.add_parser("sandbox", help="run a Python file in the code sandbox (exit status: the program's, "
                                       "124 on timeout)")
    p.add_argument("file", help="the Python file to run (copied into the sandbox's empty work directory)")
    p.add_argument("--timeout", type=float, default=10.0, help="wall-clock seconds before the whole tree is killed")
    p.add_argument("--memory-mb", default="1024", help="address space per process (RLIMIT_AS)")
    p.add_argument("--disk-mb", default="256", help="size of the private work directory")
    p.add_argument("--nproc", default="64", help="processes and threads (RLIMIT_NPROC)")
    p.add_argument("--level", default="auto", choices=LEVELS,
                   help="auto (default): the strongest this host allows; or force a weaker one")
    p.add_argument("--verbose", "-v", action="store_true", help="report the sandbox level and time on stderr")
    p.set_defaults(func=cmd_sandbox)
