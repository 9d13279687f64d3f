"""Soak test for zen serve: many clients for a set number of minutes, good requests mixed with bad ones and
random disconnects, while the server's RSS is sampled. Reports errors, p50/p99 latency, RSS over time, and
whether RSS stayed flat (the last third of the run within 5% or 64 MiB of the middle third).

    python benchmarks/soak.py --minutes 3 --dtype int4            # starts `zen serve` itself
    python benchmarks/soak.py --url http://127.0.0.1:8000 --pid 1234 --minutes 10
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import httpx

BODY_LIMIT = 1 << 20  # the server this script starts gets --max-body-bytes 1 MiB, so a 413 is cheap to provoke
JSON = {"Content-Type": "application/json"}
PROMPTS = ["Write a haiku about the sea.", "What is 17 * 23?", "Name three sorting algorithms.",
           "def fibonacci(n):", "Explain a Python list comprehension in one sentence.", "Say hello in French."]


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def start_server(model: str, dtype: str, extra: list[str]) -> tuple[subprocess.Popen, str]:
    log = Path(f"/tmp/zen-soak-{os.getpid()}.log")
    err = open(log, "w")
    proc = subprocess.Popen([sys.executable, "-m", "zenlm", "serve", "--model", model, "--dtype", dtype, "--port",
                             "0", "--max-body-bytes", str(BODY_LIMIT), *extra], stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        m = re.search(r"on (http://[^ ]+?)/v1", log.read_text())
        if m:
            return proc, m.group(1)
        time.sleep(0.5)
    raise SystemExit(f"zen serve did not start:\n{log.read_text()}")


class Soak:
    def __init__(self, url: str, model: str, seed: int):
        self.url, self.model, self.rng = url, model, random.Random(seed)
        self.latency: dict[str, list[float]] = defaultdict(list)
        self.counts: Counter = Counter()
        self.errors: list[str] = []

    def chat(self, stream: bool, tokens: int = 24) -> dict:
        return {"model": self.model, "stream": stream, "max_tokens": tokens, "temperature": 0.7,
                "messages": [{"role": "user", "content": self.rng.choice(PROMPTS)}]}

    def expect(self, kind: str, r: httpx.Response, status: int) -> None:
        self.counts[kind] += 1
        if r.status_code != status:
            self.errors.append(f"{kind}: got {r.status_code}, expected {status}: {r.text[:200]}")

    async def one(self, c: httpx.AsyncClient) -> None:
        kind = self.pick()
        try:
            await self.run(c, kind)
        except httpx.HTTPError as e:
            self.errors.append(f"{kind}: transport error {type(e).__name__}: {e}")

    def pick(self) -> str:
        return self.rng.choices(
            ["chat", "stream", "completion_ids", "ollama_curl", "disconnect_stream", "disconnect_wait",
             "bad_json", "bad_type", "bad_ids", "too_big", "bad_origin", "bad_host", "bad_model"],
            weights=[4, 4, 2, 2, 2, 2, 1, 1, 1, 1, 1, 1, 1])[0]

    async def run(self, c: httpx.AsyncClient, kind: str) -> None:
        t = time.perf_counter()
        if kind == "chat":
            r = await c.post("/v1/chat/completions", json=self.chat(False))
            self.expect(kind, r, 200)
        elif kind == "stream":
            async with c.stream("POST", "/v1/chat/completions", json=self.chat(True)) as r:
                lines = [x async for x in r.aiter_lines() if x.startswith("data: ")]
            self.expect(kind, r, 200)
            if not lines or lines[-1] != "data: [DONE]":
                self.errors.append(f"stream: did not end with [DONE] ({len(lines)} events)")
        elif kind == "completion_ids":
            r = await c.post("/v1/completions", json={"model": self.model, "prompt": [[9707, 11], [785, 3974]],
                                                      "max_tokens": 12})
            self.expect(kind, r, 200)
        elif kind == "ollama_curl":  # curl -d: a form Content-Type, JSON body
            body = {"model": self.model, "messages": self.chat(False)["messages"], "stream": False,
                    "options": {"num_predict": 16}}
            r = await c.post("/api/chat", content=json.dumps(body).encode(),
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
            self.expect(kind, r, 200)
        elif kind == "disconnect_stream":  # read a few chunks, then hang up
            async with c.stream("POST", "/v1/chat/completions", json=self.chat(True, 200)) as r:
                n = self.rng.randint(1, 4)
                async for _ in r.aiter_lines():
                    n -= 1
                    if n <= 0:
                        break
            self.counts[kind] += 1
            return
        elif kind == "disconnect_wait":  # a non-streamed request abandoned while it runs
            try:
                await asyncio.wait_for(c.post("/v1/chat/completions", json=self.chat(False, 200)),
                                       self.rng.uniform(0.05, 1.0))
            except (asyncio.TimeoutError, httpx.HTTPError):
                pass
            self.counts[kind] += 1
            return
        elif kind == "bad_json":
            r = await c.post("/v1/chat/completions", content=b'{"model": ', headers=JSON)
            self.expect(kind, r, 400)
        elif kind == "bad_type":
            r = await c.post("/v1/chat/completions", json={"model": self.model, "messages": "hi", "n": "two"})
            self.expect(kind, r, 400)
        elif kind == "bad_ids":
            r = await c.post("/v1/completions", json={"model": self.model, "prompt": [1, 2, 10**9]})
            self.expect(kind, r, 400)
        elif kind == "too_big":
            r = await c.post("/v1/completions", content=b" " * (BODY_LIMIT + 1), headers=JSON)
            self.expect(kind, r, 413)
        elif kind == "bad_origin":
            r = await c.post("/v1/chat/completions", json=self.chat(False), headers={"Origin": "http://evil.example"})
            self.expect(kind, r, 403)
        elif kind == "bad_host":
            r = await c.get("/v1/models", headers={"Host": "evil.example"})
            self.expect(kind, r, 403)
        elif kind == "bad_model":
            r = await c.post("/v1/chat/completions", json={**self.chat(False), "model": "nope"})
            self.expect(kind, r, 404)
        self.latency[kind].append(time.perf_counter() - t)

    async def client(self, deadline: float) -> None:
        async with httpx.AsyncClient(base_url=self.url, timeout=300) as c:
            while time.monotonic() < deadline:
                await self.one(c)


async def sample(pid: int | None, deadline: float, every: float, out: list[tuple[float, float]]) -> None:
    start = time.monotonic()
    while pid and time.monotonic() < deadline:
        mib = rss_mib(pid)
        if mib is not None:
            out.append((time.monotonic() - start, mib))
        await asyncio.sleep(every)


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else float("nan")


def flat(rss: list[tuple[float, float]]) -> tuple[bool, float, float]:
    """Whether the last third's median RSS is within 5% (or 64 MiB) of the middle third's (after warm-up)."""
    values = [m for _, m in rss]
    third = len(values) // 3
    if third == 0:
        return False, float("nan"), float("nan")
    middle, last = statistics.median(values[third:2 * third]), statistics.median(values[2 * third:])
    return last - middle <= max(0.05 * middle, 64), middle, last


def report(s: Soak, rss: list, minutes: float, clients: int, healthy: bool, header: str) -> str:
    ok, middle, last = flat(rss)
    total = sum(s.counts.values())
    lines = [header, "", f"{clients} clients for {minutes:g} min: {total} requests, {len(s.errors)} errors; "
             f"/health afterwards: {'ok' if healthy else 'FAILED'}", "",
             "| kind | requests | p50 s | p99 s |", "|---|---:|---:|---:|"]
    for kind, n in sorted(s.counts.items()):
        lat = s.latency.get(kind, [])
        p50, p99 = (f"{pct(lat, 0.5):.2f}", f"{pct(lat, 0.99):.2f}") if lat else ("-", "-")
        lines.append(f"| {kind} | {n} | {p50} | {p99} |")
    good = [x for k in ("chat", "stream", "completion_ids", "ollama_curl") for x in s.latency.get(k, [])]
    lines += ["", f"Good requests: p50 {pct(good, 0.5):.2f} s, p99 {pct(good, 0.99):.2f} s (end to end)."]
    if rss:
        step = max(1, len(rss) // 12)
        lines += ["", "RSS of the server over time (MiB): " + ", ".join(f"{t:.0f}s {m:.0f}" for t, m in rss[::step])
                  + f", end {rss[-1][1]:.0f}",
                  f"RSS {'stayed flat' if ok else 'GREW'}: median {middle:.0f} MiB in the middle third, "
                  f"{last:.0f} MiB in the last third (max {max(m for _, m in rss):.0f} MiB)."]
    if s.errors:
        lines += ["", "First errors:"] + [f"- {e}" for e in s.errors[:10]]
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="an already running zen serve (else one is started)")
    ap.add_argument("--pid", type=int, help="with --url: the server's pid, to sample its RSS")
    ap.add_argument("--model", default="default")
    ap.add_argument("--dtype", default="int4")
    ap.add_argument("--minutes", type=float, default=3.0)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--sample-every", type=float, default=2.0, help="seconds between RSS samples")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", help="also write the report (markdown) here")
    ap.add_argument("--serve-args", default="",
                    help="more flags for the zen serve it starts, e.g. '--kv-cache-tokens 4096'")
    args = ap.parse_args()
    if args.minutes <= 0 or args.clients < 1:
        ap.error("--minutes must be > 0 and --clients >= 1")
    proc, url, pid = None, args.url, args.pid
    if url is None:
        proc, url = start_server(args.model, args.dtype, args.serve_args.split())
        pid = proc.pid
    name = httpx.get(url + "/v1/models", timeout=60).json()["data"][0]["id"]
    soak, rss = Soak(url, name, args.seed), []

    async def run() -> None:
        deadline = time.monotonic() + args.minutes * 60
        await asyncio.gather(sample(pid, deadline, args.sample_every, rss),
                             *(soak.client(deadline) for _ in range(args.clients)))

    try:
        asyncio.run(run())
        healthy = httpx.get(url + "/health", timeout=60).json() == {"status": "ok"}
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
    header = (f"## zen serve soak: --model {args.model} --dtype {args.dtype}, {os.cpu_count()} CPUs, "
              f"{time.strftime('%Y-%m-%d')}")
    text = report(soak, rss, args.minutes, args.clients, healthy, header)
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0 if healthy and not soak.errors and flat(rss)[0] else 1


if __name__ == "__main__":
    sys.exit(main())
