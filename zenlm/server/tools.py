"""Tool calls streamed as OpenAI deltas (ToolStream), and the ids the server gives them.

The parsing itself (Hermes `<tool_call>` blocks, bare JSON calls) is zenlm/tokenizer/tool_calls.py,
shared with eval; `parse` is re-exported here for the routes. Streaming re-scans the whole text at
each step and sends only what is new (stateless parsing).
"""

from __future__ import annotations

import uuid

from zenlm.tokenizer.tool_calls import parse, scan

__all__ = ["ToolStream", "new_call_id", "parse"]


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


class ToolStream:
    """Feed the generated text piece by piece; get OpenAI delta dicts (content, tool_calls) to send."""

    def __init__(self, tools: set[str]):
        self.tools, self.text, self.sent = tools, "", 0
        self.calls: list[tuple[str, int]] = []  # (id, argument characters sent) per announced call

    @property
    def called(self) -> bool:
        return bool(self.calls)

    def feed(self, piece: str, final: bool = False) -> list[dict]:
        self.text += piece
        s = scan(self.text, self.tools, final)
        out = []
        if len(s.content) > self.sent and not self.calls:
            out.append({"content": s.content[self.sent:]})
            self.sent = len(s.content)
        for i, call in enumerate(s.calls):
            if call.name is None:
                break
            if final and not call.arguments:
                call.arguments = "{}"
            if i == len(self.calls):
                self.calls.append((new_call_id(), 0))
                cid, _ = self.calls[i]
                out.append({"tool_calls": [{"index": i, "id": cid, "type": "function",
                                            "function": {"name": call.name, "arguments": ""}}]})
            cid, n = self.calls[i]
            if len(call.arguments) > n:
                out.append({"tool_calls": [{"index": i, "function": {"arguments": call.arguments[n:]}}]})
                self.calls[i] = (cid, len(call.arguments))
        if final and not self.calls and len(self.text) > self.sent:  # no call after all: the rest is content
            out.append({"content": self.text[self.sent:]})
            self.sent = len(self.text)
        return out
