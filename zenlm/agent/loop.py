"""Agent: the tool loop. model -> tool calls (run concurrently) -> results -> model, until an answer or a limit.

    with Agent("default", tools=[add], format="hermes") as agent:
        for event in agent.stream("What is 1234 + 4321?"):
            print(event)
        result = agent.run("What is 1234 + 4321?")  # AgentResult: answer, turns, tool_calls, messages

A run stops at the first turn without a tool call (its text is the answer), after max_turns model
calls, or when the generated tokens reach max_tokens. Tool failures of every kind become results the
model reads, and the loop goes on. Backend failures (server unreachable, prompt past the context) end
the run with a Stopped("error") event.

Repeat-call breaker (agents.md §6.8, §7: agents looping on tools): a turn whose calls all repeat calls
already made in the run (same tool, same arguments) is not run again; the loop asks for the answer in a
user message (ANSWER_NOW) and the next turn is generated without the tools offered. The default 0.5B
model needs it: after a tool result it calls the same tool again rather than answer.

Documents (docs=INDEX, a `zen rag index` output or a documents directory): each run retrieves the `docs_k`
chunks nearest its task (the last user message) and puts them, numbered, in the system message with
zen chat --docs's citation instruction (rag/cite.py); result.sources lists them and result.citations maps
each [n] the answer names to its chunk id.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Generator, Iterable, Iterator

from zenlm.agent.backends import Backend, EngineBackend, backend_for
from zenlm.agent.events import AgentResult, Event, FinalAnswer, Stopped, TextDelta, ToolCall, ToolResult
from zenlm.agent.execute import run_calls
from zenlm.agent.formats import Reply, get_format
from zenlm.agent.tools import as_tools

# The repeat-call breaker's message: small models often call the same tool again instead of answering.
ANSWER_NOW = {"role": "user", "content": "Answer my question using the tool results above; do not call a tool again."}


def _canonical(arguments: str) -> str:
    try:
        return json.dumps(json.loads(arguments), sort_keys=True)
    except json.JSONDecodeError:
        return arguments.strip()


def _positive(name: str, value, kind=int) -> None:
    if not isinstance(value, kind) or isinstance(value, bool) or not value > 0:
        raise ValueError(f"{name} must be a positive {kind.__name__}, got {value!r}")


class Run:
    """Agent.stream's iterator of events; `result` fills in as they come and is complete once they end."""

    def __init__(self, events: Iterator[Event], result: AgentResult):
        self.events, self.result = events, result

    def __iter__(self) -> Run:
        return self

    def __next__(self) -> Event:
        return next(self.events)

    def close(self) -> None:
        """Stop early (a turn in progress is aborted)."""
        self.events.close()


class Agent:
    def __init__(self, model_or_url, tools: Iterable = (), format: str = "hermes", max_turns: int = 10,
                 max_tokens: int = 4096, system: str | None = None, tool_timeout: float = 30.0,
                 turn_tokens: int = 1024, temperature: float = 0.0, model: str | None = None,
                 api_key: str | None = None, dtype: str = "auto", break_repeats: bool = True, docs=None,
                 docs_k: int = 4):
        """model_or_url: an LLM, a model name for LLM(...), an http(s) URL of an OpenAI-compatible server, or a
        Backend. tools: functions or Tools. max_tokens: generated tokens over the whole run; turn_tokens: per
        turn. tool_timeout: seconds per call, unless the Tool sets its own. model/api_key: for a URL.
        break_repeats: when a turn only repeats calls already made, ask for the answer instead of running them.
        docs: a RAG index or documents directory (or a Retriever) to answer from with citations; docs_k: chunks
        retrieved per run."""
        self.format = get_format(format)
        self.tools = as_tools(list(tools))
        _positive("max_turns", max_turns)
        _positive("max_tokens", max_tokens)
        _positive("turn_tokens", turn_tokens)
        _positive("tool_timeout", float(tool_timeout) if isinstance(tool_timeout, int) else tool_timeout, float)
        if not temperature >= 0:
            raise ValueError(f"temperature must be >= 0, got {temperature!r}")
        self.max_turns, self.max_tokens, self.turn_tokens = max_turns, max_tokens, turn_tokens
        self.system, self.tool_timeout, self.temperature = system, float(tool_timeout), temperature
        self.break_repeats = break_repeats
        _positive("docs_k", docs_k)
        self.docs_k, self.retriever = docs_k, None
        if docs is not None:
            from zenlm.agent.rag import open_docs

            self.retriever = docs if callable(getattr(docs, "search", None)) else open_docs(docs)
        self.backend: Backend = backend_for(model_or_url, model=model, api_key=api_key, dtype=dtype)
        if (self.format.native_tools and self.tools and isinstance(self.backend, EngineBackend)
                and not self.backend.llm.tokenizer.chat_template):
            raise ValueError(f"format {self.format.name!r} needs a chat template that renders tools and this model "
                             "has none; use format 'react' or 'qwen-agent'")

    def _messages(self, task: str | list[dict]) -> list[dict]:
        if isinstance(task, str):
            if not task.strip():
                raise ValueError("the task is empty")
            head = [{"role": "system", "content": self.system}] if self.system is not None else []
            return head + [{"role": "user", "content": task}]
        if not task or not all(isinstance(m, dict) and "role" in m for m in task):
            raise ValueError("the task must be a string or a non-empty list of messages with a 'role'")
        return [dict(m) for m in task]

    def _with_docs(self, messages: list[dict], result: AgentResult) -> list[dict]:
        """The chunks nearest the last user message, numbered in the system message (added if there is none)."""
        from zenlm.agent.rag.cite import rag_system

        query = next((m.get("content") for m in reversed(messages) if m["role"] == "user"), None)
        if not isinstance(query, str) or not query.strip():
            raise ValueError("with docs, the task needs a user message with text to retrieve for")
        result.sources = hits = self.retriever.search(query, self.docs_k)
        if messages[0]["role"] == "system":
            return [{**messages[0], "content": rag_system(hits, messages[0].get("content"))}] + messages[1:]
        return [{"role": "system", "content": rag_system(hits)}] + messages

    def stream(self, task: str | list[dict]) -> Run:
        """The run's events as they happen (the last is a FinalAnswer or a Stopped); .result once done."""
        result = AgentResult(None, 0, 0, [])
        messages = self._messages(task)
        if self.retriever is not None:
            messages = self._with_docs(messages, result)
        return Run(self._loop(messages, result), result)

    def run(self, task: str | list[dict]) -> AgentResult:
        """Run the task to its end: the answer (None if a limit or an error came first), counts, messages."""
        run = self.stream(task)
        for _ in run:
            pass
        return run.result

    def _loop(self, messages: list[dict], result: AgentResult) -> Iterator[Event]:
        result.messages = messages
        made: set[tuple[str, str]] = set()  # every (tool, arguments) called in this run
        for turn in range(1, self.max_turns + 1):
            if result.tokens >= self.max_tokens:
                break
            result.turns = turn
            nudged = self.break_repeats and messages[-1] == ANSWER_NOW
            try:
                reply, finish = yield from self._generate(messages, turn, result, tools_offered=not nudged)
            except (OSError, RuntimeError, ValueError) as e:
                result.stopped = "error"
                yield Stopped("error", str(e), turn)
                return
            if not reply.calls:
                if finish == "length" and result.tokens >= self.max_tokens:
                    break  # the answer was cut off by the budget
                result.answer = reply.answer or ""
                if result.sources:
                    from zenlm.agent.rag.cite import cited

                    result.citations = cited(result.answer, result.sources)
                messages.append({"role": "assistant", "content": result.answer})
                yield FinalAnswer(result.answer, turn)
                return
            keys = {(c.name, _canonical(c.arguments)) for c in reply.calls}
            if self.break_repeats and keys <= made:
                if not nudged:  # every call repeats one already answered: ask for the answer instead
                    messages.append(dict(ANSWER_NOW))
                continue
            made |= keys
            yield from self._act(reply, messages, turn, result)
        result.stopped = "token_budget" if result.tokens >= self.max_tokens else "max_turns"
        message = (f"the run used its budget of {self.max_tokens} generated tokens without a final answer"
                   if result.stopped == "token_budget" else f"no final answer within {self.max_turns} turns")
        yield Stopped(result.stopped, message, result.turns)

    def _generate(self, messages: list[dict], turn: int, result: AgentResult,
                  tools_offered: bool) -> Generator[Event, None, tuple[Reply, str | None]]:
        """One model turn, streamed as TextDelta events; returns its Reply and finish reason."""
        fmt, tools = self.format, self.tools
        schemas = [t.schema for t in tools] if fmt.native_tools and tools and tools_offered else None
        parser, shown, finish = fmt.parser(messages, tools), "", None
        budget = min(self.max_tokens - result.tokens, self.turn_tokens)
        for piece in self.backend.generate(fmt.prompt(messages, tools), schemas, list(fmt.stop), budget,
                                           self.temperature):
            if piece.text and (new := parser.feed(piece.text)):
                shown += new
                yield TextDelta(new, turn)
            result.tokens += piece.tokens
            finish = piece.finish_reason or finish
        reply = parser.finish()
        assert reply.text.startswith(shown), f"{fmt.name}: the parser took back text it had shown"
        if reply.text[len(shown):]:
            yield TextDelta(reply.text[len(shown):], turn)
        return reply, finish

    def _act(self, reply: Reply, messages: list[dict], turn: int, result: AgentResult) -> Iterator[Event]:
        """Run a turn's calls concurrently; the call and its results join the conversation."""
        calls = [(f"call_{uuid.uuid4().hex[:12]}", c.name, c.arguments) for c in reply.calls]
        messages.append({"role": "assistant", "content": reply.content or None,
                         "tool_calls": [{"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
                                        for cid, name, args in calls]})
        for cid, name, args in calls:
            yield ToolCall(cid, name, args, turn)
        names, outcomes = {cid: name for cid, name, _ in calls}, {}
        for cid, out in run_calls(calls, {t.name: t for t in self.tools}, self.tool_timeout):
            outcomes[cid] = out
            yield ToolResult(cid, names[cid], out.content, out.error, turn, out.images)
        for cid, name, _ in calls:  # results go back in call order
            messages.append({"role": "tool", "tool_call_id": cid, "name": name, "content": outcomes[cid].content})
        result.tool_calls += len(calls)

    def close(self) -> None:
        for t in self.tools:
            t.close()
        self.backend.close()

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
