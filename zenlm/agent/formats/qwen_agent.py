"""Qwen-Agent's ✿FUNCTION✿ format (the Qwen1.5 / Qwen2 era "qwen" function-calling prompt).

Facts followed (agents.md §2.4, and the English template of Qwen-Agent's Qwen1.5-era fncall prompt):
- The system message gets `\\n\\n# Tools\\n\\n## You have access to the following tools:\\n\\n`, one
  `### {name}\\n\\n{name}: {description} Parameters: {JSON schema} Format the arguments as a JSON object.`
  entry per tool (blank line between), and a block naming the four markers with the tool names.
- Calls are written inside the assistant's own turn as `✿FUNCTION✿: name` / `✿ARGS✿: arguments`; each
  result is appended to that same turn as `\\n✿RESULT✿: {result}\\n✿RETURN✿: ` (consecutive results
  share one trailing ✿RETURN✿), and the model continues the turn. The ': ' after the last ✿RETURN✿ is
  left for the model to write, since ': ' may merge with the next word into one token.
- Stop words: ✿RESULT✿ and ✿RETURN✿. Several FUNCTION/ARGS pairs in one turn are parallel calls.
"""

from __future__ import annotations

import json

from zenlm.agent.formats.base import ParsedCall, Reply, StreamParser, visible
from zenlm.agent.tools import Tool

FN_NAME, FN_ARGS, FN_RESULT, FN_EXIT = "✿FUNCTION✿", "✿ARGS✿", "✿RESULT✿", "✿RETURN✿"
DEFAULT_SYSTEM = "You are a helpful assistant."
ARGS_FORMAT = "Format the arguments as a JSON object."

TEMPLATE = """

# Tools

## You have access to the following tools:

{tool_descs}

## When you need to call a tool, please insert the following command in your reply, \
which can be called zero or multiple times according to your needs:

✿FUNCTION✿: The tool to use, should be one of [{tool_names}]
✿ARGS✿: The input of the tool
✿RESULT✿: The result returned by the tool. The image needs to be rendered as ![](url)
✿RETURN✿: Reply based on tool result"""


def tool_system(tools: list[Tool]) -> str:
    """The text appended to the system message."""
    descs = "\n\n".join(f"### {t.name}\n\n{t.name}: {t.description} Parameters: "
                        f"{json.dumps(t.parameters, ensure_ascii=False)} {ARGS_FORMAT}" for t in tools)
    return TEMPLATE.format(tool_descs=descs, tool_names=",".join(t.name for t in tools))


def _assistant_text(parts: list[str], msg: dict) -> None:
    if msg["role"] == "assistant":
        parts.append(msg.get("content") or "")
        for call in msg.get("tool_calls") or []:
            args = call["function"]["arguments"]
            args = "\n" + args if args.startswith("```") else args
            parts.append(f"\n{FN_NAME}: {call['function']['name']}\n{FN_ARGS}: {args}")
    else:  # a tool result
        if parts and parts[-1] == f"\n{FN_EXIT}: ":
            parts.pop()
        parts.append(f"\n{FN_RESULT}: {msg.get('content') or ''}")
        parts.append(f"\n{FN_EXIT}: ")


def _lead(text: str, final: bool, continuing: bool) -> int | None:
    """Leading characters that are format, not content: the ': ' after a ✿RETURN✿ prefill, or a ✿RETURN✿ the
    model wrote itself; None while the start could still become one."""
    leads = ([": ", ":"] if continuing else []) + [f"{FN_EXIT}: ", f"{FN_EXIT}:", FN_EXIT]
    for lead in leads:
        if text.startswith(lead):
            return len(lead)
    if not final and any(lead.startswith(text) for lead in leads):
        return None
    return 0


class QwenAgentParser(StreamParser):
    def __init__(self, continuing: bool):
        super().__init__()
        self.continuing = continuing

    def _body(self, final: bool) -> str | None:
        n = _lead(self.text, final, self.continuing)
        return None if n is None else self.text[n:]

    def shown(self, final: bool) -> str:
        body = self._body(final)
        return "" if body is None else visible(body, (FN_NAME,), final)

    def finish(self) -> Reply:
        body = self._body(final=True)
        text = visible(body, (FN_NAME,), final=True)
        if FN_NAME not in body:
            answer = visible(body, (FN_RESULT, FN_EXIT), final=True).strip()
            return Reply(text, [], answer, answer)
        calls = []
        for part in body[len(text):].split(FN_NAME)[1:]:
            part = visible(part, (f"\n{FN_RESULT}", f"\n{FN_EXIT}", FN_RESULT, FN_EXIT), final=True)
            name, sep, args = part.partition(FN_ARGS)
            calls.append(ParsedCall(name.strip().lstrip(":").strip(), args.lstrip(":").strip() if sep else ""))
        return Reply(text, calls, None, text.strip())


class QwenAgent:
    name = "qwen-agent"
    native_tools = False
    stop = (FN_RESULT, FN_EXIT)

    def prompt(self, messages: list[dict], tools: list[Tool]) -> list[dict]:
        out: list[dict] = []
        parts: list[str] | None = None  # the assistant turn being assembled
        for msg in messages:
            role = msg["role"]
            if role in ("assistant", "tool"):
                if parts is None:
                    parts = []
                _assistant_text(parts, msg)
                continue
            if parts is not None:
                out.append({"role": "assistant", "content": "".join(parts).lstrip("\n")})
                parts = None
            out.append({"role": role, "content": msg.get("content") or ""})
        if parts is not None:
            text = "".join(parts).lstrip("\n")
            out.append({"role": "assistant", "content": text[:-2] if text.endswith(f"{FN_EXIT}: ") else text})
        if not out or out[0]["role"] != "system":
            out.insert(0, {"role": "system", "content": DEFAULT_SYSTEM})
        if tools:
            out[0] = {"role": "system", "content": out[0]["content"] + tool_system(tools)}
        return out

    def parser(self, messages: list[dict], tools: list[Tool]) -> QwenAgentParser:
        return QwenAgentParser(continuing=bool(messages) and messages[-1]["role"] == "tool")
