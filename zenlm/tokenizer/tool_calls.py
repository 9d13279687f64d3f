"""Tool calls in generated text, read whole (parse) or at any point of a stream (scan), and written (hermes).

Two forms are recognised: Hermes-style `<tool_call>{"name": ..., "arguments": ...}</tool_call>`
blocks (what the zen chat template asks for; text before the first block stays content), and a bare
JSON object (or several, or one in a ```json fence) whose "name" is one of the offered tools, which
is how the default model answers. Each call's arguments are the raw JSON text the model wrote.
Shared by the server (OpenAI tool_calls) and eval (tooluse); it knows nothing of HTTP or deltas.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

OPEN, CLOSE = "<tool_call>", "</tool_call>"
_NAME = re.compile(r'\s*\{\s*"name"\s*:\s*"((?:[^"\\]|\\.)*)"\s*(,\s*"(?:arguments|parameters)"\s*:\s*)?')
# what the start of a bare call may look like while it is still being written
_NAME_PREFIX = re.compile(r"\s*" + "".join(f"(?:{p}" for p in (r"\{", r"\s*", '"', "n", "a", "m", "e", '"', r"\s*", ":",
                                                                  r"\s*", '"(?P<partial>(?:[^"\\\\]|\\\\.)*)'))
                          + ")?" * 12 + "$")
_FENCE = re.compile(r"\s*```(?:json)?[ \t]*\n?")


@dataclass(slots=True)
class Call:
    name: str | None  # None while the name is still being written
    arguments: str  # the arguments' JSON text so far
    complete: bool


@dataclass(slots=True)
class Scan:
    content: str  # text that is certainly content
    calls: list[Call] = field(default_factory=list)


def _json_end(text: str, start: int) -> int | None:
    """Index just past the object or array that opens at text[start], or None while it is unclosed."""
    depth, in_str, esc = 0, False, False
    for i in range(start, len(text)):
        c = text[i]
        if in_str:
            if esc:
                esc = False
            elif c == "\\":
                esc = True
            elif c == '"':
                in_str = False
        elif c == '"':
            in_str = True
        elif c in "{[":
            depth += 1
        elif c in "}]":
            depth -= 1
            if depth == 0:
                return i + 1
    return None


def _whole(body: str) -> Call | None:
    """A finished call region parsed as JSON; None if it is not {"name": str, "arguments": ...}."""
    try:
        obj = json.loads(body.strip())
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # some models write the arguments as a JSON string
        try:
            args = json.loads(args)
        except json.JSONDecodeError:
            return None
    return Call(obj["name"], json.dumps(args, ensure_ascii=False), True)


def _region(body: str, complete: bool) -> Call | None:
    """One call's text (without tags) -> Call; None when no name can be read yet (or ever)."""
    m = _NAME.match(body)
    if m is None:
        return _whole(body) if complete else None
    name = json.loads(f'"{m.group(1)}"')
    if complete:  # the whole region is there: trust only what parses
        whole = _whole(body)
        if whole is None:
            return None
        start = m.end() if m.group(2) else None
        end = _json_end(body, start) if start is not None and body[start:start + 1] in "{[" else None
        raw = body[start:end] if end else None
        ok = raw is not None and json.loads(raw) == json.loads(whole.arguments)
        return Call(whole.name, raw if ok else whole.arguments, True)
    if not m.group(2):
        return Call(name, "", False)
    start = m.end()
    if body[start:start + 1] not in "{[":
        return Call(name, "", False)  # a non-object value: wait for the whole region
    end = _json_end(body, start)
    return Call(name, body[start:end] if end else body[start:], False)


def _tagged(text: str, final: bool) -> Scan:
    first = text.index(OPEN)
    scan = Scan(text[:first])
    for part in text[first + len(OPEN):].split(OPEN):
        body, closed = (part.split(CLOSE, 1)[0], True) if CLOSE in part else (part, final)
        call = _region(body, closed)
        if call is None and closed:
            continue  # not a call after all; dropped, as vLLM's parser does
        if call is None:
            break
        scan.calls.append(call)
    return scan


def _bare(text: str, tools: set[str], final: bool) -> Scan | None:
    """Calls written as bare JSON objects; None when the text is not (or cannot become) such calls."""
    pos = 0
    head = text.lstrip()
    if not final and head.startswith("`") and "```json".startswith(head):
        return Scan("")  # maybe the start of a ```json fence: hold it back
    fence = _FENCE.match(text)
    if fence and "```" in text[:fence.end()]:
        pos = fence.end()
    calls = []
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text) or text[pos] != "{":
            break
        end = _json_end(text, pos)
        body = text[pos:end] if end else text[pos:]
        complete = end is not None or final
        call = _region(body, complete)
        if call is None or call.name not in tools:
            if complete or call is not None:
                return None  # a JSON object that is not a call to an offered tool: content
            partial = _NAME_PREFIX.match(body)
            if partial is None or not any(t.startswith(json_unescape(partial.group("partial") or "")) for t in tools):
                return None
            calls.append(Call(None, "", False))  # may still become a call: hold the text back
            break
        calls.append(call)
        if end is None:
            break
        pos = end
    if not calls:  # only a fence so far: wait for what follows it
        return Scan("") if not final and pos >= len(text) else None
    return Scan("", [c for c in calls if c.name is not None])


def json_unescape(s: str) -> str:
    try:
        return json.loads(f'"{s}"')
    except json.JSONDecodeError:
        return s


def scan(text: str, tools: set[str], final: bool) -> Scan:
    """What text is content and which calls it holds; `final` once generation has ended."""
    if OPEN in text:
        return _tagged(text, final)
    bare = _bare(text, tools, final) if tools and text.lstrip()[:1] in ("{", "`") else None
    if bare is not None:
        return bare
    if not final:  # hold back a tail that may be the start of <tool_call>
        for n in range(min(len(OPEN) - 1, len(text)), 0, -1):
            if OPEN.startswith(text[-n:]):
                return Scan(text[:-n])
    return Scan(text)


def parse(text: str, tools: set[str]) -> tuple[str | None, list[tuple[str, str]]]:
    """(content or None, [(name, arguments JSON)]) for a finished generation."""
    s = scan(text, tools, final=True)
    calls = [(c.name, c.arguments or "{}") for c in s.calls if c.name is not None and c.complete]
    if not calls:
        return text, []
    return (s.content if s.content.strip() else None), calls


def hermes(calls: list[tuple[str, str]]) -> str:
    """[(name, arguments JSON text)] -> the Hermes `<tool_call>` blocks the chat template asks for, one per
    call; arguments that are not JSON stay a JSON string (which parse() then rejects, as it would in text)."""
    blocks = []
    for name, arguments in calls:
        try:
            args = json.loads(arguments)
        except (TypeError, json.JSONDecodeError):
            args = arguments
        call = json.dumps({"name": name, "arguments": args}, ensure_ascii=False)
        blocks.append(f"{OPEN}\n{call}\n{CLOSE}")
    return "\n".join(blocks)
