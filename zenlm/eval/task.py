"""The contract every benchmark keeps: samples to ask, and a score for each answer.

A task turns its data into Samples (a chat conversation for instruct models, or raw text to continue
for base models) and scores one model output at a time: (the answer it extracted, whether it is
correct). A generation task (kind "generate") is scored on the text the model wrote; a log-likelihood
task (kind "loglikelihood") on the log-probability of each of the sample's continuations after its
prompt. A task with several metrics (mc: acc and acc_norm) names them in `metrics` and scores each
sample with a {metric: correct} dict; the first metric is its headline. How the samples are answered
(the in-process engine, an OpenAI-compatible URL) is the backends' business, and the bookkeeping
(results.json, samples.jsonl, resume) the runner's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

Mode = Literal["chat", "completion", "tir"]  # tir: chat with the TIR loop (gsm8k; eval/tir.py)


@dataclass(slots=True)
class Sample:
    id: str  # stable across runs: what resume keys on ("HumanEval/0", "gsm8k/17")
    prompt: str | list[dict]  # raw text to continue (completion mode) or chat messages (chat mode)
    reference: Any  # what score() needs: the tests to run, the gold answer
    stop: list[str] = field(default_factory=list)  # stop strings for generation
    tools: list[dict] | None = None  # OpenAI-style tool definitions offered with a chat prompt (tooluse)
    continuations: list[str] | None = None  # loglikelihood tasks: each choice's text, scored after `prompt`
    meta: dict = field(default_factory=dict)  # what a task's report needs (needle: context length, depth)


Kind = Literal["generate", "loglikelihood"]


class Task(Protocol):
    name: str  # "humaneval", "mbpp", "gsm8k", ...
    metric: str  # the headline metric: "pass@1" | "accuracy" | "acc"
    metrics: tuple[str, ...]  # every metric score() reports, headline first (optional: (metric,))
    kind: Kind  # optional: "generate"

    def samples(self, mode: Mode, num_shots: int | None = None) -> list[Sample]:
        """Every sample of the task, in a fixed order; num_shots None: the task's own default."""
        ...

    def score(self, sample: Sample, output: str | list[float]) -> tuple[str, bool | dict[str, bool]]:
        """(the extracted answer, whether it is correct) for one model output (text, or for a loglikelihood
        task each continuation's log-probability); with several metrics, {metric: correct}. Never raises
        on bad output."""
        ...

    # Optional: report(rows, output_dir) -> list[Path], called after a run with every row of the task,
    # for what a table cannot show (needle's heat map); returns the files it wrote.


def metrics_of(task: Task) -> tuple[str, ...]:
    return tuple(getattr(task, "metrics", None) or (task.metric,))


def kind_of(task: Task) -> Kind:
    return getattr(task, "kind", "generate")
