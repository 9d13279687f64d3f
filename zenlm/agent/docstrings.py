"""A tool function's docstring -> (description, {parameter: description}).

The description is the docstring's first line. Parameter descriptions come from a Google-style section
(`Args:` / `Arguments:` / `Parameters:`, items `name (type): text`) or a numpy-style one (`Parameters`
over a line of dashes, items `name : type` with the text indented below). Other sections are ignored.
"""

from __future__ import annotations

import inspect
import re

GOOGLE_HEADERS = {"args:", "arguments:", "parameters:", "params:", "keyword args:", "keyword arguments:"}
NUMPY_HEADERS = {"parameters", "other parameters"}
_GOOGLE_ITEM = re.compile(r"^\*{0,2}([A-Za-z_]\w*)\s*(?:\([^)]*\))?\s*:\s*(.*)$")
_NUMPY_ITEM = re.compile(r"^\*{0,2}([A-Za-z_]\w*)\s*(?::.*)?$")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def _dashes(line: str) -> bool:
    s = line.strip()
    return len(s) >= 3 and set(s) == {"-"}


def _google(lines: list[str], i: int, base: int, out: dict[str, str]) -> int:
    """Items of a Google section starting at lines[i]; returns the index after the section."""
    item_indent, name = None, None
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        ind = _indent(line)
        if ind <= base:
            break
        if item_indent is None:
            item_indent = ind
        m = _GOOGLE_ITEM.match(line.strip()) if ind == item_indent else None
        if m:
            name = m.group(1)
            out[name] = m.group(2).strip()
        elif name is not None and ind > item_indent:
            out[name] = f"{out[name]} {line.strip()}".strip()
        i += 1
    return i


def _numpy(lines: list[str], i: int, base: int, out: dict[str, str]) -> int:
    """Items of a numpy section (after its dashes) starting at lines[i]; returns the index after it."""
    name = None
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        ind = _indent(line)
        if ind < base or (ind == base and i + 1 < len(lines) and _dashes(lines[i + 1])):
            break  # dedented, or the next section's header
        m = _NUMPY_ITEM.match(line.strip()) if ind == base else None
        if m:
            name = m.group(1)
            out[name] = ""
        elif name is not None and ind > base:
            out[name] = f"{out[name]} {line.strip()}".strip()
        i += 1
    return i


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """(first line, {parameter name: description}) of a docstring; ("", {}) without one."""
    if not doc or not doc.strip():
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    params: dict[str, str] = {}
    i = 0
    while i < len(lines):
        line, key = lines[i], lines[i].strip().lower()
        if key in GOOGLE_HEADERS:
            i = _google(lines, i + 1, _indent(line), params)
        elif key in NUMPY_HEADERS and i + 1 < len(lines) and _dashes(lines[i + 1]):
            i = _numpy(lines, i + 2, _indent(line), params)
        else:
            i += 1
    return lines[0].strip(), params
