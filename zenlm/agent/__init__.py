"""Agents: the tool loop and its prompt formats, the sandboxed code interpreter, tool-integrated reasoning, RAG.

agent/ sits beside the engine (ARCHITECTURE.md): it may drive the in-process engine or any OpenAI-compatible
server; model-written code only ever runs in the sandbox's separate, confined process tree.
"""

from zenlm.agent.builtin import python_tool
from zenlm.agent.events import AgentResult, FinalAnswer, Stopped, TextDelta, ToolCall, ToolResult
from zenlm.agent.loop import Agent
from zenlm.agent.tools import Tool, ToolOutput, tool

__all__ = ["Agent", "AgentResult", "FinalAnswer", "Stopped", "TextDelta", "Tool", "ToolCall", "ToolOutput",
           "ToolResult", "python_tool", "tool"]
