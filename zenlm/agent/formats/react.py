"""ReAct (Thought / Action / Action Input / Observation), the Qwen (v1) prompt, for models without native calls.

Facts followed (agents.md §2.1): the first user message becomes `Answer the following questions as best
you can. You have access to the following tools:`, the tool lines (`{name}: Call this tool to interact
with the {name} API. What is the {name} API useful for? {description} Parameters: {JSON schema} Format
the arguments as a JSON object.`, a blank line between), the format block, `Begin!` and
`Question: {query}`. Generation stops at `Observation:`; the call is read from the Action / Action Input
lines, the result is appended inside the assistant's turn as `\\nObservation: {result}` followed by
`\\nThought:`, and the model continues. The answer follows `Final Answer:`.
"""

from __future__ import annotations

import json

from zenlm.agent.formats.base import ParsedCall, Reply, StreamParser, visible
from zenlm.agent.tools import Tool

ACTION, INPUT, OBSERVATION, FINAL = "\nAction:", "\nAction Input:", "\nObservation:", "\nFinal Answer:"

TOOL_DESC = ("{name}: Call this tool to interact with the {name} API. What is the {name} API useful for? "
             "{description} Parameters: {parameters} Format the arguments as a JSON object.")

PROMPT = """Answer the following questions as best you can. You have access to the following tools:

{tool_descs}

Use the following format:

Question: the input question you must answer
Thought: you should always think about what to do
Action: the action to take, should be one of [{tool_names}]
Action Input: the input to the action
Observation: the result of the action
... (this Thought/Action/Action Input/Observation can be repeated zero or more times)
Thought: I now know the final answer
Final Answer: the final answer to the original input question

Begin!

Question: {query}"""


def instruction(tools: list[Tool], query: str) -> str:
    descs = "\n\n".join(TOOL_DESC.format(name=t.name, description=t.description,
                                         parameters=json.dumps(t.parameters, ensure_ascii=False)) for t in tools)
    return PROMPT.format(tool_descs=descs, tool_names=",".join(t.name for t in tools), query=query)


def _thought(text: str) -> str:
    text = text.strip()
    return text[len("Thought:"):].strip() if text.startswith("Thought:") else text


def _turn(msg: dict) -> str:
    """A past assistant message as the ReAct text the model would have written."""
    calls = msg.get("tool_calls") or []
    if not calls:
        return f"Thought: I now know the final answer.\nFinal Answer: {msg.get('content') or ''}"
    thought = msg.get("content") or ""
    head = f"Thought: {thought}" if thought else "Thought:"
    return head + "".join(f"{ACTION} {c['function']['name']}{INPUT} {c['function']['arguments']}" for c in calls)


class ReActParser(StreamParser):
    def __init__(self, prefix: str = ""):
        super().__init__()
        self.text = prefix  # "Thought:" when continuing after an observation: the turn's label, already written

    def _cut(self, final: bool) -> str:
        return visible("\n" + self.text, (ACTION, OBSERVATION), final)[1:]

    def shown(self, final: bool) -> str:
        return self._cut(final)

    def finish(self) -> Reply:
        text, full = self._cut(final=True), "\n" + self.text
        i = full.find(ACTION)
        if i >= 0:
            rest = full[i + len(ACTION):]
            name, sep, args = rest.partition(INPUT)
            args = args.split(OBSERVATION, 1)[0] if sep else ""
            return Reply(text, [ParsedCall(name.strip(), args.strip())], None, _thought(full[:i]))
        z = full.rfind(FINAL)
        answer = full[z + len(FINAL):].strip() if z >= 0 else _thought(full)
        return Reply(text, [], answer, answer)


class ReAct:
    name = "react"
    native_tools = False
    stop = ("Observation:", "Observation:\n")

    def prompt(self, messages: list[dict], tools: list[Tool]) -> list[dict]:
        out: list[dict] = []
        parts: list[str] | None = None
        wrapped = False
        for msg in messages:
            role = msg["role"]
            if role == "assistant":
                parts = [] if parts is None else parts + ["\n"]
                parts.append(_turn(msg))
            elif role == "tool":
                parts = (parts or []) + [f"{OBSERVATION} {msg.get('content') or ''}"]
            else:
                if parts is not None:
                    out.append({"role": "assistant", "content": "".join(parts)})
                    parts = None
                content = msg.get("content") or ""
                if role == "user" and not wrapped:
                    content, wrapped = instruction(tools, content), True
                out.append({"role": role, "content": content})
        if parts is not None:
            out.append({"role": "assistant", "content": "".join(parts) + "\nThought:"})
        return out

    def parser(self, messages: list[dict], tools: list[Tool]) -> ReActParser:
        return ReActParser("Thought:" if messages and messages[-1]["role"] == "tool" else "")
