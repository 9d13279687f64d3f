"""The runner: ask a backend every sample of each task, score the answers, keep the books.

Under the output directory, samples.jsonl gets one line per sample as it is scored (task, id, prompt,
raw output, extracted answer, correct, any meta), so an interrupted run resumes where it stopped: ids already
there are not asked again. results.json holds per task the metric, its value, its binomial standard
error, n, model, dtype, prompt format and seconds (and, for a task with several metrics, each one's value
and standard error under "metrics"; the files a task's report wrote under "files"). Scoring (a sandbox,
for code tasks) runs in a thread pool beside generation. It does not load models or talk HTTP itself:
that is backends.py.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from zenlm.eval.backends import Backend
from zenlm.eval.task import Mode, Sample, Task, kind_of, metrics_of

log = logging.getLogger("zenlm.eval")
MODES = ("auto", "chat", "completion", "tir")


def parse_tasks(spec: str) -> list[str]:
    """'gsm8k,humaneval' -> ['gsm8k', 'humaneval']; ValueError naming an unknown task."""
    from zenlm.eval.tasks import TASKS

    names = [n.strip() for n in spec.split(",") if n.strip()]
    if not names:
        raise ValueError(f"no task given; choose from {', '.join(sorted(TASKS))}")
    for n in names:
        if n not in TASKS:
            raise ValueError(f"unknown task {n!r}; choose from {', '.join(sorted(TASKS))}")
    return list(dict.fromkeys(names))


def read_samples(path: Path) -> list[dict]:
    """The rows of a samples.jsonl; a line cut short by a killed run is skipped."""
    rows = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                log.warning("%s: skipping a damaged line", path)
    return rows


def stderr(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n) if n else 0.0


class _Ledger:
    """samples.jsonl opened for appending; one writer at a time, each line flushed as it is written."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        torn = path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n")
        self.f = open(path, "a", encoding="utf-8")
        if torn:  # a killed run left half a line: start ours on a fresh one
            self.f.write("\n")
        self.lock = threading.Lock()

    def write(self, row: dict) -> None:
        with self.lock:
            self.f.write(json.dumps(row, ensure_ascii=False) + "\n")
            self.f.flush()

    def close(self) -> None:
        self.f.close()


def run(task_names: list[str], backend: Backend, output: str | Path, limit: int | None = None,
        num_shots: int | None = None, max_tokens: int = 512, mode: str = "auto", progress: bool = True,
        score_workers: int = 4, task_options: dict[str, dict] | None = None,
        prepared: dict[str, Task] | None = None) -> dict[str, dict]:
    """Evaluate each task; returns (and writes to OUTPUT/results.json) {task: its result row}.
    task_options: keyword arguments for a task's constructor, by task name (mc: its data path);
    prepared: tasks already built, by name (the CLI builds those with flags before a model loads)."""
    from zenlm.eval.tasks import TASKS

    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    if max_tokens < 1:
        raise ValueError(f"--max-tokens must be at least 1, got {max_tokens}")
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
    out = Path(output)
    chosen: Mode = backend.default_mode() if mode == "auto" else mode  # type: ignore[assignment]
    results_path, samples_path = out / "results.json", out / "samples.jsonl"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in task_names:
        task: Task = (prepared or {}).get(name) or TASKS[name](**(task_options or {}).get(name, {}))
        samples = task.samples(chosen, num_shots)[:limit]
        t0 = time.perf_counter()
        rows, asked = _answer(task, samples, backend, samples_path, max_tokens, progress, score_workers, chosen)
        seconds = time.perf_counter() - t0
        if not asked and name in results and results[name].get("n") == len(rows):  # all resumed: keep its time
            seconds = results[name]["seconds"]
        n = len(rows)
        p = sum(r["correct"] for r in rows) / n if n else 0.0
        results[name] = {"metric": task.metric, "value": p, "stderr": stderr(p, n), "n": n,
                         "correct": sum(r["correct"] for r in rows), "model": backend.model, "dtype": backend.dtype,
                         "mode": chosen, "num_shots": num_shots, "max_tokens": max_tokens,
                         "seconds": round(seconds, 2)}
        if len(metrics_of(task)) > 1:
            results[name]["metrics"] = {}
            for m in metrics_of(task):
                k = sum(r["scores"][m] for r in rows)
                results[name]["metrics"][m] = {"value": k / n if n else 0.0, "stderr": stderr(k / n if n else 0.0, n),
                                               "correct": k}
        if hasattr(task, "report"):
            results[name]["files"] = [str(f) for f in task.report(rows, out)]
        results_path.write_text(json.dumps(results, indent=2) + "\n")
    return {name: results[name] for name in task_names}


def _answer(task: Task, samples: list[Sample], backend: Backend, path: Path, max_tokens: int, progress: bool,
            workers: int, mode: Mode = "chat") -> tuple[list[dict], int]:
    """This task's rows for `samples` (those samples.jsonl already holds, then the rest, asked and scored)
    and how many were asked."""
    prompts = {s.id: s.prompt for s in samples}
    settings = {"model": backend.model, "dtype": backend.dtype, "max_tokens": max_tokens}
    done: dict[str, dict] = {}
    for row in read_samples(path):
        if row.get("task") == task.name and row.get("id") in prompts:
            if row.get("prompt") != prompts[row["id"]]:
                raise ValueError(f"{path} holds {row['id']} asked with another prompt (other --mode or "
                                 "--num-shots?); give a fresh --output")
            for key, value in settings.items():
                if row.get(key, value) != value:
                    raise ValueError(f"{path} holds {row['id']} asked with {key} {row[key]!r}, not {value!r}; "
                                     "give a fresh --output")
            done[row["id"]] = row
    todo = [s for s in samples if s.id not in done]
    if done:
        log.info("%s: %d of %d samples already in %s", task.name, len(done), len(samples), path)
    from tqdm import tqdm

    bar = tqdm(total=len(samples), initial=len(done), desc=task.name, unit="sample", file=sys.stderr,
               disable=not progress, dynamic_ncols=True)
    ledger = _Ledger(path)

    def score(s: Sample, output: str | list[float]) -> dict:
        answer, correct = task.score(s, output)
        row = {"task": task.name, "id": s.id, "prompt": s.prompt, "output": output, "answer": answer}
        if s.meta:  # what the task's report reads back (needle: length, depth)
            row["meta"] = s.meta
        if isinstance(correct, dict):  # several metrics: the headline one is `correct`
            row |= {"correct": bool(correct[task.metric]), "scores": {m: bool(v) for m, v in correct.items()}}
        else:
            row["correct"] = bool(correct)
        row |= settings
        ledger.write(row)
        with ledger.lock:
            bar.update(1)
        return row

    try:
        with ThreadPoolExecutor(workers, thread_name_prefix="zen-eval-score") as pool:
            if not todo:
                answered = iter(())
            elif kind_of(task) == "loglikelihood":
                answered = backend.loglikelihoods(todo)
            elif mode == "tir":
                if not hasattr(backend, "tir_answers"):
                    raise ValueError("--mode tir runs the model's code between rounds: it needs the in-process "
                                     "engine, not --base-url")
                answered = backend.tir_answers(todo, max_tokens)
            else:
                answered = backend.answers(todo, max_tokens)
            futures = [pool.submit(score, s, output) for s, output in answered]
            for f in futures:
                row = f.result()
                done[row["id"]] = row
    finally:
        ledger.close()
        bar.close()
    missing = [s.id for s in samples if s.id not in done]
    assert not missing, f"the backend gave no answer for {missing[:3]}"
    return [done[s.id] for s in samples], len(todo)


def table(results: dict[str, dict]) -> str:
    """The results as a markdown table (values in percent)."""
    lines = ["| task | metric | value (%) | ± stderr | n | model | dtype | mode | seconds |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for metric, m in _metrics(r).items():
            lines.append(f"| {name} | {metric} | {100 * m['value']:.1f} | {100 * m['stderr']:.1f} | {r['n']} | "
                         f"{r['model']} | {r['dtype']} | {r['mode']} | {r['seconds']:.1f} |")
    return "\n".join(lines)


def _metrics(r: dict) -> dict[str, dict]:
    return r.get("metrics") or {r["metric"]: r}


def summary(results: dict[str, dict]) -> dict[str, dict[str, float]]:
    """{TASK: {METRIC: value, ...}}: what --json prints as the last line."""
    return {name: {metric: m["value"] for metric, m in _metrics(r).items()} for name, r in results.items()}
