"""Requests/s and tokens/s of a running `zen serve` at several client concurrencies (loopback only).

    zen serve --port 8000 &            # then:
    python benchmarks/serve_load.py --url http://127.0.0.1:8000 [--key KEY] [--levels 1 8 64] [--tokens 32]

Each client sends streamed greedy chat requests (ignore_eos, so every request makes --tokens tokens)
one after another; a level runs until every client has sent --rounds requests. Prints one JSON line
per level: requests/s, generated tokens/s, mean time to first token and mean request latency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time

import openai


async def level(client: openai.AsyncOpenAI, clients: int, rounds: int, tokens: int) -> dict:
    ttfts, latencies, generated = [], [], 0

    async def one(i: int) -> None:
        nonlocal generated
        for r in range(rounds):
            start = time.perf_counter()
            first = None
            stream = await client.chat.completions.create(
                model="default", messages=[{"role": "user", "content": f"Tell me a story about robot {i}-{r}."}],
                max_tokens=tokens, temperature=0, stream=True, stream_options={"include_usage": True},
                extra_body={"ignore_eos": True})
            async for chunk in stream:
                if first is None and chunk.choices and chunk.choices[0].delta.content:
                    first = time.perf_counter() - start
                if chunk.usage:
                    generated += chunk.usage.completion_tokens
            ttfts.append(first or 0.0)
            latencies.append(time.perf_counter() - start)

    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(clients)))
    wall = time.perf_counter() - start
    n = clients * rounds
    return {"clients": clients, "requests": n, "wall_s": round(wall, 2), "requests_per_s": round(n / wall, 3),
            "tokens_per_s": round(generated / wall, 1), "mean_ttft_s": round(sum(ttfts) / n, 3),
            "mean_latency_s": round(sum(latencies) / n, 3)}


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--key", default="none")
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 8, 64])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()
    client = openai.AsyncOpenAI(base_url=args.url + "/v1", api_key=args.key, max_retries=0, timeout=3600)
    for clients in args.levels:
        print(json.dumps(await level(client, clients, args.rounds, args.tokens)), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
