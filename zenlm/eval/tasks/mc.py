"""mc: multiple choice by log-likelihood on the user's own MMLU / C-Eval / CMMLU-style files.

The prompt is lm-eval-harness's MMLU one: "The following are multiple choice questions (with answers)
about {subject}.\\n\\n", the few-shot examples each answered ("...\\nAnswer: B\\n\\n"), then
"{question}\\nA. ...\\nB. ...\\nAnswer:"; the continuations are " A", " B", ... (lm-eval's target
delimiter and choices). acc: the choice with the highest log-likelihood is the gold one; acc_norm: the
same after dividing each log-likelihood by its choice's length in characters (the continuation without
its delimiter), as lm-eval computes it, so with letter choices it equals acc. The prompt is raw text in
either --mode (log-likelihoods are taken without a chat template, as lm-eval does by default).

Few-shot (--num-shots K, default 0): the first K questions of the same subject in --dev-data (a file or
a directory, e.g. MMLU's data/dev), else the first K of that subject in the data itself, which are
then not scored.
"""

from __future__ import annotations

import math
from pathlib import Path

from zenlm.eval.task import Mode, Sample
from zenlm.eval.tasks.mc_data import LETTERS, Question, read

DELIMITER = " "  # lm-eval's target_delimiter: between "Answer:" and the choice


def question_text(q: Question) -> str:
    return q.question.strip() + "".join(f"\n{letter}. {c}" for letter, c in zip(LETTERS, q.choices)) + "\nAnswer:"


def prompt(q: Question, shots: list[Question]) -> str:
    head = f"The following are multiple choice questions (with answers) about {q.subject.replace('_', ' ')}.\n\n"
    return head + "".join(f"{question_text(s)}{DELIMITER}{LETTERS[s.answer]}\n\n" for s in shots) + question_text(q)


class MC:
    name = "mc"
    metric = "acc"
    metrics = ("acc", "acc_norm")
    kind = "loglikelihood"

    def __init__(self, data: str | Path | None = None, dev_data: str | Path | None = None):
        if data is None:
            raise ValueError("mc needs --data PATH: a CSV or JSONL file of questions, or a directory of them")
        self.questions = read(Path(data))  # bad files fail here, before any model is asked
        self.dev = read(Path(dev_data)) if dev_data is not None else None

    def samples(self, mode: Mode, num_shots: int | None = None) -> list[Sample]:
        k = num_shots or 0
        pool: dict[str, list[Question]] = {}
        for q in self.questions if self.dev is None else self.dev:
            pool.setdefault(q.subject, []).append(q)
        shots = {subject: qs[:k] for subject, qs in pool.items()}
        skipped = set() if self.dev is not None else {id(q) for qs in shots.values() for q in qs}
        out = []
        for q in self.questions:
            if id(q) in skipped:
                continue
            if len(shots.get(q.subject, [])) < k:
                source = "--dev-data" if self.dev is not None else "the data"
                raise ValueError(f"{source} has {len(shots.get(q.subject, []))} questions of subject {q.subject!r}, "
                                 f"fewer than --num-shots {k}")
            out.append(Sample(id=f"mc/{q.file}/{q.index}", prompt=prompt(q, shots.get(q.subject, [])),
                              reference=q.answer,
                              continuations=[DELIMITER + letter for letter in LETTERS[:len(q.choices)]]))
        return out

    def score(self, sample: Sample, output: str | list[float]) -> tuple[str, dict[str, bool]]:
        conts = sample.continuations or []
        if not isinstance(output, list) or len(output) != len(conts) or not conts:
            return "", {"acc": False, "acc_norm": False}
        lls = [x if isinstance(x, (int, float)) and not math.isnan(x) else -math.inf for x in output]
        lengths = [max(len(c.removeprefix(DELIMITER)), 1) for c in conts]
        pred = max(range(len(lls)), key=lls.__getitem__)  # the first of equal ones, as numpy's argmax
        pred_norm = max(range(len(lls)), key=lambda i: lls[i] / lengths[i])
        return LETTERS[pred], {"acc": pred == sample.reference, "acc_norm": pred_norm == sample.reference}
