"""Single-stream greedy decode speed with and without n-gram speculative decoding, side by side in one run.

    nice -n 10 python benchmarks/speculative.py [--model default] [--dtype auto] [--spec-tokens 5]

Two workloads on the model's chat template: "edit": a ~300-line Python file and a request to change one
function and return the whole file (the answer copies the prompt, so drafts hit; no repetition penalty);
"prose": a story under the model's default repetition penalty, where prompt lookup finds little to copy
(drafts fail; the adaptive speculator must cost no more than 5%).
Each workload runs plain and speculative alternately, --rounds times (so a shared machine's changing load
hits both alike); a mode's rate is all its tokens after the first over the time they took. Also checks
that both give the same greedy tokens.
Prints a markdown table: tok/s, speedup, draft acceptance.
"""

from __future__ import annotations

import argparse
import sys
import time

from zenlm.engine.llm import LLM
from zenlm.engine.sampling import SamplingParams
from zenlm.engine.speculative.speculator import SpecStats

FIELDS = ["sku", "name", "price", "quantity", "location", "supplier", "weight", "category"]
VERBS = ["load", "save", "find", "count", "update", "remove", "check", "format", "merge", "split"]


def python_file(lines: int = 300) -> str:
    """A deterministic, plausible Python module of about `lines` lines."""
    out = ['"""Inventory helpers: records, lookups and reports for a small warehouse."""', "",
           "from __future__ import annotations", "", "import json", "from dataclasses import dataclass", "", "",
           "@dataclass", "class Item:"]
    out += [f"    {f}: str" for f in FIELDS] + ["", ""]
    i = 0
    while len(out) < lines:
        verb, field = VERBS[i % len(VERBS)], FIELDS[(i * 3) % len(FIELDS)]
        name = f"{verb}_by_{field}"
        out += [f"def {name}(items: list[Item], {field}: str, limit: int = {10 + i}) -> list[Item]:",
                f'    """{verb.capitalize()} the items whose {field} matches, at most `limit` of them."""',
                "    result = []",
                "    for item in items:",
                f"        if item.{field} == {field}:",
                "            result.append(item)",
                "        if len(result) >= limit:",
                "            break",
                f"    print(json.dumps({{'op': '{name}', 'count': len(result)}}))",
                "    return result", "", ""]
        i += 1
    return "\n".join(out) + "\n"


def workloads(source: str) -> dict[str, list[dict]]:
    edit = ("Here is a Python file:\n\n```python\n" + source + "```\n\nChange the function `update_by_supplier` "
            "so that it raises ValueError when limit is negative. Return the whole file, with no explanation.")
    prose = ("Write a long, original story about a lighthouse keeper who finds a message in a bottle. "
             "Use vivid descriptions and dialogue.")
    return {"edit": [{"role": "user", "content": edit}], "prose": [{"role": "user", "content": prose}]}


def decode(llm: LLM, ids: list[int], tokens: int, speculative: bool, penalty: float | None
           ) -> tuple[int, float, list[int]]:
    """Greedy decode: tokens after the first, the seconds they took, and all the tokens."""
    eng = llm.engine
    seq = eng.add(ids, SamplingParams(max_tokens=tokens, temperature=0, ignore_eos=True, speculative=speculative,
                                      repetition_penalty=penalty))
    while not seq.output_ids:
        eng.step()
    start, t = len(seq.output_ids), time.perf_counter()
    while not seq.finished:
        eng.step()
    n, dt = len(seq.output_ids) - start, time.perf_counter() - t
    print(f"  {'speculative' if speculative else 'plain'}: {n} tokens, {n / dt:.2f} tok/s", file=sys.stderr, flush=True)
    return n, dt, seq.output_ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--spec-tokens", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=4)
    ap.add_argument("--edit-tokens", type=int, default=128)
    ap.add_argument("--prose-tokens", type=int, default=64)
    a = ap.parse_args()
    llm = LLM(a.model, dtype=a.dtype, progress=False, speculative="ngram", num_speculative_tokens=a.spec_tokens)
    spec = llm.engine.speculator
    source = python_file()
    rows = []
    for name, messages in workloads(source).items():
        ids, n = llm.chat_ids(messages), a.edit_tokens if name == "edit" else a.prose_tokens
        penalty = 1.0 if name == "edit" else None  # copying is not penalised; prose keeps the model's default
        print(f"{name}: {len(ids)} prompt tokens", file=sys.stderr, flush=True)
        decode(llm, ids, 4, False, penalty)  # warm-up, and the prompt enters the prefix cache for both runs alike
        plain, fast = [0, 0.0], [0, 0.0]  # tokens, seconds
        before = SpecStats(spec.stats.proposed, spec.stats.accepted, spec.stats.rows)
        for _ in range(a.rounds):  # alternate, so a change in the machine's load hits both alike
            n_plain, dt, base = decode(llm, ids, n, False, penalty)
            plain = [plain[0] + n_plain, plain[1] + dt]
            n_fast, dt, out = decode(llm, ids, n, True, penalty)
            fast = [fast[0] + n_fast, fast[1] + dt]
            assert out == base, f"{name}: speculative greedy output differs from plain"
        stats = SpecStats(spec.stats.proposed - before.proposed, spec.stats.accepted - before.accepted,
                          spec.stats.rows - before.rows)
        plain, fast = plain[0] / plain[1], fast[0] / fast[1]
        rows.append((name, len(ids), n, plain, fast, stats))
    print(f"\nmodel {llm.path.name}, dtype {a.dtype}, n-gram speculation k={a.spec_tokens}, "
          f"edit prompt: a {source.count(chr(10))}-line file\n")
    print("| workload | prompt tokens | generated | plain tok/s | n-gram tok/s | speedup | drafts proposed "
          "| accepted | acceptance |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, p, n, plain, fast, st in rows:
        print(f"| {name} | {p} | {n} | {plain:.1f} | {fast:.1f} | {fast / plain:.2f}x | {st.proposed} "
              f"| {st.accepted} | {st.acceptance:.0%} |")


if __name__ == "__main__":
    main()
