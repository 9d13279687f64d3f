"""`zen eval` in process against the same run through llama.cpp's server, side by side in one script.

    python benchmarks/eval_vs_llamacpp.py [--tasks humaneval] [--dtypes int4] [--limit N] [--threads 2]
                                          [--concurrency 1] [--output DIR] [--skip-llamacpp]

For each task: llama-cpp-python's OpenAI server on the default model's GGUF (greedy, no repeat penalty) is
asked every sample through `zen eval --base-url` (the same prompts, chat template and scoring), then zenlm
answers the same samples in process at each --dtype. Prints one markdown table: score, standard error, wall
time, and zenlm's wall time as a fraction of llama.cpp's. Each run's results.json and samples.jsonl stay
under --output (a rerun resumes them, so give a fresh directory to time a run again). llama-cpp-python is a
benchmark-only peer: `pip install 'llama-cpp-python[server]'` (it builds from source, ~10 minutes).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_llama_server(gguf: Path, threads: int, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1", "--port", str(port),
           "--n_threads", str(threads), "--n_threads_batch", str(threads), "--n_ctx", "4096",
           "--model_alias", "llama.cpp"]
    proc = subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama.cpp's server exited ({proc.returncode}); see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2):
                return proc
        except OSError:
            time.sleep(1)
    proc.kill()
    raise RuntimeError(f"llama.cpp's server did not answer in 120 s; see {log}")


def zen_eval(task: str, out: Path, extra: list[str], limit: int | None) -> tuple[dict, float]:
    cmd = [sys.executable, "-m", "zenlm", "eval", task, "--output", str(out), "--no-progress", "--json"] + extra
    if limit:
        cmd += ["--limit", str(limit)]
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - t0
    return json.loads((out / "results.json").read_text())[task], seconds


def row(task: str, peer: str, r: dict, seconds: float, base: float | None) -> str:
    ratio = f"{seconds / base:.2f}" if base else "-"
    return (f"| {task} | {peer} | {100 * r['value']:.1f} | {100 * r['stderr']:.1f} | {r['n']} | "
            f"{seconds / 60:.1f} | {ratio} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", default="humaneval")
    ap.add_argument("--dtypes", default="int4")
    ap.add_argument("--limit", type=int, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--concurrency", type=int, default=1, help="requests in flight to llama.cpp's server")
    ap.add_argument("--output", default="eval-vs-llamacpp")
    ap.add_argument("--skip-llamacpp", action="store_true")
    args = ap.parse_args()
    from zenlm.weights.registry import default_model_path

    gguf, out = default_model_path(), Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    lines = ["| task | peer | score (%) | ± stderr | n | wall min | x llama.cpp |", "|---|---|---|---|---|---|---|"]
    for task in args.tasks.split(","):
        base = None
        if not args.skip_llamacpp:
            port = free_port()
            server = start_llama_server(gguf, args.threads, port, out / "llama-server.log")
            try:
                r, base = zen_eval(task, out / f"{task}-llamacpp", ["--base-url", f"http://127.0.0.1:{port}/v1",
                                                                    "--concurrency", str(args.concurrency)], args.limit)
            finally:
                server.terminate()
                server.wait()
            lines.append(row(task, "llama.cpp server (llama-cpp-python)", r, base, None))
            print(lines[-1], flush=True)
        for dtype in args.dtypes.split(","):
            r, seconds = zen_eval(task, out / f"{task}-zen-{dtype}", ["--dtype", dtype], args.limit)
            lines.append(row(task, f"zenlm {dtype}, in process", r, seconds, base))
            print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
