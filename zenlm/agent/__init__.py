"""Agents: the tool loop and its prompt formats, the sandboxed code interpreter, tool-integrated reasoning, RAG.

agent/ sits beside the engine (ARCHITECTURE.md): it may drive the in-process engine or any OpenAI-compatible
server; model-written code only ever runs in the sandbox's separate, confined process tree. The names below
import lazily, so `zenlm.agent.sandbox` (standard library only) loads without the loop's dependencies.
"""

from importlib import import_module
from typing import TYPE_CHECKING

_WHERE = {"python_tool": "zenlm.agent.builtin", "Agent": "zenlm.agent.loop", "Tool": "zenlm.agent.tools",
          "ToolOutput": "zenlm.agent.tools", "tool": "zenlm.agent.tools"}
_WHERE |= {n: "zenlm.agent.events" for n in ("AgentResult", "FinalAnswer", "Stopped", "TextDelta", "ToolCall",
                                              "ToolResult")}
__all__ = ["Agent", "AgentResult", "FinalAnswer", "Stopped", "TextDelta", "Tool", "ToolCall", "ToolOutput",
           "ToolResult", "python_tool", "tool"]

if TYPE_CHECKING:
    from zenlm.agent.builtin import python_tool
    from zenlm.agent.events import AgentResult, FinalAnswer, Stopped, TextDelta, ToolCall, ToolResult
    from zenlm.agent.loop import Agent
    from zenlm.agent.tools import Tool, ToolOutput, tool


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'zenlm.agent' has no attribute {name!r}")
