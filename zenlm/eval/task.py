"""The contract every benchmark keeps: samples to ask, and a score for each answer.

A task turns its data into Samples (a chat conversation for instruct models, or raw text to continue
for base models) and scores one model output at a time: (the answer it extracted, whether it is
correct). How the samples are answered (the in-process engine, an OpenAI-compatible URL) is the
backends' business, and the bookkeeping (results.json, samples.jsonl, resume) the runner's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Mode = Literal["chat", "completion"]


@dataclass(slots=True)
class Sample:
    id: str  # stable across runs: what resume keys on ("HumanEval/0", "gsm8k/17")
    prompt: str | list[dict]  # raw text to continue (completion mode) or chat messages (chat mode)
    reference: Any  # what score() needs: the tests to run, the gold answer
    stop: list[str] = field(default_factory=list)  # stop strings for generation


class Task(Protocol):
    name: str  # "humaneval", "mbpp", "gsm8k", ...
    metric: str  # "pass@1" | "accuracy"

    def samples(self, mode: Mode, num_shots: int | None = None) -> list[Sample]:
        """Every sample of the task, in a fixed order; num_shots None: the task's own default."""
        ...

    def score(self, sample: Sample, output: str) -> tuple[str, bool]:
        """(the extracted answer, whether it is correct) for one model output; never raises on bad output."""
        ...
