"""Tools from plain functions (zenlm/agent/tools.py, docstrings.py): JSON schemas from type hints and
docstrings, binding the model's arguments, and the errors for what cannot be a tool."""

import enum
import json
from typing import Literal, Optional

import pytest

from zenlm.agent.docstrings import parse_docstring
from zenlm.agent.tools import ArgumentError, Tool, ToolOutput, as_tools, output_of, tool


class Unit(enum.Enum):
    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


def weather(city: str, days: int = 1, unit: Unit = Unit.CELSIUS, detail: Literal["short", "long"] = "short",
            hours: list[int] | None = None, tags: Optional[dict[str, float]] = None, alerts: bool = False,
            ratio: float = 0.5, pairs: tuple[str, ...] = ()):
    """Get the weather forecast for a city.

    Longer explanation that is not the description.

    Args:
        city (str): The city's name,
            for example "Paris".
        days: How many days ahead.
        unit: The temperature unit.
        detail: How much to say.

    Returns:
        The forecast.
    """


def test_schema_from_hints_and_google_docstring():
    t = Tool.from_function(weather)
    assert t.schema == {"type": "function", "function": {
        "name": "weather", "description": "Get the weather forecast for a city.",
        "parameters": {"type": "object", "required": ["city"], "properties": {
            "city": {"type": "string", "description": 'The city\'s name, for example "Paris".'},
            "days": {"type": "integer", "description": "How many days ahead.", "default": 1},
            "unit": {"type": "string", "enum": ["celsius", "fahrenheit"], "description": "The temperature unit.",
                     "default": "celsius"},
            "detail": {"type": "string", "enum": ["short", "long"], "description": "How much to say.",
                       "default": "short"},
            "hours": {"type": "array", "items": {"type": "integer"}},
            "tags": {"type": "object", "additionalProperties": {"type": "number"}},
            "alerts": {"type": "boolean", "default": False},
            "ratio": {"type": "number", "default": 0.5},
            "pairs": {"type": "array", "items": {"type": "string"}, "default": []},
        }}}}
    json.dumps(t.schema)  # the whole schema is JSON


def test_numpy_docstring():
    def area(width: float, height: float, unit: str = "m"):
        """Area of a rectangle.

        Parameters
        ----------
        width : float
            The width,
            in units.
        height : float
            The height.
        unit : str, optional
            The unit.

        Returns
        -------
        float
            width * height
        """
    props = Tool.from_function(area).parameters["properties"]
    assert props["width"]["description"] == "The width, in units."
    assert props["height"]["description"] == "The height."
    assert props["unit"] == {"type": "string", "description": "The unit.", "default": "m"}
    assert "float" not in props  # the Returns section's lines are not parameters


def test_docstring_edges():
    assert parse_docstring(None) == ("", {})
    assert parse_docstring("One line only.") == ("One line only.", {})
    summary, params = parse_docstring("""Sum.

        Args:
            *values: Numbers to add.
            start (int, optional): Where to begin.
        Raises:
            ValueError: never.
        """)
    assert summary == "Sum." and params == {"values": "Numbers to add.", "start": "Where to begin."}


def test_unions_any_and_missing_hints():
    def f(x: int | str, y, z: Optional[int] = None):
        pass
    props = Tool.from_function(f).parameters
    assert props["properties"]["x"] == {"anyOf": [{"type": "integer"}, {"type": "string"}]}
    assert props["properties"]["y"] == {}  # no hint: any JSON value
    assert props["properties"]["z"] == {"type": "integer"}
    assert props["required"] == ["x", "y"]


@pytest.mark.parametrize("fn,message", [
    (lambda x: x, "pass name="),
    (lambda *args: 0, "pass name="),
])
def test_lambda_needs_a_name(fn, message):
    with pytest.raises(ValueError, match=message):
        Tool.from_function(fn)


def test_types_that_cannot_be_tools():
    class Point:
        pass

    def takes_point(p: Point):
        pass

    def star(*values: int):
        pass

    def keys(d: dict[int, str]):
        pass

    def positional(a: int, /):
        pass
    with pytest.raises(ValueError, match="tool takes_point, parameter p: the type .*Point.* has no JSON schema"):
        Tool.from_function(takes_point)
    with pytest.raises(ValueError, match=r"\*values has no JSON schema"):
        Tool.from_function(star)
    with pytest.raises(ValueError, match="dict keys must be str"):
        Tool.from_function(keys)
    with pytest.raises(ValueError, match="positional-only"):
        Tool.from_function(positional)
    with pytest.raises(ValueError, match="timeout must be positive"):
        Tool.from_function(star.__call__, name="x", timeout=0)


def test_decorator_keeps_the_function_callable():
    @tool
    def add(a: int, b: int) -> int:
        """Add two integers."""
        return a + b

    @tool(name="plus", timeout=2.5)
    def add2(a: int, b: int) -> int:
        return a + b
    assert isinstance(add, Tool) and add(2, 3) == 5 and add.description == "Add two integers."
    assert add2.name == "plus" and add2.timeout == 2.5 and add2.description == ""


def test_bind_parses_and_coerces():
    t = Tool.from_function(weather)
    assert t.bind('{"city": "Oslo", "days": "3", "unit": "fahrenheit"}') == {
        "city": "Oslo", "days": 3, "unit": Unit.FAHRENHEIT}
    assert t.bind({"city": "Oslo", "ratio": 1}) == {"city": "Oslo", "ratio": 1.0}
    assert t.bind({"city": "Oslo", "days": 2.0}) == {"city": "Oslo", "days": 2}


@pytest.mark.parametrize("arguments,message", [
    ('{"city": "Oslo", "wind": 3}',
     r"unexpected argument 'wind' \(weather takes city, days, unit, detail, hours, tags, alerts, ratio, pairs\)"),
    ('{"days": 2}', "missing a required argument: 'city'"),
    ('{"city": "Oslo", "unit": "kelvin"}', r"'kelvin' is not one of \['celsius', 'fahrenheit'\]"),
    ('{"city": "Oslo"', "not valid JSON"),
    ('[1, 2]', "must be a JSON object, got list"),
])
def test_bind_errors(arguments, message):
    with pytest.raises(ArgumentError, match=message):
        Tool.from_function(weather).bind(arguments)


def test_one_string_parameter_takes_plain_text_or_a_fence():
    def run(code: str):
        pass
    t = Tool.from_function(run)
    assert t.bind("print(1)") == {"code": "print(1)"}
    assert t.bind("```python\nx = 1\nprint(x)\n```") == {"code": "x = 1\nprint(x)"}
    assert t.bind('"just a JSON string"') == {"code": "just a JSON string"}
    with pytest.raises(ArgumentError, match="missing a required argument: 'code'"):
        t.bind("")

    def ping():
        pass
    assert Tool.from_function(ping).bind("") == {} and Tool.from_function(ping).bind(None) == {}


def test_as_tools_and_outputs():
    def a() -> None:
        pass
    with pytest.raises(ValueError, match="two tools are named 'a'"):
        as_tools([a, Tool.from_function(a)])
    with pytest.raises(ValueError, match="a tool must be a function, a Tool or a built-in's name, got int"):
        as_tools([3])
    with pytest.raises(ValueError, match="unknown tool 'pyhton'; the built-in tools are: python"):
        as_tools(["pyhton"])
    assert [t.name for t in as_tools(["python"])] == ["python"]
    assert output_of("x") == ToolOutput("x")
    assert output_of(None) == ToolOutput("")
    assert output_of({"n": 1, "s": "é"}) == ToolOutput('{"n": 1, "s": "é"}')
    assert output_of(ToolOutput("t", [b"png"])).images == [b"png"]
