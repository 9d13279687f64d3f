"""What every prompt format provides, and the streaming helper they share.

A format turns the agent's conversation (OpenAI-shaped messages: system, user, assistant with
tool_calls, tool) into the messages the model sees, and reads each model turn back with a Parser:
feed() returns the text that is safe to show so far (never part of call syntax, never taken back),
finish() the whole Reply. When the model-facing messages end with an assistant message, the model
continues that message (the text formats put tool results inside the assistant's own turn).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from zenlm.agent.tools import Tool


@dataclass(slots=True)
class ParsedCall:
    name: str  # "" when the model's call is too broken to name a tool
    arguments: str  # the arguments' text as written (JSON when the model got it right)


@dataclass(slots=True)
class Reply:
    text: str  # everything a stream of this turn shows (its TextDelta pieces joined)
    calls: list[ParsedCall] = field(default_factory=list)
    answer: str | None = None  # the final answer, when the turn makes no call
    content: str = ""  # the assistant message's content for the conversation (the thought before calls)


class Parser(Protocol):
    def feed(self, piece: str) -> str:
        """Take the next piece of generated text; return the newly visible text."""
        ...

    def finish(self) -> Reply:
        """The turn is over: all of it, parsed."""
        ...


class Format(Protocol):
    name: str
    native_tools: bool  # tools go to the chat template / the server's `tools` (else they are in the prompt text)
    stop: tuple[str, ...]  # stop strings for every model turn

    def prompt(self, messages: list[dict], tools: list[Tool]) -> list[dict]:
        """The messages the model sees; a last assistant message is to be continued."""
        ...

    def parser(self, messages: list[dict], tools: list[Tool]) -> Parser:
        """A parser for the model's next turn after `messages`."""
        ...


def visible(text: str, markers: tuple[str, ...], final: bool) -> str:
    """text up to the first marker; while more may come, also without a tail that could start a marker."""
    cut = min((i for m in markers if (i := text.find(m)) >= 0), default=len(text))
    out = text[:cut]
    if cut == len(text) and not final:
        for n in range(min(max(map(len, markers)) - 1, len(out)), 0, -1):
            if any(m.startswith(out[-n:]) for m in markers):
                return out[:-n]
    return out


class StreamParser:
    """Feed bookkeeping for parsers whose visible text is a function of the text so far (shown())."""

    def __init__(self):
        self.text, self.sent = "", 0

    def shown(self, final: bool) -> str:
        raise NotImplementedError

    def feed(self, piece: str) -> str:
        self.text += piece
        now = self.shown(final=False)
        new, self.sent = now[self.sent:], max(self.sent, len(now))
        return new
