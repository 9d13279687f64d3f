"""One real TIR run on the default model (zen eval gsm8k --mode tir's loop, zenlm/eval/tir.py): the model writes a
python block, the sandbox runs it, its output comes back as an ```output block, and the model ends with a \\boxed
answer that is scored. One short greedy problem (GSM8K test #1, which the model solves with code)."""

import re
import subprocess
import sys

from zenlm.eval.tasks.gsm8k import GSM8K
from zenlm.eval.tir import tir_answers


def test_a_gsm8k_problem_through_the_tir_loop(default_llm):
    task = GSM8K()
    sample = task.samples("tir")[1]  # "A robe takes 2 bolts of blue fiber and half that much white fiber ..."
    [(got, text)] = list(tir_answers(default_llm, [sample], max_tokens=400))
    assert got is sample
    blocks = re.findall(r"```python\n(.*?)```\n```output\n(.*?)\n```\n", text, re.S)
    assert blocks, text
    code, output = blocks[0]
    ran = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert output == ran.stdout.rstrip("\n")  # the block shows what the code printed
    assert "\\boxed" in text.split("```output")[-1], text  # the answer comes after the output
    answer, correct = task.score(sample, text)
    assert (answer, correct) == ("3", True), text
