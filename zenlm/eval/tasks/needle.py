"""Needle in a haystack: one fact hidden in synthetic filler, asked for after it, over a grid of lengths x depths.

The grid: context lengths doubling from 1024 tokens up to min(the model's context, --max-context), plus
that bound itself when it is not a power of two, times needle depths in percent (0: the document's
first sentence, 100: its last). One sample per cell, id "needle/LENGTH/DEPTH". The needle is "The
special magic number for KEY is NNNNNNN." (a city, a 7-digit number, both drawn from the cell's id,
so every run asks the same). The prompt text (instructions, document, question) is sized with the
evaluated model's token counter to LENGTH minus 128 tokens, room for a chat template and the answer.
Chat mode asks the question after the document; completion mode ends with "Answer: The special
magic number for KEY is" so the continuation is the number (stop: a newline).

Scoring, exact retrieval: correct when the needle's number appears in the answer as a whole number
(thousands commas ignored: "4,829,175" counts; "48291750" does not). The filler holds no digits, so
the number can only come from the needle. report() writes needle-grid.json and needle-heatmap.png.
"""

from __future__ import annotations

import json
import logging
import random
import re
from collections.abc import Callable
from pathlib import Path

from zenlm.eval.haystack import paragraph_breaks, sentences
from zenlm.eval.task import Mode, Sample
from zenlm.eval.tokens import TokenCounter, default_counter

log = logging.getLogger("zenlm.eval")

MIN_LENGTH = 1024
DEFAULT_MAX_CONTEXT = 8192  # a CPU evaluates 1K, 2K, 4K and 8K in minutes; raise it on a GPU
DEFAULT_DEPTHS = (0, 25, 50, 75, 100)
TEMPLATE_ROOM = 64  # tokens a chat template may add around the prompt text
ANSWER_ROOM = 64  # tokens left for the answer
KEYS = ["Lisbon", "Nairobi", "Oslo", "Lima", "Hanoi", "Dakar", "Quito", "Tbilisi", "Montreal", "Adelaide",
        "Krakow", "Bergen", "Cusco", "Valparaiso", "Marrakesh", "Osaka", "Seville", "Tallinn", "Windhoek",
        "Porto", "Chennai", "Bogota", "Reykjavik", "Zanzibar", "Salzburg", "Havana", "Ljubljana", "Kyoto",
        "Tromso", "Cordoba"]
INTRO = ("A special magic number is hidden somewhere in the text below. Read it carefully and remember the "
         "number: you will be asked for it afterwards.")
NUMBER = re.compile(r"(?<![\d,])\d{1,3}(?:,\d{3})+(?![\d,]*\d)|\d+")


def lengths(model_context: int | None, max_context: int = DEFAULT_MAX_CONTEXT) -> list[int]:
    """1024, 2048, 4096, ... up to min(model_context, max_context), and that bound when it is not among them."""
    if max_context < MIN_LENGTH:
        raise ValueError(f"--max-context must be at least {MIN_LENGTH} tokens, got {max_context}")
    if model_context is not None and model_context < MIN_LENGTH:
        raise ValueError(f"the model's context is {model_context} tokens; the needle task needs at least {MIN_LENGTH}")
    top = max_context if model_context is None else min(model_context, max_context)
    out = [MIN_LENGTH]
    while out[-1] * 2 <= top:
        out.append(out[-1] * 2)
    return out + ([top] if out[-1] != top else [])


def parse_depths(spec: str) -> tuple[int, ...]:
    """'0,25,50' -> (0, 25, 50): whole percentages from 0 to 100, sorted, each once."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise ValueError("--depths needs at least one depth, e.g. 0,50,100")
    try:
        depths = [int(p) for p in parts]
    except ValueError:
        raise ValueError(f"--depths must be whole percentages from 0 to 100, got {spec!r}") from None
    return check_depths(depths)


def check_depths(depths) -> tuple[int, ...]:
    depths = tuple(depths)
    if not depths:
        raise ValueError("--depths needs at least one depth, e.g. 0,50,100")
    bad = [d for d in depths if not isinstance(d, int) or not 0 <= d <= 100]
    if bad:
        raise ValueError(f"--depths must be whole percentages from 0 to 100, got {bad[0]!r}")
    return tuple(sorted(set(depths)))


def needle_of(length: int, depth: int) -> tuple[str, str]:
    """(key, 7-digit number) of a cell, drawn from its id: the same on every run."""
    rng = random.Random(f"needle/{length}/{depth}")
    return rng.choice(KEYS), str(rng.randint(1_000_000, 9_999_999))


def retrieved(output: str, number: str) -> tuple[str, bool]:
    """(the number the answer gave, whether it is the needle's): the needle's number when it appears
    as a whole number (thousands commas removed), else the first number in the answer, else ''."""
    found = [n.replace(",", "") for n in NUMBER.findall(output)]
    if number in found:
        return number, True
    return (found[0] if found else ""), False


def largest_fitting(fits: Callable[[int], bool], guess: int, limit: int) -> int:
    """The largest n in [0, limit] with fits(n), for fits monotone (true, then false) and fits(0) true:
    galloping from guess, then bisection, so a good guess costs two or three calls."""
    n = max(0, min(guess, limit))
    step = 1
    if fits(n):
        lo = n
        while lo + step <= limit and fits(lo + step):
            lo += step
            step *= 2
        hi = min(lo + step, limit + 1)  # hi does not fit (or is past the limit)
    else:
        hi = n
        while hi - step > 0 and not fits(hi - step):
            hi -= step
            step *= 2
        lo = max(hi - step, 0)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo


class Needle:
    name = "needle"
    metric = "accuracy"

    def __init__(self, context_length: int | None = None, max_context: int = DEFAULT_MAX_CONTEXT,
                 depths=DEFAULT_DEPTHS, counter: TokenCounter | None = None):
        """context_length: the model's (None: unknown, the grid goes up to max_context); counter: counts
        tokens as the model does (default: the default model's tokenizer, else an approximation)."""
        self.lengths = lengths(context_length, max_context)
        if context_length is None:
            log.info("needle: the model's context is not known; lengths go up to --max-context %d", max_context)
        self.depths = check_depths(depths)
        self.context_length, self.max_context = context_length, max_context
        self._counter = counter
        self._pieces: list[int] = []  # token count of each filler sentence with the space before it

    @property
    def counter(self) -> TokenCounter:
        if self._counter is None:
            self._counter = default_counter()
        return self._counter

    # ---- prompts -----------------------------------------------------------------------------------
    def samples(self, mode: Mode, num_shots: int | None = None) -> list[Sample]:
        if mode not in ("chat", "completion"):
            raise ValueError(f"unknown mode {mode!r}; choose chat or completion")
        if num_shots not in (None, 0):
            raise ValueError(f"needle is 0-shot; got num_shots={num_shots}")
        out = []
        for length in self.lengths:
            for depth in self.depths:
                key, number = needle_of(length, depth)
                text, tokens = self.prompt_text(length - TEMPLATE_ROOM - ANSWER_ROOM, depth, key, number, mode)
                prompt = [{"role": "user", "content": text}] if mode == "chat" else text
                meta = {"length": length, "depth": depth, "key": key, "prompt_tokens": tokens}
                out.append(Sample(f"needle/{length}/{depth}", prompt, number,
                                  stop=[] if mode == "chat" else ["\n"], meta=meta))
        return out

    def prompt_text(self, target: int, depth: int, key: str, number: str, mode: Mode) -> tuple[str, int]:
        """The longest prompt text of `target` tokens or fewer (counted by the counter) with the needle at
        `depth` percent of the filler, and its token count."""
        count = self.counter.count
        known: dict[int, int] = {}

        def tokens(n: int) -> int:
            if n not in known:
                known[n] = count(self.compose(n, depth, key, number, mode))
            return known[n]

        self._grow(target)
        base = tokens(0)
        if base > target:
            raise ValueError(f"the needle's prompt alone is {base} tokens, over its {target}-token budget")
        guess, total = 0, base
        while guess < len(self._pieces) and total + self._pieces[guess] <= target:
            total += self._pieces[guess]
            guess += 1
        n = largest_fitting(lambda k: tokens(k) <= target, guess, len(self._pieces))
        assert n < len(self._pieces), "the filler ran out before the prompt reached its length"
        return self.compose(n, depth, key, number, mode), tokens(n)

    def _grow(self, target: int) -> None:
        """Count filler sentences until they alone are longer than `target` tokens."""
        n = max(64, 2 * len(self._pieces))
        while sum(self._pieces) <= target:
            filler = sentences(n)
            self._pieces += [self.counter.count(" " + s) for s in filler[len(self._pieces):]]
            n *= 2

    def compose(self, n: int, depth: int, key: str, number: str, mode: Mode) -> str:
        """Instructions, the first n filler sentences with the needle at `depth` percent of their tokens,
        then the question (chat) or the start of the answer (completion)."""
        document = haystack(n, depth, f"The special magic number for {key} is {number}.", self._pieces)
        question = f"What is the special magic number for {key} mentioned in the text above?"
        if mode == "chat":
            return f"{INTRO}\n\n{document}\n\n{question} Answer with the number only."
        return f"{INTRO}\n\n{document}\n\nQuestion: {question}\nAnswer: The special magic number for {key} is"

    # ---- scoring and report ------------------------------------------------------------------------
    def score(self, sample: Sample, output: str) -> tuple[str, bool]:
        return retrieved(output if isinstance(output, str) else "", str(sample.reference))

    def report(self, rows: list[dict], output_dir: Path) -> list[Path]:
        """needle-grid.json (accuracy per depth x length) and needle-heatmap.png (without matplotlib:
        the JSON only, and a warning)."""
        from zenlm.eval.heatmap import draw_heatmap

        grid = self.grid(rows)
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = [out / "needle-grid.json"]
        files[0].write_text(json.dumps(grid, indent=2) + "\n")
        png = out / "needle-heatmap.png"
        try:
            draw_heatmap(grid["accuracy"], [length_label(n) for n in grid["lengths"]],
                         [f"{d}%" for d in grid["depths"]], f"Needle in a haystack\n{Path(grid['model']).name}",
                         "context length (tokens)", "needle depth", png)
        except ImportError:
            log.warning("needle: no heat map (matplotlib is missing: pip install matplotlib); wrote %s", files[0])
        else:
            files.append(png)
        return files

    def grid(self, rows: list[dict]) -> dict:
        """Accuracy and sample count per (depth, length) cell of the rows; None where a cell has no row."""
        cells: dict[tuple[int, int], list[bool]] = {}
        for r in rows:
            meta = r.get("meta") or {}
            length, depth = meta.get("length"), meta.get("depth")
            if length is None or depth is None:  # a row written without meta: its id says the cell
                _, length, depth = r["id"].split("/")
            cells.setdefault((int(depth), int(length)), []).append(bool(r["correct"]))
        ls = sorted({n for _, n in cells})
        ds = sorted({d for d, _ in cells})
        acc = [[sum(cells[d, n]) / len(cells[d, n]) if (d, n) in cells else None for n in ls] for d in ds]
        counts = [[len(cells.get((d, n), [])) for n in ls] for d in ds]
        return {"model": rows[0].get("model", "") if rows else "", "token_counter": self.counter.name,
                "model_context": self.context_length, "max_context": self.max_context,
                "lengths": ls, "depths": ds, "accuracy": acc, "n": counts}


def length_label(n: int) -> str:
    return f"{n // 1024}K" if n % 1024 == 0 else str(n)


def haystack(n: int, depth: int, needle: str, pieces: list[int]) -> str:
    """The first n filler sentences in paragraphs, the needle inserted at the sentence boundary nearest
    `depth` percent of their tokens (pieces: each sentence's token count)."""
    filler, breaks = sentences(n), paragraph_breaks(n)
    before = [0]
    for k in pieces[:n]:
        before.append(before[-1] + k)
    goal = depth / 100 * before[n]
    at = min(range(n + 1), key=lambda i: abs(before[i] - goal))
    parts = list(filler[:at]) + [needle] + list(filler[at:])
    # the needle takes the place (paragraph start or not) of the sentence it goes before; that one follows it
    starts = breaks[:at] + ([breaks[at], False] + breaks[at + 1:] if at < n else [False])
    text = parts[0]
    for part, new_paragraph in zip(parts[1:], starts[1:]):
        text += ("\n\n" if new_paragraph else " ") + part
    return text
