"""The agent suite: 20 multi-step tasks that need the code interpreter, each checked exactly, answered by the agent
(the tool loop with the sandboxed `python` tool) and by the model alone (one greedy chat answer, no tools).

    python benchmarks/agent_tasks.py [--model default] [--max-turns 6] [--only 1,5]

Every expected answer is computed here, in Python, from the task's own inputs. An answer passes when the
expected value appears in it exactly: a number as a whole number token (thousands separators dropped), a
string as written. All agents run at once, each in its own thread, their turns batched by one AsyncLLM
engine loop; the lone answers are generated together too. Prints a markdown table, one row per task, then the
two rates.
"""

from __future__ import annotations

import argparse
import datetime
import math
import re
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def primes(n: int) -> list[int]:
    sieve = bytearray([1]) * n
    sieve[:2] = b"\x00\x00"
    for i in range(2, int(n ** 0.5) + 1):
        if sieve[i]:
            sieve[i * i::i] = bytearray(len(sieve[i * i::i]))
    return [i for i in range(n) if sieve[i]]


def fib(n: int) -> int:
    a, b = 0, 1
    for _ in range(n):
        a, b = b, a + b
    return a


SALES = [120, 85, 143, 97, 210, 66, 188, 101, 99, 175, 132, 90]
WORDS = "pear fig apple kiwi banana plum mango date grape lime".split()  # one longest word
SENTENCE = "the quick brown fox jumps over the lazy dog while the cat sleeps under the warm sun"
TEMPS = [21.5, 19.0, 23.25, 18.75, 25.5, 22.0, 20.25]

# (task, expected answer): arithmetic past a 0.5B model's head, string and list processing, small data analysis
TASKS: list[tuple[str, object]] = [
    ("What is the sum of the first 1000 prime numbers?", sum(primes(10_000)[:1000])),
    ("What is 2**100 modulo 97?", pow(2, 100, 97)),
    ("What is 123456789 multiplied by 987654321?", 123456789 * 987654321),
    ("What is the 40th Fibonacci number, with F(1) = 1 and F(2) = 1?", fib(40)),
    ("What is 25 factorial?", math.factorial(25)),
    ("How many prime numbers are there below 50000?", len(primes(50_000))),
    ("What is the sum of the digits of 2**300?", sum(map(int, str(2 ** 300)))),
    ("What is the least common multiple of all the integers from 1 to 25?", math.lcm(*range(1, 26))),
    ("What is the sum of the squares of the integers from 1 to 2000?", sum(i * i for i in range(1, 2001))),
    ("How many days are there from 2023-03-17 to 2025-11-02?",
     (datetime.date(2025, 11, 2) - datetime.date(2023, 3, 17)).days),
    (f"How many times does the letter 'e' appear in this sentence: \"{SENTENCE}\"?", SENTENCE.count("e")),
    (f"Reverse the order of the words in \"{SENTENCE}\" and give the resulting sentence.",
     " ".join(reversed(SENTENCE.split()))),
    (f"Sort these words alphabetically and join them with commas, no spaces: {' '.join(WORDS)}",
     ",".join(sorted(WORDS))),
    (f"Which word is the longest in: {' '.join(WORDS)}? Answer with the word.",
     max(WORDS, key=len)),
    (f"Monthly sales were {SALES}. What is the total of the months whose sales were above 100?",
     sum(x for x in SALES if x > 100)),
    (f"Monthly sales were {SALES}. What is the median?", statistics.median(SALES)),
    (f"Daily temperatures were {TEMPS}. What is the mean, rounded to 3 decimal places?",
     round(statistics.mean(TEMPS), 3)),
    (f"Monthly sales were {SALES}. In which month number (1 = the first) was the difference from the previous "
     "month the largest increase?", max(range(1, len(SALES)), key=lambda i: SALES[i] - SALES[i - 1]) + 1),
    ("How many integers between 1 and 100000 are divisible by 7 but not by 11?",
     sum(1 for i in range(1, 100_001) if i % 7 == 0 and i % 11)),
    ("What is the hexadecimal representation of 3735928559, in lowercase without the 0x prefix?",
     format(3735928559, "x")),
]
assert len(TASKS) == 20


def passes(answer: str | None, expected) -> bool:
    """The expected value, exactly: a number as a whole number token (commas dropped), a string as written."""
    if not answer:
        return False
    if isinstance(expected, str):
        return expected in answer
    text = re.sub(r"(?<=\d),(?=\d{3})", "", answer)
    want = format(expected, "f").rstrip("0").rstrip(".") if isinstance(expected, float) else str(expected)
    return re.search(rf"(?<![\d.]){re.escape(want)}(?![\d]|\.\d)", text) is not None


def run_agents(llm, max_turns: int, max_tokens: int) -> list[tuple[str | None, int]]:
    """Every task through its own Agent (its own sandbox session), all at once; (answer, tool calls) each."""
    from zenlm.agent import Agent, python_tool

    out: list = [None] * len(TASKS)

    def one(i: int) -> None:
        with Agent(llm, tools=[python_tool(timeout=20)], max_turns=max_turns, max_tokens=max_tokens) as agent:
            result = agent.run(TASKS[i][0])
        out[i] = (result.answer, result.tool_calls)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(TASKS))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def run_alone(llm, max_tokens: int) -> list[str]:
    """Every task as one greedy chat answer, no tools, generated together."""
    import asyncio

    from zenlm.engine.sampling import SamplingParams

    async def all_answers():
        params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
        jobs = [llm.complete_ids(llm.chat_ids([{"role": "user", "content": q}]), params) for q, _ in TASKS]
        return [c.text for c in await asyncio.gather(*jobs)]

    return asyncio.run(all_answers())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--max-turns", type=int, default=6)
    ap.add_argument("--max-tokens", type=int, default=1536, help="generated tokens per agent run")
    ap.add_argument("--alone-tokens", type=int, default=512, help="generated tokens per lone answer")
    args = ap.parse_args()
    from zenlm.engine.engine import EngineConfig
    from zenlm.engine.llm import AsyncLLM

    llm = AsyncLLM(args.model, dtype=args.dtype, progress=False, engine=EngineConfig(max_num_seqs=len(TASKS)))
    try:
        t0 = time.perf_counter()
        agent = run_agents(llm, args.max_turns, args.max_tokens)
        t1 = time.perf_counter()
        alone = run_alone(llm, args.alone_tokens)
        t2 = time.perf_counter()
    finally:
        llm.close()
    print("| # | task | expected | agent | tool calls | model alone |\n|---|---|---|---|---|---|")
    agent_ok = alone_ok = 0
    for n, ((question, expected), (answer, calls), lone) in enumerate(zip(TASKS, agent, alone), start=1):
        a, b = passes(answer, expected), passes(lone, expected)
        agent_ok, alone_ok = agent_ok + a, alone_ok + b
        short = question if len(question) <= 70 else question[:67] + "..."
        print(f"| {n} | {short.replace('|', '/')} | {expected} | {'pass' if a else 'fail'} | {calls} | "
              f"{'pass' if b else 'fail'} |")
    print(f"\nagent: {agent_ok}/{len(TASKS)} ({100 * agent_ok / len(TASKS):.0f}%), {t1 - t0:.0f} s; "
          f"model alone: {alone_ok}/{len(TASKS)} ({100 * alone_ok / len(TASKS):.0f}%), {t2 - t1:.0f} s "
          f"({args.model}, --dtype {args.dtype})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
