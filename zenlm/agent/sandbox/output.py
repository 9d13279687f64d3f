"""Captured output: an anonymous in-memory file per stream, read back as its head and tail.

The program writes into a memfd the host made (its RLIMIT_FSIZE caps how much), so the host never holds more
than the limit it asked for, whatever the program printed.
"""

from __future__ import annotations

import os


def capture_file(name: str) -> int:
    """A new memfd, close-on-exec on the host's side (a child gets it only as its stdout or stderr)."""
    return os.memfd_create(f"zenlm-sandbox-{name}", os.MFD_CLOEXEC)


def read_capped(fd: int, limit: int) -> str:
    """The file's text, or its first and last limit/2 bytes with a line saying how much was cut between."""
    size = os.fstat(fd).st_size
    if size <= limit:
        return os.pread(fd, size, 0).decode("utf-8", "replace")
    head, tail = limit // 2, limit - limit // 2
    cut = size - head - tail
    return (os.pread(fd, head, 0).decode("utf-8", "replace") + f"\n[... {cut} bytes cut ...]\n"
            + os.pread(fd, tail, size - tail).decode("utf-8", "replace"))
