"""Run one turn's tool calls concurrently, each in its own daemon thread, with a timeout per call.

Every call ends as an Outcome the model sees: the tool's output, or one line saying what went wrong
(unknown tool, arguments it cannot take, an exception, a timeout). Outcomes come in finishing order.
A timed-out call's thread cannot be killed and runs on in the background (daemon threads never hold
up the interpreter's exit); tools that run code bound it themselves (the sandbox kills its process tree).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field

from zenlm.agent.tools import ArgumentError, Tool, ToolOutput, output_of


@dataclass(slots=True)
class Outcome:
    content: str
    error: bool
    images: list[bytes] = field(default_factory=list)


def _work(future: Future, tool: Tool, kwargs: dict) -> None:
    if not future.set_running_or_notify_cancel():
        return
    try:
        future.set_result(output_of(tool.fn(**kwargs)))
    except BaseException as e:  # noqa: BLE001 - whatever the tool raises is reported to the model
        future.set_exception(e)


def run_calls(calls: list[tuple[str, str, str]], tools: dict[str, Tool],
              timeout: float) -> Iterator[tuple[str, Outcome]]:
    """[(call id, tool name, arguments text)] -> (call id, Outcome) as each finishes."""
    started: dict[Future, tuple[str, str, float, float]] = {}  # call id, tool name, limit, deadline
    failed: list[tuple[str, Outcome]] = []
    for cid, name, arguments in calls:
        tool = tools.get(name)
        if tool is None:
            known = ", ".join(tools) or "none"
            failed.append((cid, Outcome(f"Error: there is no tool named {name!r}; the tools are: {known}.", True)))
            continue
        try:
            kwargs = tool.bind(arguments)
        except ArgumentError as e:
            failed.append((cid, Outcome(f"Error: bad arguments for {name}: {e}", True)))
            continue
        future: Future = Future()
        limit = tool.timeout or timeout
        threading.Thread(target=_work, args=(future, tool, kwargs), name=f"zen-tool-{name}", daemon=True).start()
        started[future] = (cid, name, limit, time.monotonic() + limit)
    yield from failed
    pending = set(started)
    while pending:
        deadline = min(started[f][3] for f in pending)
        done, pending = wait(pending, timeout=max(0.0, deadline - time.monotonic()), return_when=FIRST_COMPLETED)
        for f in done:
            cid, name, _, _ = started[f]
            err = f.exception()
            if err is None:
                out: ToolOutput = f.result()
                yield cid, Outcome(out.text, False, out.images)
            else:
                yield cid, Outcome(f"Error: {name} raised {type(err).__name__}: {err}", True)
        now = time.monotonic()
        for f in [f for f in pending if started[f][3] <= now]:
            pending.discard(f)
            cid, name, limit, _ = started[f]
            yield cid, Outcome(f"Error: {name} did not finish within {limit:g} s and was abandoned.", True)
