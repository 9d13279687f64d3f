"""The resource limits of one sandbox: per-process rlimits, the private work directory's size, output kept.

memory_mb, nproc, fsize_mb and nofile become RLIMIT_AS, RLIMIT_NPROC, RLIMIT_FSIZE and RLIMIT_NOFILE of the
program (soft and hard). disk_mb and inodes size the work directory's tmpfs where namespaces are available.
output_bytes is how much of each of stdout and stderr comes back: its head and its tail, halves of it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    memory_mb: int = 1024
    nproc: int = 64
    fsize_mb: int = 16
    nofile: int = 128
    disk_mb: int = 256
    inodes: int = 4096
    output_bytes: int = 20_000

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"sandbox limit {name} must be a positive integer, got {value!r}")
        if self.memory_mb < 64:
            raise ValueError(f"sandbox memory_mb must be at least 64 (Python itself needs it), got {self.memory_mb}")

    def rlimits(self, cpu_seconds: int) -> dict:
        """The launcher's view: bytes and counts."""
        return {"as": self.memory_mb << 20, "nproc": self.nproc, "fsize": self.fsize_mb << 20,
                "nofile": self.nofile, "cpu": cpu_seconds}
