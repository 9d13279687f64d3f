"""Tools: plain Python functions with a JSON schema derived from their type hints and docstring.

    @tool
    def add(a: int, b: int) -> int:
        '''Add two integers.

        Args:
            a: The first number.
            b: The second number.
        '''
        return a + b

Supported hints: str, int, float, bool, list[...], tuple[X, ...], dict[str, ...], Literal[...], Enum
subclasses, X | None (Optional) and unions; a parameter without a default is required. Arguments the
model writes are bound here (call); running tools concurrently, with timeouts, is execute.py's job.
"""

from __future__ import annotations

import enum
import inspect
import json
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, Union

from zenlm.agent.docstrings import parse_docstring

NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")  # what OpenAI accepts as a function name
_FENCE = re.compile(r"^\s*```[\w+-]*[ \t]*\n(.*?)\n?```\s*$", re.S)


class ArgumentError(ValueError):
    """The model's arguments do not fit the tool; the message is shown to the model."""


@dataclass(slots=True)
class ToolOutput:
    """What a tool may return besides plain values: text for the model, and images (PNG bytes) for the user."""

    text: str
    images: list[bytes] = field(default_factory=list)


def _json_type(values: list) -> dict:
    if all(isinstance(v, bool) for v in values):
        return {"type": "boolean"}
    if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        return {"type": "integer"}
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return {"type": "number"}
    if all(isinstance(v, str) for v in values):
        return {"type": "string"}
    return {}


def schema_of(tp: Any, where: str) -> dict:
    """The JSON schema of one type hint; ValueError naming `where` for a type JSON cannot express."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    simple = {str: "string", bool: "boolean", int: "integer", float: "number", type(None): "null"}
    if tp is Any or tp is inspect.Parameter.empty:
        return {}
    if tp in simple:
        return {"type": simple[tp]}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        values = [m.value for m in tp]
        return {**_json_type(values), "enum": values}
    if origin is Literal:
        return {**_json_type(list(args)), "enum": list(args)}
    if origin in (Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return schema_of(options[0], where)
        return {"anyOf": [schema_of(a, where) for a in options]}
    if tp is list or origin is list or (origin is tuple and len(args) == 2 and args[1] is Ellipsis):
        return {"type": "array", "items": schema_of(args[0], where)} if args else {"type": "array"}
    if tp is tuple:
        return {"type": "array"}
    if tp is dict or origin is dict:
        if args and args[0] is not str:
            raise ValueError(f"{where}: dict keys must be str in JSON, got {args[0]!r}")
        return {"type": "object", "additionalProperties": schema_of(args[1], where)} if args else {"type": "object"}
    raise ValueError(f"{where}: the type {tp!r} has no JSON schema; use str, int, float, bool, list, dict, "
                     "Literal, an Enum or X | None")


def _as_json(value: Any) -> Any:
    """value as JSON would carry it (a tuple becomes a list); None when it has no JSON form."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return None


def _enum_class(tp: Any) -> type[enum.Enum] | None:
    options = [a for a in typing.get_args(tp) if a is not type(None)] if typing.get_origin(tp) in (
        Union, types.UnionType) else [tp]
    for t in options:
        if isinstance(t, type) and issubclass(t, enum.Enum):
            return t
    return None


def _coerce(value: Any, tp: Any) -> Any:
    """Small, safe conversions models need: an Enum from its value, "3" -> 3 for an int, 3 -> 3.0 for a float."""
    cls = _enum_class(tp)
    if cls is not None and not isinstance(value, cls):
        try:
            return cls(value)
        except ValueError:
            raise ArgumentError(f"{value!r} is not one of {[m.value for m in cls]}") from None
    if tp is int and isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
        return int(value)
    if tp is int and isinstance(value, float) and value.is_integer():
        return int(value)
    if tp is float and isinstance(value, (int, str)) and not isinstance(value, bool):
        try:
            return float(value)
        except ValueError:
            return value
    return value


@dataclass(slots=True)
class Tool:
    """A callable the model may use: its name, description and JSON-schema parameters, and the function."""

    name: str
    description: str
    parameters: dict
    fn: Callable[..., Any]
    timeout: float | None = None  # seconds; None: the agent's tool_timeout
    on_close: Callable[[], None] | None = field(default=None, repr=False)  # releases what the tool holds
    hints: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_function(cls, fn: Callable[..., Any], name: str | None = None, description: str | None = None,
                      timeout: float | None = None) -> Tool:
        name = name or getattr(fn, "__name__", "")
        if not NAME.match(name):
            raise ValueError(f"tool name {name!r} must be 1-64 letters, digits, '_' or '-'; pass name=...")
        if timeout is not None and not timeout > 0:
            raise ValueError(f"tool {name}: timeout must be positive, got {timeout!r}")
        summary, docs = parse_docstring(inspect.getdoc(fn))
        try:
            hints = typing.get_type_hints(fn)
        except Exception as e:  # an annotation that names something undefined
            raise ValueError(f"tool {name}: cannot read its type hints ({e})") from None
        props, required = {}, []
        for p in inspect.signature(fn).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                raise ValueError(f"tool {name}: *{p.name} has no JSON schema; name each parameter")
            if p.kind is p.POSITIONAL_ONLY:
                raise ValueError(f"tool {name}: parameter {p.name} is positional-only; arguments come by name")
            prop = schema_of(hints.get(p.name, Any), f"tool {name}, parameter {p.name}")
            if docs.get(p.name):
                prop["description"] = docs[p.name]
            if p.default is p.empty:
                required.append(p.name)
            else:
                default = _as_json(p.default.value if isinstance(p.default, enum.Enum) else p.default)
                if default is not None:
                    prop["default"] = default
            props[p.name] = prop
        parameters = {"type": "object", "properties": props, "required": required}
        return cls(name, description if description is not None else summary, parameters, fn, timeout,
                   hints={k: v for k, v in hints.items() if k != "return"})

    @property
    def schema(self) -> dict:
        """The OpenAI / chat-template tool entry: {"type": "function", "function": {...}}."""
        return {"type": "function",
                "function": {"name": self.name, "description": self.description, "parameters": self.parameters}}

    def bind(self, arguments: str | dict | None) -> dict:
        """The model's arguments (JSON text or a dict) as keyword arguments; ArgumentError says what is wrong."""
        props = self.parameters.get("properties", {})
        if arguments is None or (isinstance(arguments, str) and not arguments.strip()):
            arguments = {}
        if isinstance(arguments, str):
            try:
                arguments = json.loads(arguments)
            except json.JSONDecodeError as e:
                only = next(iter(props)) if len(props) == 1 else None
                if only is None or props[only].get("type") != "string":
                    raise ArgumentError(f"the arguments are not valid JSON ({e})") from None
                fence = _FENCE.match(arguments)  # one string parameter: the text itself is the argument
                arguments = {only: fence.group(1) if fence else arguments.strip()}
        if not isinstance(arguments, dict):
            if len(props) != 1:
                raise ArgumentError(f"the arguments must be a JSON object, got {type(arguments).__name__}")
            arguments = {next(iter(props)): arguments}
        unknown = [k for k in arguments if k not in props]
        if unknown:
            takes = ", ".join(props) or "no arguments"
            raise ArgumentError(f"unexpected argument {unknown[0]!r} ({self.name} takes {takes})")
        kwargs = {k: _coerce(v, self.hints.get(k, Any)) for k, v in arguments.items()}
        try:
            inspect.signature(self.fn).bind(**kwargs)
        except TypeError as e:
            raise ArgumentError(str(e)) from None
        return kwargs

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)

    def close(self) -> None:
        if self.on_close is not None:
            self.on_close()


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None, description: str | None = None,
         timeout: float | None = None):
    """Decorator: `@tool` or `@tool(name=..., timeout=...)` turns a function into a Tool (still callable)."""
    def wrap(f: Callable[..., Any]) -> Tool:
        return Tool.from_function(f, name=name, description=description, timeout=timeout)
    return wrap(fn) if fn is not None else wrap


def as_tools(items: list) -> list[Tool]:
    """Tools, plain functions and built-in tools by name ("python") -> Tools, each name once."""
    tools, seen = [], set()
    for item in items:
        if isinstance(item, Tool):
            t = item
        elif isinstance(item, str):
            from zenlm.agent.builtin import builtin_tools

            t = builtin_tools([item])[0]
        elif callable(item):
            t = Tool.from_function(item)
        else:
            raise ValueError(f"a tool must be a function, a Tool or a built-in's name, got {type(item).__name__}")
        if t.name in seen:
            raise ValueError(f"two tools are named {t.name!r}")
        seen.add(t.name)
        tools.append(t)
    return tools


def output_of(value: Any) -> ToolOutput:
    """A tool's return value as text for the model (JSON for structured values)."""
    if isinstance(value, ToolOutput):
        return value
    if isinstance(value, str):
        return ToolOutput(value)
    if value is None:
        return ToolOutput("")
    try:
        return ToolOutput(json.dumps(value, ensure_ascii=False, default=str))
    except (TypeError, ValueError):
        return ToolOutput(str(value))
