"""Pull the program out of a model's answer: fenced blocks, bare code, restated functions, raw continuations.

Chat answers: the fenced block that defines the entry point (else the longest Python block), or the code part of an
unfenced answer, pruned to its imports, definitions and constants (no demo prints, no `if __name__` blocks).
Completion answers: the continuation cut at the first stop sequence, as the HumanEval harnesses cut it.
Nothing here runs code; sandbox.py does.
"""

from __future__ import annotations

import ast
import re
import warnings

# Where a base model's continuation of a HumanEval prompt stops being the function body.
HUMANEVAL_STOPS = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\n```", "\nassert "]
# MBPP completions write the whole function, so a new top-level def is not a stop.
MBPP_STOPS = ["\nif __name__", "\nprint(", "\n```", "\nassert ", '\n"""']

_FENCE = re.compile(r"^[ \t]*```[ \t]*([\w+#.-]*)[^\n]*\n(.*?)(?:^[ \t]*```|\Z)", re.DOTALL | re.MULTILINE)
_PY_TAGS = {"", "python", "py", "python3", "py3"}
_FENCE_LINE = re.compile(r"^[ \t]*```[^\n]*(\n|\Z)", re.MULTILINE)
_CODE_START = re.compile(r"^(def |async def |class |import |from \S+ import |@)")


def _parse(code: str) -> ast.Module:
    with warnings.catch_warnings():  # model code full of invalid escapes is still code
        warnings.simplefilter("ignore")
        return ast.parse(code)


def cut_at_stops(text: str, stops: list[str]) -> str:
    """The text up to the earliest stop sequence (all of it when none occurs)."""
    cut = min((i for i in (text.find(s) for s in stops if s) if i >= 0), default=len(text))
    return text[:cut]


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language tag, code) of every fenced block, in order; an unterminated last block counts."""
    return [(m.group(1).lower(), m.group(2)) for m in _FENCE.finditer(text)]


def defines(code: str, name: str) -> bool:
    return re.search(rf"^\s*(async\s+)?def\s+{re.escape(name)}\s*\(", code, re.MULTILINE) is not None


def extract_code(answer: str, entry_point: str | None = None) -> str:
    """The program in a chat answer: the right fenced block, else the code part of unfenced text.

    Malformed fences seen from small models are tolerated: the language tag on its own line after the
    fence ("```\npython\n"), and stray empty fences: when no block defines the entry point, the answer
    with its fence lines removed is a candidate too."""
    blocks = [_drop_tag_line(code) for tag, code in code_blocks(answer) if tag in _PY_TAGS]
    blocks = [b for b in blocks if b.strip()]
    if entry_point and not any(defines(b, entry_point) for b in blocks):
        bare = _unfenced(_FENCE_LINE.sub("", answer))
        if defines(bare, entry_point):
            blocks.append(bare)
    if blocks:
        if entry_point:
            with_entry = [b for b in blocks if defines(b, entry_point)]
            if with_entry:
                return max(with_entry, key=len)
        return max(blocks, key=len)
    return _unfenced(answer)


def _drop_tag_line(code: str) -> str:
    """A block whose first line is only a language tag ("python") without it."""
    first, _, rest = code.partition("\n")
    return rest if first.strip().lower() in _PY_TAGS - {""} else code


def _unfenced(answer: str) -> str:
    """From the first line that starts code, the longest run of lines that parses (prose after it dropped)."""
    lines = answer.splitlines()
    start = next((i for i, line in enumerate(lines) if _CODE_START.match(line)), None)
    if start is None:
        return answer.strip("\n") + "\n"
    for end in range(len(lines), start, -1):
        chunk = "\n".join(lines[start:end])
        try:
            _parse(chunk)
        except SyntaxError:
            continue
        return chunk.rstrip() + "\n"
    return "\n".join(lines[start:]) + "\n"


def sanitize(code: str) -> str:
    """Keep the top-level imports, functions, classes and assignments; drop demo calls, asserts, main blocks.

    Code that does not parse comes back unchanged (it fails in the sandbox, which reports why)."""
    try:
        tree = _parse(code)
    except SyntaxError:
        return code
    keep = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Assign,
            ast.AnnAssign)
    lines = code.splitlines()
    parts = []
    for node in tree.body:
        if isinstance(node, keep):
            first = min([node.lineno] + [d.lineno for d in getattr(node, "decorator_list", [])])
            parts.append("\n".join(lines[first - 1:node.end_lineno]))
    return "\n\n".join(parts) + "\n"


def _prelude(prompt: str, entry_point: str) -> str:
    """The prompt up to the entry point's def: its imports and helper functions."""
    m = re.search(rf"^(async\s+)?def\s+{re.escape(entry_point)}\s*\(", prompt, re.MULTILINE)
    return prompt[:m.start()] if m else prompt


def complete_function(prompt: str, code: str, entry_point: str) -> str:
    """A runnable solution from a prompt (signature + docstring) and the code a chat answer gave.

    A restated function replaces the prompt's (only the prompt's imports and helpers are kept before it);
    a bare body is appended to the prompt, indented if the model did not indent it."""
    if defines(code, entry_point):
        return _prelude(prompt, entry_point) + sanitize(code)
    body = code.strip("\n")
    if body and not body[0].isspace():
        body = "\n".join("    " + line if line.strip() else line for line in body.splitlines())
    return prompt + body + "\n"
