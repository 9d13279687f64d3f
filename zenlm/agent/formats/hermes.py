"""Hermes ("nous") tool calls, zen's native format: the model's own chat template renders the tools.

The template writes the tool signatures into the system turn, each past call as a
`<tool_call>{"name": ..., "arguments": ...}</tool_call>` block and each result as a user turn of
`<tool_response>` blocks (agents.md §2.3). Output is read with zenlm/tokenizer/tool_calls.py, which
also accepts the bare JSON calls the default model writes; a `<tool_call>` block that is not valid
JSON still becomes a call (name read leniently) so the model is told what was wrong with it.
"""

from __future__ import annotations

import json
import re

from zenlm.agent.formats.base import ParsedCall, Reply
from zenlm.agent.tools import Tool
from zenlm.tokenizer import tool_calls
from zenlm.tokenizer.tool_calls import CLOSE, OPEN

_NAME = re.compile(r'"name"\s*:\s*"((?:[^"\\]|\\.)*)"')
_ARGS = re.compile(r'"(?:arguments|parameters)"\s*:\s*')


def _json_arguments(call: dict) -> dict:
    """A call whose arguments are not JSON keeps them as a JSON string, which the template can render."""
    fn = call["function"]
    try:
        json.loads(fn["arguments"])
    except (TypeError, json.JSONDecodeError):
        return {**call, "function": {**fn, "arguments": json.dumps(fn["arguments"], ensure_ascii=False)}}
    return call


def _broken(body: str) -> ParsedCall:
    """A `<tool_call>` block that does not parse: its name and arguments as far as they can be read."""
    name = _NAME.search(body)
    args = _ARGS.search(body)
    raw = body[args.end():].strip() if args else body.strip()
    if args and raw.endswith("}"):
        raw = raw[:-1].rstrip()  # the call object's own closing brace
    return ParsedCall(tool_calls.json_unescape(name.group(1)) if name else "", raw)


_FENCED = re.compile(r"^\s*(?:```(?:json)?\s*)?(\{.*\})\s*(?:```)?\s*$", re.S)


def _call_shaped(text: str) -> ParsedCall | None:
    """A whole reply that is one JSON object {"name": ..., "arguments": {...}} (fenced or bare) is an attempt
    at a call even when the name is no offered tool's (the default model invents names); other JSON is content."""
    m = _FENCED.match(text)
    if m is None:
        return None
    try:
        obj = json.loads(m.group(1))
    except json.JSONDecodeError:
        return None
    if not (isinstance(obj, dict) and isinstance(obj.get("name"), str) and len(obj) == 2):
        return None
    args = obj.get("arguments", obj.get("parameters"))
    if not isinstance(args, dict):
        return None
    return ParsedCall(obj["name"], json.dumps(args, ensure_ascii=False))


class HermesParser:
    def __init__(self, names: set[str]):
        self.names, self.text, self.sent = names, "", 0

    def feed(self, piece: str) -> str:
        self.text += piece
        now = tool_calls.scan(self.text, self.names, final=False).content
        new, self.sent = now[self.sent:], max(self.sent, len(now))
        return new

    def finish(self) -> Reply:
        text = self.text
        if OPEN in text:
            head, *blocks = text.split(OPEN)
            calls = []
            for block in blocks:
                body = block.split(CLOSE, 1)[0]
                parsed = tool_calls.parse(f"{OPEN}{body}{CLOSE}", self.names)[1]
                calls += [ParsedCall(n, a) for n, a in parsed] or [_broken(body)]
            return Reply(head, calls, None, head.strip())
        content, parsed = tool_calls.parse(text, self.names)
        if parsed:
            return Reply(content or "", [ParsedCall(n, a) for n, a in parsed], None, (content or "").strip())
        attempt = _call_shaped(text)
        if attempt is not None:  # a call to a tool not offered: the loop tells the model which ones are
            return Reply(text, [attempt], None, "")
        return Reply(text, [], text.strip(), text.strip())


class Hermes:
    name = "hermes"
    native_tools = True
    stop: tuple[str, ...] = ()

    def prompt(self, messages: list[dict], tools: list[Tool]) -> list[dict]:
        return [{**m, "tool_calls": [_json_arguments(c) for c in m["tool_calls"]]} if m.get("tool_calls") else m
                for m in messages]

    def parser(self, messages: list[dict], tools: list[Tool]) -> HermesParser:
        return HermesParser({t.name for t in tools})
