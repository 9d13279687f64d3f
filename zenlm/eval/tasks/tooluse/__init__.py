"""tooluse: 200 generated function-calling cases, scored by exact function name and parsed arguments (BFCL's AST way).

Four categories, as BFCL names them: simple (one tool offered, one call), multiple (two to four tools,
the right one called), parallel (two or three calls in one turn, one function several times or
several functions) and irrelevance (no offered tool fits: no call is right). The cases are drawn
from functions.py's catalogue with fixed seeds, so the suite is the same on every run and machine;
they are listed round-robin across categories, so --limit 8 asks two of each. Chat mode only: the
tools reach the model through its chat template (or the server's), and a raw completion prompt has
no place for them. check.py reads and scores the answers; report() writes the per-category accuracy.
"""

from __future__ import annotations

import json
import logging
import random
from itertools import zip_longest
from pathlib import Path

from zenlm.eval.task import Mode, Sample
from zenlm.eval.tasks.tooluse.check import answer_json, check, read_calls
from zenlm.eval.tasks.tooluse.functions import FUNCTIONS, OFF_TOPIC, Function

log = logging.getLogger("zenlm.eval")
COUNTS = {"simple": 60, "multiple": 50, "parallel": 50, "irrelevance": 40}
SEED = 20250  # each category draws from Random(SEED + its position in COUNTS)
Case = tuple[str, list[Function], list[dict]]  # (query, the functions offered, the expected calls)


def _simple(rng: random.Random, i: int) -> Case:
    f = FUNCTIONS[i % len(FUNCTIONS)]
    query, stated, unstated = f.make(rng)
    return query, [f], [f.expect(stated, unstated)]


def _multiple(rng: random.Random, i: int) -> Case:
    f = FUNCTIONS[(i + 5) % len(FUNCTIONS)]
    query, stated, unstated = f.make(rng)
    offered = [f, *rng.sample([g for g in FUNCTIONS if g is not f], rng.randint(1, 3))]
    rng.shuffle(offered)
    return query, offered, [f.expect(stated, unstated)]


def _parallel(rng: random.Random, i: int) -> Case:
    if i % 2 == 0:  # one function, several times
        many = [f for f in FUNCTIONS if f.many]
        f = many[i // 2 % len(many)]
        query, pairs = f.many(rng, rng.choice([2, 3]))
        offered, expected = [f], [f.expect(stated, unstated) for stated, unstated in pairs]
    else:  # several functions, one request each, asked as a numbered list
        offered = rng.sample(FUNCTIONS, rng.choice([2, 3]))
        made = [f.make(rng) for f in offered]
        query = "Please do all of these for me:\n" + "\n".join(f"{n}. {q}" for n, (q, _, _) in enumerate(made, 1))
        expected = [f.expect(stated, unstated) for f, (_, stated, unstated) in zip(offered, made)]
    if rng.random() < 0.5:
        offered = offered + [rng.choice([g for g in FUNCTIONS if g not in offered])]
    rng.shuffle(offered)
    return query, offered, expected


def _irrelevance(rng: random.Random, i: int) -> Case:
    if i % 2 == 0:  # a request one function of the catalogue serves, offered only the others
        f = FUNCTIONS[i // 2 % len(FUNCTIONS)]
        query = f.make(rng)[0]
        return query, rng.sample([g for g in FUNCTIONS if g is not f], rng.randint(1, 3)), []
    template, values = OFF_TOPIC[i // 2 % len(OFF_TOPIC)]
    return template.format(rng.choice(values)), rng.sample(FUNCTIONS, rng.randint(1, 3)), []


MAKERS = {"simple": _simple, "multiple": _multiple, "parallel": _parallel, "irrelevance": _irrelevance}


def cases() -> list[tuple[str, str, Case]]:
    """(id, category, case) for the whole suite, round-robin across the categories."""
    columns = []
    for k, (category, n) in enumerate(COUNTS.items()):
        rng = random.Random(SEED + k)
        columns.append([(f"tooluse/{category}/{i}", category, MAKERS[category](rng, i)) for i in range(n)])
    return [c for row in zip_longest(*columns) for c in row if c is not None]


class ToolUse:
    name = "tooluse"
    metric = "accuracy"

    def samples(self, mode: Mode, num_shots: int | None = None) -> list[Sample]:
        if mode != "chat":
            raise ValueError(f"tooluse needs chat mode (tools reach the model through its chat template), got {mode!r}")
        if num_shots:
            raise ValueError(f"tooluse is 0-shot, got --num-shots {num_shots}")
        return [Sample(sid, [{"role": "user", "content": query}], expected, tools=[f.tool() for f in offered],
                       meta={"category": category})
                for sid, category, (query, offered, expected) in cases()]

    def score(self, sample: Sample, output: str) -> tuple[str, bool]:
        try:
            schemas = {t["function"]["name"]: t["function"]["parameters"] for t in sample.tools or []}
            calls, unreadable = read_calls(output, set(schemas))
            return answer_json(calls, unreadable), not unreadable and check(calls, sample.reference, schemas)
        except Exception:  # never raise on a model's output
            log.exception("tooluse: could not score %s", sample.id)
            return "", False

    def report(self, rows: list[dict], output_dir: str | Path) -> list[Path]:
        """OUTPUT/tooluse-categories.json: n, correct and accuracy per category."""
        tally = {c: [0, 0] for c in COUNTS}
        for r in rows:
            n_k = tally[r["id"].split("/")[1]]
            n_k[0], n_k[1] = n_k[0] + 1, n_k[1] + bool(r["correct"])
        table = {c: {"n": n, "correct": k, "accuracy": k / n} for c, (n, k) in tally.items() if n}
        path = Path(output_dir) / "tooluse-categories.json"
        path.write_text(json.dumps(table, indent=2) + "\n")
        log.info("tooluse: %s", ", ".join(f"{c} {100 * t['accuracy']:.1f}%" for c, t in table.items()))
        return [path]
