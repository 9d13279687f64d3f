"""`zen serve` as a real subprocess for tests: start it on a free port and wait for the URL it prints."""

import re
import subprocess
import sys
import time
from pathlib import Path


def start(args: list[str], log: Path, env: dict | None = None, timeout: float = 300) -> tuple[subprocess.Popen, str]:
    """`python -m zenlm serve --port 0 ARGS`, stderr to log; (process, base URL) once it listens."""
    with open(log, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "zenlm", "serve", "--port", "0", *args],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err, env=env)
    url, deadline = None, time.time() + timeout
    while url is None and time.time() < deadline and proc.poll() is None:
        m = re.search(r"on (http://127\.0\.0\.1:\d+)/v1", log.read_text())
        url = m.group(1) if m else time.sleep(0.2)
    if url is None:
        proc.kill()
        proc.wait()
        raise AssertionError(f"zen serve did not start:\n{log.read_text()}")
    return proc, url
