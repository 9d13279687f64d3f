"""What Agent.stream yields, in order, and what Agent.run returns.

A turn is one model call. Each turn streams TextDelta pieces (the model's text outside call syntax),
then either the ToolCall events it asked for followed by their ToolResult events (in finishing order),
or a FinalAnswer (a turn that only repeats earlier calls has neither; see loop.py). A run that ends
without an answer ends with Stopped (turn limit, token budget, error).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

StopReason = Literal["max_turns", "token_budget", "error"]


@dataclass(slots=True)
class TextDelta:
    text: str
    turn: int


@dataclass(slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # the JSON text the model wrote (possibly not valid JSON)
    turn: int


@dataclass(slots=True)
class ToolResult:
    id: str
    name: str
    content: str  # what the model sees
    error: bool  # the tool raised, timed out, was unknown, or got arguments it cannot take
    turn: int
    images: list[bytes] = field(default_factory=list, repr=False)  # PNG figures, for the user


@dataclass(slots=True)
class FinalAnswer:
    text: str
    turn: int


@dataclass(slots=True)
class Stopped:
    reason: StopReason
    message: str
    turn: int


Event = TextDelta | ToolCall | ToolResult | FinalAnswer | Stopped


@dataclass(slots=True)
class AgentResult:
    answer: str | None  # None when the run stopped without one
    turns: int  # model calls made
    tool_calls: int  # tool calls run (errors included)
    messages: list[dict]  # the conversation in OpenAI's shape: system, user, assistant (tool_calls), tool
    stopped: StopReason | None = None
    tokens: int = 0  # tokens generated over all turns
    sources: list = field(default_factory=list)  # with docs: the retrieved chunks (rag Hits), numbered from 1
    citations: dict[int, str] = field(default_factory=dict)  # with docs: {n: chunk id} for each [n] the answer cites
