"""GSM8K: 1,319 grade-school word problems (OpenAI, MIT; the data ships in zenlm/eval/data/gsm8k/).

Chat mode (instruct models): 0-shot chain of thought, Qwen's instruct prompt asking for the answer in
\\boxed{}. Completion mode (base models): Qwen's 4-shot "Question: ... Answer: ..." format, the shots
taken from the head of the train split. TIR mode (tool-integrated reasoning, zenlm/eval/tir.py): the chat
prompt with Qwen2.5-Math's TIR instruction in place of the chain-of-thought one (in the user turn, as in
chat mode, so the two differ only in it); the model's python blocks run in the sandbox as it writes them.
The answer is the last number of the output (the last \\boxed{} one when there is one), compared exactly,
as a number, with the gold after "####".
"""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from functools import cache
from pathlib import Path

from zenlm.agent.tir import TIR_SYSTEM
from zenlm.eval.task import Mode, Sample

DATA = Path(__file__).resolve().parent.parent / "data" / "gsm8k"
INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."
# A number: optional sign (not a hyphen inside "3-4"), thousands groups or plain digits, optional decimals.
NUMBER = re.compile(r"(?<![\w.])[-−]?(?:\$\s?)?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|(?<![\w.])[-−]?\.\d+")
CALCULATOR = re.compile(r"<<[^<>]*>>")  # the train solutions' calculator annotations: <<2*3=6>>


def normalize(number: str) -> str | None:
    """'1,000' / '$18.00' / '−5' / '18.' -> '1000' / '18' / '-5' / '18'; None when it is not a number."""
    text = number.strip().replace(",", "").replace("$", "").replace("−", "-").replace(" ", "").rstrip(".")
    try:
        value = Decimal(text)
    except InvalidOperation:
        return None
    if not value.is_finite():
        return None
    value = value.normalize()
    if value == 0:
        return "0"
    return format(value, "f")


def last_boxed(text: str) -> str | None:
    """The contents of the last \\boxed{...} (braces may nest), or None."""
    start = text.rfind("\\boxed")
    while start != -1:
        i = text.find("{", start)
        if i != -1 and text[start + len("\\boxed"):i].strip() == "":
            depth = 0
            for j in range(i, len(text)):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if depth == 0:
                    return text[i + 1:j]
        start = text.rfind("\\boxed", 0, start)
    return None


def extract(text: str) -> str | None:
    """The answer a model gave: the last number inside the last \\boxed{}, else the last number at all."""
    boxed = last_boxed(text)
    for part in ([boxed] if boxed is not None else []) + [text]:
        numbers = NUMBER.findall(part)
        if numbers:
            return normalize(numbers[-1])
    return None


def same(answer: str | None, gold: str) -> bool:
    return answer is not None and normalize(gold) is not None and Decimal(answer) == Decimal(normalize(gold))


@cache
def _read(split: str) -> tuple[tuple[str, str, str], ...]:
    """(question, solution without the final line, gold) per problem of a split."""
    rows = []
    with open(DATA / f"{split}.jsonl", encoding="utf-8") as f:
        for line in f:
            item = json.loads(line)
            solution, _, gold = item["answer"].rpartition("####")
            rows.append((item["question"].strip(), CALCULATOR.sub("", solution).strip(), gold.strip()))
    return tuple(rows)


class GSM8K:
    name = "gsm8k"
    metric = "accuracy"

    def samples(self, mode: Mode, num_shots: int | None = None) -> list[Sample]:
        if mode not in ("chat", "completion", "tir"):
            raise ValueError(f"unknown mode {mode!r}; choose chat, completion or tir")
        if mode == "tir" and num_shots:
            raise ValueError("--mode tir is 0-shot; drop --num-shots")
        k = (4 if mode == "completion" else 0) if num_shots is None else num_shots
        if not 0 <= k <= 64:
            raise ValueError(f"--num-shots must be 0 to 64 for gsm8k, got {k}")
        shots = _read("train")[:k]
        if mode == "tir":
            return [Sample(f"gsm8k/{i}", [{"role": "user", "content": f"{q}\n{TIR_SYSTEM}"}], gold)
                    for i, (q, _, gold) in enumerate(_read("test"))]
        make = self._chat if mode == "chat" else self._completion
        return [Sample(f"gsm8k/{i}", make(q, shots), gold, [] if mode == "chat" else ["Question:", "\n\n\n"])
                for i, (q, _, gold) in enumerate(_read("test"))]

    @staticmethod
    def _chat(question: str, shots) -> list[dict]:
        messages = []
        for q, solution, gold in shots:
            messages += [{"role": "user", "content": f"{q}\n{INSTRUCTION}"},
                         {"role": "assistant", "content": f"{solution}\nThe answer is \\boxed{{{gold}}}."}]
        return messages + [{"role": "user", "content": f"{question}\n{INSTRUCTION}"}]

    @staticmethod
    def _completion(question: str, shots) -> str:
        context = "".join(f"Question: {q}\nAnswer: {sol}\nThe answer is {gold}.\n\n" for q, sol, gold in shots)
        return f"{context}Question: {question}\nAnswer:"

    def score(self, sample: Sample, output: str) -> tuple[str, bool]:
        try:
            answer = extract(output)
        except Exception:  # never raise on a model's output
            answer = None
        return ("" if answer is None else answer), same(answer, str(sample.reference))
