"""Scoring tooluse answers as BFCL scores its AST categories: read the calls a model made, then check them.

read_calls uses the parser zen serve uses (Hermes `<tool_call>` blocks, or bare JSON calls to an offered
tool), so text from the engine and text rebuilt from a server's tool_calls read alike; a call the
model tried to write but that does not parse counts as unreadable (always wrong, even where no call
was wanted). check: the same number of calls as expected, each expected call matched by a different
model call in any order: the exact function name, no unknown parameter, every parameter that may not
be left out present, each value of the schema's type and equal to an accepted value (an integer where
a number is asked for is fine; strings compared case-insensitively without spaces and ,./-_*^;
enums exactly; arrays element by element). An empty string for an optional string parameter counts
as leaving it out, as in BFCL, whose answers mark such a parameter with "".
"""

from __future__ import annotations

import json
import re
from itertools import permutations
from typing import Any

from zenlm.tokenizer.tool_calls import OPEN, parse

Call = tuple[str, Any]  # (function name, its parsed arguments)
_IGNORED = re.compile(r"[\s,./\-_*^]")
_FENCE = re.compile(r"\s*```(?:json)?\s*")
_NAME_KEY = re.compile(r'"name"\s*:')


def read_calls(text: str, offered: set[str]) -> tuple[list[Call], int]:
    """(the calls the text makes, how many calls it tried to make that cannot be read)."""
    _, found = parse(text, offered)
    calls, unreadable = [], 0
    for name, arguments in found:
        try:
            calls.append((name, json.loads(arguments)))
        except json.JSONDecodeError:
            unreadable += 1
    if OPEN in text:  # a <tool_call> block the parser dropped: malformed JSON, no name
        unreadable += max(0, text.count(OPEN) - len(found))
    elif not found:  # a bare JSON call the parser did not take (another function's name, broken JSON)
        body = text[_FENCE.match(text).end():] if _FENCE.match(text) else text.lstrip()
        unreadable += body.startswith("{") and _NAME_KEY.search(body) is not None
    return calls, unreadable


def answer_json(calls: list[Call], unreadable: int) -> str:
    """The calls as compact JSON: what samples.jsonl shows as the answer."""
    items = [{"name": n, "arguments": a} for n, a in calls] + [{"name": None, "error": "unreadable"}] * unreadable
    return json.dumps(items, ensure_ascii=False, separators=(",", ":"))


def standard(s: str) -> str:
    """A string as BFCL compares it: lower case, without whitespace and , . / - _ * ^, single quotes as double."""
    return _IGNORED.sub("", s).lower().replace("'", '"')


def same(value: Any, want: Any, spec: dict) -> bool:
    """Whether a model's value equals an accepted one, for a parameter of JSON-schema `spec`."""
    kind = spec.get("type")
    if kind == "boolean":
        return isinstance(value, bool) and value == want
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool) and value == want
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool) and value == want
    if kind == "array":
        return (isinstance(value, list) and len(value) == len(want)
                and all(same(v, w, spec.get("items", {})) for v, w in zip(value, want)))
    if kind == "string":
        if not isinstance(value, str):
            return False
        return value == want if "enum" in spec else standard(value) == standard(want)
    return value == want


def fits(call: Call, expected: dict, schemas: dict[str, dict]) -> bool:
    """Whether one model call is the expected call (expected: name, arguments {param: accepted values},
    optional [params that may be left out]); schemas: each offered function's parameters schema."""
    name, args = call
    if name != expected["name"] or not isinstance(args, dict):
        return False
    props = schemas[name].get("properties", {})
    if any(p not in props for p in args):
        return False
    for p, accepted in expected["arguments"].items():
        if p not in args or (args[p] == "" and props[p].get("type") == "string"):  # left out
            if p not in expected["optional"]:
                return False
        elif not any(same(args[p], a, props[p]) for a in accepted):
            return False
    return True


def check(calls: list[Call], expected: list[dict], schemas: dict[str, dict]) -> bool:
    """Whether the calls are exactly the expected ones, in any order (no call expected: none made)."""
    if len(calls) != len(expected):
        return False
    ok = [[fits(c, e, schemas) for e in expected] for c in calls]
    return any(all(ok[i][j] for i, j in enumerate(order)) for order in permutations(range(len(expected))))
