"""HumanEval and MBPP: the extractor's golden cases, the prompts, and every reference solution passing."""

from concurrent.futures import ThreadPoolExecutor
from importlib import resources

import pytest

from zenlm.eval.extract import HUMANEVAL_STOPS, code_blocks, complete_function, cut_at_stops, extract_code, sanitize
from zenlm.eval.tasks import TASKS, get_task, humaneval, mbpp
from zenlm.eval.tasks.humaneval import HumanEval
from zenlm.eval.tasks.mbpp import MBPP

PROMPT = 'import math\n\n\ndef helper(x):\n    return x * 2\n\n\ndef double_all(xs: list) -> list:\n    """Double."""\n'

# ---- the extractor, golden cases


def test_fenced_block_with_prose_and_tag():
    answer = "Sure! Here is the code:\n\n```python\ndef f(x):\n    return x + 1\n```\n\nIt adds one."
    assert extract_code(answer, "f") == "def f(x):\n    return x + 1\n"


def test_fenced_block_without_tag_and_other_languages():
    answer = "Install nothing:\n```bash\npip install nothing\n```\n```\ndef f(x):\n    return 2\n```\n"
    assert code_blocks(answer)[0] == ("bash", "pip install nothing\n")
    assert extract_code(answer, "f") == "def f(x):\n    return 2\n"


def test_the_block_defining_the_entry_point_wins():
    answer = ("```python\nimport os\nimport sys\nimport re\nprint(g(3))  # usage\n```\n"
              "```python\ndef g(n):\n    return n\n```\n```python\nassert g(1) == 1\n```")
    assert extract_code(answer, "g") == "def g(n):\n    return n\n"
    assert extract_code(answer, "missing").startswith("import os")  # else the longest python block


def test_unterminated_block_counts():
    assert extract_code("```python\ndef f():\n    return 1\n", "f") == "def f():\n    return 1\n"


def test_malformed_fences_small_models_write():
    """Seen from the default model on HumanEval: the tag on its own line, and a stray empty fence first."""
    tag_line = "```\npython\ndef f(x):\n    return x + 1\n```"
    assert extract_code(tag_line, "f") == "def f(x):\n    return x + 1\n"
    stray = "```\n```\npython\nfrom typing import List\n\n\ndef f(xs: List[int]) -> int:\n    return len(xs)\n```"
    assert extract_code(stray, "f") == "from typing import List\n\n\ndef f(xs: List[int]) -> int:\n    return len(xs)\n"


def test_unfenced_code_with_prose_around():
    answer = "Here is my solution.\ndef f(x):\n    return x * 3\n\nThis triples x, as asked."
    assert extract_code(answer, "f") == "def f(x):\n    return x * 3\n"
    assert extract_code("no code at all", "f") == "no code at all\n"


def test_restated_function_does_not_duplicate_the_prompt():
    code = "def double_all(xs: list) -> list:\n    return [helper(x) for x in xs]\n"
    out = complete_function(PROMPT, code, "double_all")
    assert out.count("def double_all") == 1 and out.count("def helper") == 1 and out.startswith("import math")
    assert '"""Double."""' not in out  # the prompt's own def (and its docstring) is replaced, not repeated


def test_bare_body_is_appended_and_indented():
    assert complete_function(PROMPT, "    return xs * 2\n", "double_all") == PROMPT + "    return xs * 2\n"
    assert complete_function(PROMPT, "return xs\n", "double_all") == PROMPT + "    return xs\n"


def test_sanitize_drops_demo_code():
    code = ("import re\n\n@staticmethod\ndef f(x):\n    return x\n\nprint(f(2))\nassert f(1) == 1\n"
            "if __name__ == '__main__':\n    f(input())\nK = 3\n")
    assert sanitize(code) == "import re\n\n@staticmethod\ndef f(x):\n    return x\n\nK = 3\n"
    assert sanitize("def f(:\n") == "def f(:\n"


def test_completion_cut_at_stop_sequences():
    completion = "    return sorted(xs)\n\n\ndef check():\n    pass\n"
    assert cut_at_stops(completion, HUMANEVAL_STOPS) == "    return sorted(xs)\n\n"
    assert cut_at_stops("    return 1\nprint(f())", HUMANEVAL_STOPS) == "    return 1"
    assert cut_at_stops("    return 1\nif __name__ == '__main__':", HUMANEVAL_STOPS) == "    return 1"
    assert cut_at_stops("    x = 1\n    def inner():\n        return 2\n", HUMANEVAL_STOPS).endswith("return 2\n")

# ---- the tasks


def test_registry():
    assert {"humaneval": HumanEval, "mbpp": MBPP}.items() <= TASKS.items()
    assert isinstance(get_task("mbpp"), MBPP)
    with pytest.raises(ValueError, match="unknown task"):
        get_task("nope")


def test_humaneval_samples():
    task = HumanEval()
    chat, comp = task.samples("chat"), task.samples("completion")
    assert len(chat) == len(comp) == 164 == len({s.id for s in chat})
    assert chat[0].id == "HumanEval/0" and chat[0].prompt[0]["role"] == "user"
    content = chat[0].prompt[0]["content"]
    assert "def has_close_elements" in content and "markdown code block" in content
    assert comp[0].prompt.endswith('"""\n') and comp[0].stop == HUMANEVAL_STOPS and chat[0].stop == []
    with pytest.raises(ValueError, match="0-shot"):
        task.samples("chat", num_shots=3)
    with pytest.raises(ValueError, match="mode"):
        task.samples("base")


def test_mbpp_samples_and_shipped_data():
    root = resources.files("zenlm.eval").joinpath("data/mbpp")
    assert "CC-BY-4.0" in root.joinpath("LICENSE-NOTE.txt").read_text()
    samples = MBPP().samples("completion")
    assert len(samples) == 427 == len({s.id for s in samples})
    first = samples[0]
    assert first.id == "mbpp/2" and first.reference["entry_point"] == "similar_elements"
    assert first.prompt.startswith('"""\nWrite a function') and first.prompt.count("assert ") == 3
    assert all(s.prompt.count("\nassert ") == 3 for s in samples)  # three shown even when more are run


def test_humaneval_scores_chat_and_completion_answers():
    task = HumanEval()
    chat, comp = task.samples("chat")[2], task.samples("completion")[2]  # truncate_number
    answer = ("Here is the function:\n```python\ndef truncate_number(number: float) -> float:\n"
              "    return number % 1.0\n\nprint(truncate_number(3.5))\n```\nDone.")
    code, ok = task.score(chat, answer)
    assert ok and "print(" not in code and code.count("def truncate_number") == 1
    assert task.score(comp, "    return number % 1.0\n\n\ndef check(candidate):\n    assert False\n")[1]
    assert not task.score(chat, "```python\ndef truncate_number(number):\n    return number\n```")[1]
    for junk in ("", "I cannot help with that.", "```python\nwhile True: pass\n```", "\x00\udcff"):
        code, ok = task.score(chat, junk)
        assert isinstance(code, str) and not ok


def test_mbpp_scores_an_answer_with_demo_code():
    task = MBPP()
    sample = task.samples("chat")[0]
    answer = ("```python\ndef similar_elements(a, b):\n    return tuple(set(a) & set(b))\n\n"
              "if __name__ == '__main__':\n    print(similar_elements(input(), input()))\n```")
    assert task.score(sample, answer)[1]
    assert not task.score(sample, "```python\ndef similar_elements(a, b):\n    return ()\n```")[1]

# ---- every reference solution passes (run concurrently, 2 workers)


@pytest.mark.slow
def test_every_humaneval_canonical_solution_passes():
    task = HumanEval()
    samples = task.samples("completion")
    canon = {p["task_id"]: p["canonical_solution"] for p in humaneval.problems()}
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda s: task.score(s, canon[s.id])[1], samples))
    assert sum(results) == 164, [s.id for s, ok in zip(samples, results) if not ok]


@pytest.mark.slow
def test_every_mbpp_reference_solution_passes():
    task = MBPP()
    samples = task.samples("chat")
    code = {f"mbpp/{p['task_id']}": p["code"] for p in mbpp.problems()}
    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda s: task.score(s, f"```python\n{code[s.id]}\n```")[1], samples))
    assert sum(results) == 427, [s.id for s, ok in zip(samples, results) if not ok]
