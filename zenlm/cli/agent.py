"""`zen agent "TASK"`: run the tool loop once and print the answer.

The transcript (the model's text, each tool call and its result) streams to stderr; the answer goes
to stdout. With --json, stdout holds only one line: {"answer": ..., "turns": N, "tool_calls": N}
(plus "stopped" when the run ended without an answer, which also exits 1). With --docs DIR the answer
cites the retrieved chunks as [n]; their ids follow on stderr (and under "citations" with --json).
"""

from __future__ import annotations

import json
import sys

from zenlm.cli.common import add_model, count, load_llm

FORMATS = ("hermes", "qwen-agent", "react")
SHOWN = 600  # characters of a tool result shown in the transcript


def add(sub) -> None:
    p = sub.add_parser("agent", help="run a task with tools (the code interpreter, ...) and print the answer")
    p.add_argument("task", help="what to do, in words")
    p.add_argument("--tools", default="", help="comma-separated built-in tools, e.g. python (none by default)")
    add_model(p)
    p.add_argument("--base-url", help="an OpenAI-compatible server (e.g. zen serve's http://127.0.0.1:8000/v1) "
                                      "instead of the in-process engine; --model then names the served model")
    p.add_argument("--api-key", help="the server's API key (with --base-url)")
    p.add_argument("--format", default="hermes", choices=FORMATS, help="how tools are offered and calls are read")
    p.add_argument("--system", help="a system message")
    p.add_argument("--docs", metavar="DIR", help="answer from these documents (or a `zen rag index` output), "
                   "citing the retrieved chunks as [n]")
    p.add_argument("--k", default="4", help="with --docs: chunks retrieved (default 4)")
    p.add_argument("--max-turns", default="10", help="model calls at most (default 10)")
    p.add_argument("--max-tokens", default="4096", help="generated tokens at most, over the whole run (default 4096)")
    p.add_argument("--json", action="store_true", help="print one JSON line with the answer and counts to stdout")
    p.set_defaults(func=cmd_agent)


def _show(event, err) -> None:
    from zenlm.agent.events import FinalAnswer, Stopped, TextDelta, ToolCall, ToolResult

    if isinstance(event, TextDelta):
        err.write(event.text)
    elif isinstance(event, ToolCall):
        err.write(f"\n[call] {event.name} {event.arguments}\n")
    elif isinstance(event, ToolResult):
        text = event.content if len(event.content) <= SHOWN else event.content[:SHOWN] + " ..."
        err.write(f"[{'error' if event.error else 'result'}] {event.name}: {text}\n")
    elif isinstance(event, FinalAnswer):
        err.write("\n")
    elif isinstance(event, Stopped):
        err.write(f"\nzen: the agent stopped: {event.message}\n")
    err.flush()


def cmd_agent(args) -> int:
    from zenlm.agent import Agent
    from zenlm.agent.backends import OpenAIBackend
    from zenlm.agent.builtin import builtin_tools

    max_turns = count("--max-turns", args.max_turns, 1)
    max_tokens = count("--max-tokens", args.max_tokens, 1)
    k = count("--k", args.k, 1)
    names = [n.strip() for n in args.tools.split(",") if n.strip()]
    tools = builtin_tools(names)
    if args.base_url:
        source = OpenAIBackend(args.base_url, None if args.model == "default" else args.model, args.api_key)
    elif args.api_key:
        raise ValueError("--api-key is for a server; give --base-url too")
    else:
        source = load_llm(args)
    with Agent(source, tools=tools, format=args.format, max_turns=max_turns, max_tokens=max_tokens,
               system=args.system, docs=args.docs, docs_k=k) as agent:
        run = agent.stream(args.task)
        for event in run:
            _show(event, sys.stderr)
    result = run.result
    if result.sources:
        from zenlm.agent.rag.cite import sources

        print(f"sources: {sources(result.sources)}", file=sys.stderr)
    if args.json:
        line = {"answer": result.answer, "turns": result.turns, "tool_calls": result.tool_calls}
        if result.stopped:
            line["stopped"] = result.stopped
        if args.docs:
            line["citations"] = {str(n): cid for n, cid in result.citations.items()}
        print(json.dumps(line, ensure_ascii=False))
    elif result.answer is not None:
        print(result.answer)
    return 0 if result.answer is not None else 1
