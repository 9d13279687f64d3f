"""Requests/s and tokens/s of `zen serve` under concurrent clients (loopback only); replicas on Ray Serve.

    zen serve --port 8000 &            # a running server, then:
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 [--key KEY] [--levels 1 8 64] [--tokens 32]

    python benchmarks/serve_load.py --replicas 1 2 [--model default] [--clients 16]   # starts the servers itself

Each client sends streamed greedy chat requests (ignore_eos, so every request makes --tokens tokens)
one after another; a level runs until every client has sent --rounds requests. With --url: one JSON line
per level (requests/s, generated tokens/s, mean time to first token, mean latency). With --replicas: for
each count N, `zen serve --replicas N --threads-per-replica 1` is started, loaded with --clients clients
and stopped; then, on the largest N, the same load runs again and one replica is killed (SIGKILL) once a
third of the requests are done. It prints markdown tables: aggregate output tokens/s per N and the speed-up
over the first, and for the kill run the requests that finished, got 503 (stream: an error event) or were
lost otherwise, against those the killed replica held. The replicas' CPU seconds (from /proc, so only
for a server on this machine) show how much of the machine they actually got.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import openai


@dataclass
class Tally:
    ttfts: list = field(default_factory=list)
    latencies: list = field(default_factory=list)
    generated: int = 0
    outcomes: list = field(default_factory=list)  # "ok", "503", or "lost: ..." per request
    inflight: dict = field(default_factory=dict)  # request id -> replica, while it runs
    pids: dict = field(default_factory=dict)  # replica -> pid
    served: dict = field(default_factory=dict)  # replica -> requests it started
    cpu0: dict = field(default_factory=dict)  # pid -> its CPU seconds when first seen
    done: int = 0


async def one_request(client: openai.AsyncOpenAI, t: Tally, rid: str, tokens: int) -> None:
    start, first = time.perf_counter(), None
    try:
        async with client.chat.completions.with_streaming_response.create(
                model="default", messages=[{"role": "user", "content": f"Tell me a story about robot {rid}."}],
                max_tokens=tokens, temperature=0, stream=True, stream_options={"include_usage": True},
                extra_body={"ignore_eos": True}) as resp:
            replica, _, pid = resp.headers.get("x-zen-replica", "single pid=0").partition(" pid=")
            t.inflight[rid], t.pids[replica] = replica, int(pid)
            t.served[replica] = t.served.get(replica, 0) + 1
            if int(pid) not in t.cpu0:
                t.cpu0[int(pid)] = cpu_seconds(int(pid))
            async for chunk in await resp.parse():
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter() - start
                if chunk.usage:
                    t.generated += chunk.usage.completion_tokens
        t.outcomes.append("ok")
        t.ttfts.append(first or 0.0)
        t.latencies.append(time.perf_counter() - start)
    except openai.APIStatusError as e:
        t.outcomes.append("503" if e.status_code == 503 and e.response.headers.get("retry-after") else
                          f"lost: {e.status_code}")
    except openai.APIError as e:  # an error event inside the stream
        code = e.body.get("code") if isinstance(e.body, dict) else None
        t.outcomes.append("503" if code == "replica_died" else f"lost: {e.message[:60]}")
    finally:
        t.inflight.pop(rid, None)
        t.done += 1


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a local process (a replica), None if it is not here (any more)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def level(client: openai.AsyncOpenAI, clients: int, rounds: int, tokens: int, kill: bool = False) -> dict:
    t = Tally()
    killed = {}

    async def one(i: int) -> None:
        for r in range(rounds):
            await one_request(client, t, f"{i}-{r}", tokens)

    async def killer() -> None:
        while t.done < clients * rounds // 3 or len(t.pids) < 2:
            await asyncio.sleep(0.05)
        victim = sorted(t.pids)[0]
        killed["held"] = sum(1 for r in t.inflight.values() if r == victim)
        os.kill(t.pids[victim], signal.SIGKILL)

    start = time.perf_counter()
    jobs = [one(i) for i in range(clients)] + ([killer()] if kill else [])
    await asyncio.gather(*jobs)
    wall = time.perf_counter() - start
    n, ok = clients * rounds, t.outcomes.count("ok")
    used = [(cpu_seconds(p), c) for p, c in t.cpu0.items()]
    cpu = sum(after - before for after, before in used if after is not None and before is not None)
    out = {"clients": clients, "requests": n, "ok": ok, "wall_s": round(wall, 2), "requests_per_s": round(ok / wall, 3),
           "tokens_per_s": round(t.generated / wall, 1), "mean_ttft_s": round(sum(t.ttfts) / max(ok, 1), 3),
           "mean_latency_s": round(sum(t.latencies) / max(ok, 1), 3), "per_replica": sorted(t.served.values()),
           "replica_cpu_s": round(cpu, 1)}
    if kill:
        out |= {"held_by_killed": killed.get("held"), "got_503": t.outcomes.count("503"),
                "lost": [o for o in t.outcomes if o.startswith("lost")]}
    return out


def start_server(replicas: int, model: str, dtype: str, log: str) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "zenlm", "serve", "--model", model, "--dtype", dtype, "--port", "0",
           "--replicas", str(replicas), "--threads-per-replica", "1", "--served-model-name", "default"]
    with open(log, "w") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None:
        m = re.search(r"on (http://127\.0\.0\.1:\d+)/v1", open(log, errors="replace").read())
        if m:
            return proc, m.group(1)
        time.sleep(1)
    proc.kill()
    raise SystemExit(f"zen serve --replicas {replicas} did not start; see {log}")


def stop(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(120)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def compare(args) -> None:
    rows, kill_row = [], None
    logs = tempfile.mkdtemp(prefix="serve_load_")
    for i, n in enumerate(args.replicas):
        proc, url = start_server(n, args.model, args.dtype, f"{logs}/replicas{n}.log")
        try:
            client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=3600)
            await level(client, n * 2, 1, 4)  # warm every replica up
            rows.append((n, await level(client, args.clients, args.rounds, args.tokens)))
            print(json.dumps({"replicas": n, **rows[-1][1]}), flush=True)
            if i == len(args.replicas) - 1 and n > 1:
                kill_row = await level(client, args.clients, args.rounds, args.tokens, kill=True)
                print(json.dumps({"replicas": n, "kill": True, **kill_row}), flush=True)
        finally:
            stop(proc)
    base = rows[0][1]["tokens_per_s"]
    print(f"\n{args.clients} clients x {args.rounds} requests x {args.tokens} tokens, model {args.model}, "
          f"--dtype {args.dtype}, 1 thread per replica\n")
    print("| replicas | requests ok | wall s | output tokens/s | speed-up | mean TTFT s | mean latency s "
          "| replicas' CPU s (cores busy) |")
    print("|---|---|---|---|---|---|---|---|")
    for n, r in rows:
        print(f"| {n} | {r['ok']}/{r['requests']} | {r['wall_s']} | {r['tokens_per_s']} | "
              f"{r['tokens_per_s'] / base:.2f}x | {r['mean_ttft_s']} | {r['mean_latency_s']} | "
              f"{r['replica_cpu_s']} ({r['replica_cpu_s'] / r['wall_s']:.2f}) |")
    if kill_row:
        print("\n| kill run | requests | finished | 503 | held by the killed replica | lost otherwise |")
        print("|---|---|---|---|---|---|")
        print(f"| {rows[-1][0]} replicas, 1 killed | {kill_row['requests']} | {kill_row['ok']} | {kill_row['got_503']} "
              f"| {kill_row['held_by_killed']} | {len(kill_row['lost'])} |")


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default=None, help="a running server (default: start servers, see --replicas)")
    ap.add_argument("--key", default="none")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--replicas", type=int, nargs="+", default=[1, 2], help="replica counts to compare")
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--model", default="default")
    ap.add_argument("--dtype", default="auto")
    args = ap.parse_args()
    if args.url is None:
        return await compare(args)
    client = openai.AsyncOpenAI(base_url=args.url + "/v1", api_key=args.key, max_retries=0, timeout=3600)
    for clients in args.levels:
        print(json.dumps(await level(client, clients, args.rounds, args.tokens)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
