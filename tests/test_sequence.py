"""Sequence bookkeeping: end-of-turn, stop tokens, stop strings (held back while they may still match)."""

from zenlm.engine.sampling import SamplingParams
from zenlm.engine.sequence import Sequence


class CharStream:
    """A detokenizer where token id i is the character chr(i)."""

    def push(self, i: int) -> str:
        return chr(i)

    def flush(self) -> str:
        return ""


def run(text: str, **params) -> tuple[list[str], Sequence]:
    seq = Sequence([1, 2], SamplingParams(**params).resolved({}), {0}, CharStream())
    pieces = []
    for ch in text:
        pieces.append(seq.append(ord(ch)))
        if seq.finished:
            break
    return pieces, seq


def test_stop_string_is_cut_and_never_streamed():
    pieces, seq = run("Hello END world", stop=["END"])
    assert seq.finish_reason == "stop" and seq.result().text == "Hello "
    assert "".join(pieces) == "Hello "
    assert pieces[6] == "" and pieces[7] == ""  # "E", "EN" held back while they may become "END"


def test_false_alarm_is_released():
    pieces, seq = run("a ENx", stop=["END"], max_tokens=5)
    assert "".join(pieces) == "a ENx" and seq.finish_reason == "length"


def test_end_of_turn_and_stop_token_ids():
    pieces, seq = run("ab\0cd")
    assert seq.result().text == "ab" and seq.finish_reason == "stop" and seq.output_ids == [97, 98]
    _, seq = run("abc", stop_token_ids=[ord("b")])
    assert seq.result().text == "a"
    _, seq = run("ab\0cd", ignore_eos=True, max_tokens=4)
    assert seq.result().text == "ab\0c" and seq.finish_reason == "length"


def test_max_tokens():
    _, seq = run("abcdef", max_tokens=3)
    assert seq.result().text == "abc" and seq.finish_reason == "length" and seq.result().prompt_tokens == 2
