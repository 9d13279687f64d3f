"""Tool-integrated reasoning (zenlm/agent/tir.py): a scripted model drives the loop through a real sandbox
session: a block that errors, one that times out, one that prints a lot, no code at all, a \\boxed answer,
state kept between blocks, the call limit, the token budget, and fences that are not python blocks."""

import re

import pytest

from zenlm.agent.sandbox import Session
from zenlm.agent.tir import FENCE_STOP, LIMIT_NOTE, TIR_SYSTEM, last_closed_python, open_block, output_block, solve


class Rounds:
    """Each round writes the next scripted text, cut at the first FENCE_STOP like the engine's stop string;
    a word counts as a token and max_tokens cuts the round short."""

    def __init__(self, texts):
        self.texts, self.seen = list(texts), []

    def __call__(self, messages, max_tokens):
        self.seen.append((messages, max_tokens))
        assert self.texts, "the loop asked for more rounds than the script has"
        text = self.texts.pop(0)
        at = text.find(FENCE_STOP)
        hit = at != -1
        text = text[:at] if hit else text
        words = re.findall(r"\s*\S+\s*", text)
        if len(words) > max_tokens:
            return "".join(words[:max_tokens]), False, max_tokens
        return text, hit, len(words)


@pytest.fixture(scope="module")
def session():
    with Session(timeout=2) as s:
        yield s


def test_fence_reading():
    assert open_block("a\n```python\nx = 1\n") == ("python", 12)
    assert open_block("```python\nx\n```\nprose\n")[0] is None
    assert open_block("```\nplain\n")[0] == ""
    assert open_block("text ```python\n")[0] is None  # not at a line start
    assert last_closed_python("Let me compute.\n```python\nprint(2)\n```") == "print(2)\n"
    assert last_closed_python("```text\nhi\n```") is None and last_closed_python("no code") is None


def test_block_output_then_boxed_answer(session):
    model = Rounds(["I will compute.\n```python\nprint(17 * 23)\n```\n", "So the answer is \\boxed{391}."])
    p = solve(model, "What is 17 * 23?", session)
    assert p.text == ("I will compute.\n```python\nprint(17 * 23)\n```\n```output\n391\n```\n"
                      "So the answer is \\boxed{391}.")
    assert (p.done, p.reason, p.calls, p.rounds) == (True, "boxed", 1, 2)
    first, second = model.seen
    assert first[0] == [{"role": "system", "content": TIR_SYSTEM}, {"role": "user", "content": "What is 17 * 23?"}]
    assert second[0][-1] == {"role": "assistant", "content": p.text[:p.text.index("So the")]}  # continued


def test_error_gives_its_last_line_and_state_persists(session):
    model = Rounds(["```python\nx = 5\nprint(x / 0)\n```\n", "```python\nprint(x + 1)\n```\n", "\\boxed{6}"])
    p = solve(model, "q", session)
    assert p.outputs == ["```output\nZeroDivisionError: division by zero\n```\n", "```output\n6\n```\n"]
    assert p.reason == "boxed" and p.calls == 2


def test_timeout_is_reported_and_the_loop_goes_on(session):
    model = Rounds(["```python\nwhile True:\n    pass\n```\n", "It timed out. \\boxed{0}"])
    p = solve(model, "q", session)
    assert p.outputs == ["```output\nTimeoutError: the cell ran past 2 s\n```\n"] and p.reason == "boxed"


def test_long_output_keeps_head_and_tail(session):
    model = Rounds(["```python\nfor i in range(2000):\n    print(i)\n```\n", "\\boxed{1999}"])
    p = solve(model, "q", session, limit=100)
    out = p.outputs[0]
    assert out.startswith("```output\n0\n1\n2\n") and out.endswith("1998\n1999\n```\n")
    assert "characters omitted" in out and len(out) < 200


def test_no_code_ends_with_the_answer(session):
    model = Rounds(["Two plus two is four, so the result is 4."])
    p = solve(model, "q", session)
    assert (p.reason, p.calls, p.rounds, p.outputs) == ("answer", 0, 1, [])


def test_boxed_answer_ends_even_with_code_after(session):
    model = Rounds(["\\boxed{12}\n```python\nprint(1)\n```\n"])
    p = solve(model, "q", session)
    assert p.reason == "boxed" and p.calls == 0


def test_block_closed_at_end_of_turn_still_runs(session):
    model = Rounds(["```python\nprint(40 + 2)\n```", "\\boxed{42}"])  # no newline after the fence: no stop hit
    p = solve(model, "q", session)
    assert p.outputs == ["```output\n42\n```\n"] and p.text.startswith("```python\nprint(40 + 2)\n```\n```output")


def test_other_fences_do_not_run(session):
    model = Rounds(["Data:\n```\n", "1 2 3\n```\n", "```python\nprint(sum([1, 2, 3]))\n```\n", "\\boxed{6}"])
    p = solve(model, "q", session)
    assert p.text.startswith("Data:\n```\n1 2 3\n```\n```python") and p.outputs == ["```output\n6\n```\n"]
    assert p.calls == 1 and p.rounds == 4


def test_call_limit(session):
    block = "```python\nprint(1)\n```\n"
    model = Rounds([block, block, block])
    p = solve(model, "q", session, max_calls=2)
    assert p.calls == 2 and p.reason == "max_calls" and p.text.endswith("```\n" + LIMIT_NOTE)


def test_token_budget(session):
    model = Rounds(["```python\nprint(3)\n```\n", "word " * 50])
    p = solve(model, "q", session, max_tokens=10)
    assert p.reason == "length" and p.tokens == 10 and model.seen[1][1] == 8  # the first round wrote 2


def test_output_block_of_an_empty_cell():
    class Cell:
        stdout, error = "", None

    assert output_block(Cell()) == "```output\n\n```\n"
