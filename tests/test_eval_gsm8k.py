"""GSM8K: the shipped data, both prompt formats, and golden tests for the answer extractor."""

import pytest

from zenlm.eval.task import Sample
from zenlm.eval.tasks import TASKS
from zenlm.eval.tasks.gsm8k import GSM8K, INSTRUCTION, extract, last_boxed, normalize


@pytest.mark.parametrize("text, answer", [
    ("She makes 9 * 2 = $18 every day.\nThe answer is 18.", "18"),
    ("The total is $1,234.", "1234"),
    ("So he pays 1,450,000 dollars in all", "1450000"),
    ("The answer is \\boxed{42}.", "42"),
    ("First 3 + 4 = 7, so \\boxed{7} and then 12 more words 99", "7"),  # \boxed wins over a later number
    ("\\boxed{\\$18.00}", "18"),
    ("\\boxed{18 \\text{ dollars}}", "18"),
    ("\\boxed{1,600}", "1600"),
    ("\\boxed{ {5} }", "5"),  # nested braces
    ("\\boxed{} but the answer is 5", "5"),  # an empty box: fall back to the text
    ("The temperature drops to -5 degrees.", "-5"),
    ("It falls by −12.", "-12"),  # a Unicode minus
    ("Each slice costs 2.50 dollars.", "2.5"),
    ("He runs 3.5 hours.", "3.5"),
    ("Between 2-3 hours", "3"),  # a hyphen between numbers is no minus sign
    ("That is 75%.", "75"),
    ("It costs .5 dollars", "0.5"),
    ("The answer is 18.00.", "18"),
    ("0.0", "0"),
    ("So 100 - 40 = 60 cookies remain.", "60"),
    ("no number at all", None),
    ("", None),
])
def test_extract_goldens(text, answer):
    assert extract(text) == answer


def test_normalize_and_boxed():
    assert normalize("1,000") == "1000" and normalize("$18.") == "18" and normalize("-0") == "0"
    assert normalize("1e3") == "1000" and normalize("abc") is None and normalize("nan") is None
    assert last_boxed("a \\boxed{1} b \\boxed{x{y}z}") == "x{y}z"
    assert last_boxed("\\boxed{unclosed") is None and last_boxed("none") is None


def test_data_and_prompts():
    task = TASKS["gsm8k"]()
    assert task.name == "gsm8k" and task.metric == "accuracy"
    chat = task.samples("chat")
    assert len(chat) == 1319 and len({s.id for s in chat}) == 1319
    assert chat[0].id == "gsm8k/0" and chat[0].reference == "18" and chat[0].stop == []
    assert chat[0].prompt == [{"role": "user", "content": chat[0].prompt[0]["content"]}]
    assert chat[0].prompt[0]["content"].startswith("Janet’s ducks") and chat[0].prompt[0]["content"].endswith(
        INSTRUCTION)
    assert all(normalize(s.reference) is not None for s in chat)  # every gold is a number (some with commas)

    base = task.samples("completion")
    text = base[0].prompt
    assert text.count("Question: ") == 5 and text.endswith("Answer:")  # Qwen's 4 shots, then the question
    assert "<<" not in text and "####" not in text and text.count("The answer is ") == 4
    assert "Question:" in base[0].stop
    assert task.samples("completion", num_shots=0)[0].prompt.startswith("Question: Janet")
    two = task.samples("chat", num_shots=2)[0].prompt
    assert [m["role"] for m in two] == ["user", "assistant"] * 2 + ["user"] and "\\boxed{" in two[1]["content"]
    with pytest.raises(ValueError, match="num-shots"):
        task.samples("chat", num_shots=-1)
    with pytest.raises(ValueError, match="mode"):
        task.samples("text")


def test_score():
    task = GSM8K()
    s = Sample("gsm8k/x", "q", "1,600")
    assert task.score(s, "so \\boxed{1600}") == ("1600", True)
    assert task.score(s, "The answer is $1,600.00.") == ("1600", True)
    assert task.score(s, "The answer is 160.") == ("160", False)
    assert task.score(s, "I don't know") == ("", False)
    assert task.score(s, "\\boxed{" * 50) == ("", False)  # never raises on junk
