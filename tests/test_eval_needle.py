"""The needle task: its grid, the synthetic haystack and where the needle sits in it, prompt lengths in the
default model's tokens, scoring, flag errors, the heat map and grid it reports, and real runs of the default
model in process and against a real `zen serve`."""

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import serve_process

from zenlm import cli
from zenlm.eval.haystack import paragraph_breaks, sentences
from zenlm.eval.run import read_samples, run
from zenlm.eval.tasks.needle import (
    ANSWER_ROOM,
    INTRO,
    KEYS,
    TEMPLATE_ROOM,
    Needle,
    largest_fitting,
    lengths,
    needle_of,
    parse_depths,
    retrieved,
)
from zenlm.eval.tokens import approximate_counter, tokenizer_counter

BUDGET = TEMPLATE_ROOM + ANSWER_ROOM  # what a prompt text leaves of its cell's length


@pytest.fixture(scope="module")
def counter(gguf_path):
    """The default model's own tokenizer as a token counter."""
    from zenlm.weights.registry import resolve

    return tokenizer_counter(resolve(gguf_path).tokenizer(), "zen-coder-0.5b-instruct")


def document_of(text: str, key: str, mode: str) -> str:
    """The document part of a prompt text: between the instructions and the question."""
    assert text.startswith(INTRO + "\n\n")
    end = text.index("\n\nWhat is" if mode == "chat" else "\n\nQuestion:")
    return text[len(INTRO) + 2:end]


# ---- the grid and the flags ------------------------------------------------------------------------

@pytest.mark.parametrize("model_context, cap, expected", [
    (32768, 8192, [1024, 2048, 4096, 8192]),
    (32768, 6000, [1024, 2048, 4096, 6000]),  # a cap that is not a power of two is tried itself
    (3000, 8192, [1024, 2048, 3000]),  # so is a small model context
    (4096, 8192, [1024, 2048, 4096]),
    (131072, 131072, [1024 << i for i in range(8)]),
    (None, 2048, [1024, 2048]),  # a server that does not say its context: up to the cap
    (32768, 1024, [1024]),
    (1024, 1024, [1024]),
])
def test_lengths(model_context, cap, expected):
    assert lengths(model_context, cap) == expected


def test_grid_of_samples_and_its_ids():
    task = Needle(context_length=3000, max_context=8192, depths=(100, 0, 50), counter=approximate_counter())
    ids = [s.id for s in task.samples("completion")]
    assert ids == [f"needle/{n}/{d}" for n in (1024, 2048, 3000) for d in (0, 50, 100)]
    assert Needle(counter=approximate_counter()).lengths == [1024, 2048, 4096, 8192]
    assert Needle(counter=approximate_counter()).depths == (0, 25, 50, 75, 100)


def test_parse_depths():
    assert parse_depths("0,25,50,75,100") == (0, 25, 50, 75, 100)
    assert parse_depths(" 100, 0,50,50 ") == (0, 50, 100)


@pytest.mark.parametrize("make, message", [
    (lambda: lengths(None, 512), "--max-context must be at least 1024 tokens, got 512"),
    (lambda: lengths(1000, 8192), "the model's context is 1000 tokens; the needle task needs at least 1024"),
    (lambda: Needle(max_context=100), "--max-context must be at least 1024 tokens, got 100"),
    (lambda: parse_depths(""), "--depths needs at least one depth"),
    (lambda: parse_depths("0,50,x"), "--depths must be whole percentages from 0 to 100, got '0,50,x'"),
    (lambda: parse_depths("0,120"), "--depths must be whole percentages from 0 to 100, got 120"),
    (lambda: parse_depths("-5"), "got -5"),
    (lambda: Needle(depths=()), "--depths needs at least one depth"),
    (lambda: Needle(depths=(0.5,)), "got 0.5"),
    (lambda: Needle(counter=approximate_counter()).samples("text"), "unknown mode 'text'"),
    (lambda: Needle(counter=approximate_counter()).samples("chat", 3), "needle is 0-shot; got num_shots=3"),
])
def test_bad_options(make, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        make()


@pytest.mark.parametrize("argv, message", [
    (["--max-context", "512"], "--max-context must be at least 1024 tokens, got 512"),
    (["--max-context", "8k"], "--max-context must be a whole number, got '8k'"),
    (["--depths", "0,101"], "--depths must be whole percentages from 0 to 100, got 101"),
    (["--depths", ","], "--depths needs at least one depth"),
])
def test_cli_flag_errors_before_a_model_loads(argv, message, capsys, monkeypatch):
    import zenlm.eval.backends

    def no_model(*a, **k):
        raise AssertionError("a model was loaded before the flags were checked")

    monkeypatch.setattr(zenlm.eval.backends, "EngineBackend", no_model)
    assert cli.main(["eval", "needle", *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("zen: error: ")


# ---- the haystack and the needle ---------------------------------------------------------------------

def test_filler_is_prose_without_digits_or_keys():
    filler = sentences(3000)
    assert sentences(10) == filler[:10]  # one stream, read from its start
    text = " ".join(filler)
    assert not re.search(r"\d", text) and not any(k in text for k in KEYS) and "magic" not in text
    assert len(set(filler)) > 2700  # varied: nine sentences in ten are unique
    assert all(s[0].isupper() and s.endswith(".") for s in filler)
    assert len(set(text.split())) > 300
    breaks = paragraph_breaks(3000)
    runs = np.diff([i for i, b in enumerate(breaks) if b] + [3000])
    assert not breaks[0] and runs.min() >= 4 and runs.max() <= 7  # paragraphs of four to seven sentences


def test_needles_are_drawn_from_the_cell():
    cells = [needle_of(n, d) for n in (1024, 2048, 4096) for d in (0, 25, 50, 75, 100)]
    assert cells == [needle_of(n, d) for n in (1024, 2048, 4096) for d in (0, 25, 50, 75, 100)]
    assert len({v for _, v in cells}) == len(cells) and len({k for k, _ in cells}) > 5
    assert all(k in KEYS and re.fullmatch(r"[1-9]\d{6}", v) for k, v in cells)


def test_samples_are_deterministic_and_hold_their_needle():
    a = Needle(max_context=2048, depths=(0, 50, 100), counter=approximate_counter()).samples("chat")
    b = Needle(max_context=2048, depths=(0, 50, 100), counter=approximate_counter()).samples("chat")
    assert [(s.id, s.prompt, s.reference, s.meta) for s in a] == [(s.id, s.prompt, s.reference, s.meta) for s in b]
    for s in a:
        key, number = needle_of(s.meta["length"], s.meta["depth"])
        text = s.prompt[0]["content"]
        assert s.reference == number and s.meta["key"] == key and s.stop == []
        assert text.count(f"The special magic number for {key} is {number}.") == 1 and text.count(number) == 1
        assert text.endswith(f"What is the special magic number for {key} mentioned in the text above? "
                             "Answer with the number only.")
        assert s.meta["prompt_tokens"] == approximate_counter().count(text) <= s.meta["length"] - BUDGET
    c = Needle(max_context=1024, depths=(50,), counter=approximate_counter()).samples("completion")[0]
    key, number = needle_of(1024, 50)
    assert c.prompt.endswith(f"Answer: The special magic number for {key} is") and c.stop == ["\n"]
    doc = document_of(c.prompt, key, "completion")  # the same filler, less the longer ending's tokens
    assert document_of(a[1].prompt[0]["content"], key, "chat").startswith(doc[:doc.index(" The special")])


def test_largest_fitting():
    for limit in (0, 1, 7, 100):
        for answer in range(limit + 1):
            calls = []

            def fits(n):
                calls.append(n)
                return n <= answer

            for guess in (0, answer, answer + 1, limit, 3):
                assert largest_fitting(fits, guess, limit) == answer
    calls.clear()
    assert largest_fitting(lambda n: calls.append(n) or n <= 500, 500, 1000) == 500 and len(calls) == 2


@pytest.mark.parametrize("mode", ["chat", "completion"])
def test_prompt_length_and_needle_depth_in_real_tokens(counter, mode):
    depths = (0, 10, 25, 50, 75, 90, 100)
    task = Needle(context_length=32768, max_context=4096, depths=depths, counter=counter)
    for s in task.samples(mode):
        length, depth, key = s.meta["length"], s.meta["depth"], s.meta["key"]
        text = s.prompt[0]["content"] if mode == "chat" else s.prompt
        tokens = counter.count(text)
        assert tokens == s.meta["prompt_tokens"]
        assert length - BUDGET - 40 <= tokens <= length - BUDGET, s.id  # within a sentence of the target
        doc = document_of(text, key, mode)
        needle = f"The special magic number for {key} is {s.reference}."
        at = doc.index(needle)
        filler = (doc[:at] + doc[at + len(needle):]).strip()
        before, total = counter.count(doc[:at].strip()), counter.count(filler)
        assert abs(before - depth / 100 * total) <= 20, (s.id, before, total)  # the nearest sentence boundary
        assert doc.startswith(needle) == (depth == 0) and doc.endswith(needle) == (depth == 100)


def test_prompts_fit_the_chat_template_and_the_approximation_stays_within(counter, gguf_path):
    from zenlm.weights.registry import resolve

    tok = resolve(gguf_path).tokenizer()
    for s in Needle(max_context=2048, depths=(0, 100), counter=counter).samples("chat"):
        ids = tok.encode(tok.apply_chat(s.prompt, add_generation_prompt=True))
        assert s.meta["length"] - BUDGET < len(ids) <= s.meta["length"] - ANSWER_ROOM
    for s in Needle(max_context=2048, depths=(0, 100), counter=approximate_counter()).samples("completion"):
        assert s.meta["length"] - BUDGET - 150 < counter.count(s.prompt) <= s.meta["length"] - BUDGET


# ---- scoring ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("output, answer, correct", [
    ("4829175", "4829175", True),
    ("The special magic number for Lisbon is 4829175.", "4829175", True),
    (" 4829175.\n", "4829175", True),
    ("**4829175**", "4829175", True),
    ("4,829,175", "4829175", True),  # thousands commas
    ("It is 1234567, or rather 4829175", "4829175", True),
    ("48291750", "48291750", False),  # a longer number is not the needle's
    ("14829175", "14829175", False),
    ("4829176", "4829176", False),
    ("4,829,1750", "4", False),
    ("4 829 175", "4", False),
    ("four million eight hundred", "", False),
    ("", "", False),
])
def test_score(output, answer, correct):
    from zenlm.eval.task import Sample

    assert retrieved(output, "4829175") == (answer, correct)
    sample = Sample("needle/1024/0", "prompt", "4829175")
    assert Needle(counter=approximate_counter()).score(sample, output) == (answer, correct)


# ---- the report ----------------------------------------------------------------------------------------

def rows_of(cells: dict[tuple[int, int], list[bool]], meta: bool = True) -> list[dict]:
    rows = []
    for (length, depth), results in cells.items():
        for ok in results:
            row = {"task": "needle", "id": f"needle/{length}/{depth}", "correct": ok, "model": "zen-test"}
            rows.append(row | ({"meta": {"length": length, "depth": depth}} if meta else {}))
    return rows


def colour_counts(png, values) -> list[int]:
    """How many pixels of the image have each value's colour."""
    from matplotlib import colormaps

    from zenlm.eval.heatmap import COLORMAP

    rgb = png[..., :3]
    return [int((np.abs(rgb - np.array(colormaps[COLORMAP](v)[:3])).max(axis=-1) < 0.02).sum()) for v in values]


def test_report_writes_the_grid_and_a_heat_map(tmp_path):
    from matplotlib.image import imread

    from zenlm.eval.heatmap import DPI, figure_size

    task = Needle(context_length=32768, max_context=4096, depths=(0, 50), counter=approximate_counter())
    rows = rows_of({(1024, 0): [True], (2048, 0): [False], (1024, 50): [True], (2048, 50): [True, False]})
    rows[0].pop("meta")  # an older row without meta: its id says the cell
    files = task.report(rows, tmp_path / "out")
    assert files == [tmp_path / "out/needle-grid.json", tmp_path / "out/needle-heatmap.png"]
    grid = json.loads(files[0].read_text())
    assert grid == {"model": "zen-test", "token_counter": "approximate: 4.5 characters a token",
                    "model_context": 32768, "max_context": 4096, "lengths": [1024, 2048], "depths": [0, 50],
                    "accuracy": [[1.0, 0.0], [1.0, 0.5]], "n": [[1, 1], [1, 2]]}
    png = imread(files[1])
    w, h = figure_size(2, 2, "Needle in a haystack\nzen-test")
    assert png.shape == (round(h * DPI), round(w * DPI), 4)
    ones, zeros, halves = colour_counts(png, [1.0, 0.0, 0.5])
    assert min(ones, zeros, halves) > 2000  # a cell is well over 2000 pixels

    task.report(rows_of({(1024, 0): [True], (2048, 0): [True], (1024, 50): [True], (2048, 50): [True]}),
                tmp_path / "all")
    only_ones = imread(tmp_path / "all/needle-heatmap.png")
    assert colour_counts(only_ones, [0.0])[0] < zeros / 10 and colour_counts(only_ones, [1.0])[0] > 1.5 * ones


def test_report_marks_missing_cells_and_works_without_matplotlib(tmp_path, monkeypatch, caplog):
    task = Needle(max_context=2048, depths=(0, 100), counter=approximate_counter())
    rows = rows_of({(1024, 0): [True], (2048, 100): [False]})
    grid = task.grid(rows)
    assert grid["accuracy"] == [[1.0, None], [None, 0.0]] and grid["n"] == [[1, 0], [0, 1]]
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    files = task.report(rows, tmp_path)
    assert files == [tmp_path / "needle-grid.json"] and not (tmp_path / "needle-heatmap.png").exists()
    assert json.loads(files[0].read_text())["accuracy"] == [[1.0, None], [None, 0.0]]
    assert "pip install matplotlib" in caplog.text


# ---- the runner and the CLI with a fake backend -----------------------------------------------------

class Fake:
    """Answers every needle right except at depth 50; counts tokens approximately."""

    model, dtype, context_length = "fake-model", "none", 3000

    def __init__(self):
        self.asked = []

    def default_mode(self):
        return "chat"

    def token_counter(self):
        return approximate_counter()

    def answers(self, samples, max_tokens):
        for s in samples:
            self.asked.append(s.id)
            yield s, ("I am not sure." if s.meta["depth"] == 50 else f"The number is {s.reference}.")


def test_run_reports_the_grid_and_resumes(tmp_path):
    options = {"needle": {"max_context": 8192, "depths": (0, 50), "context_length": 3000,
                          "counter": approximate_counter()}}
    res = run(["needle"], Fake(), tmp_path, progress=False, task_options=options)["needle"]
    assert (res["metric"], res["n"], res["correct"]) == ("accuracy", 6, 3)
    assert res["files"] == [str(tmp_path / "needle-grid.json"), str(tmp_path / "needle-heatmap.png")]
    grid = json.loads((tmp_path / "needle-grid.json").read_text())
    assert grid["lengths"] == [1024, 2048, 3000] and grid["accuracy"] == [[1.0] * 3, [0.0] * 3]
    rows = read_samples(tmp_path / "samples.jsonl")
    assert {r["id"]: r["meta"]["depth"] for r in rows}["needle/2048/50"] == 50
    (tmp_path / "needle-grid.json").unlink()
    again = Fake()  # everything is on disk: nothing asked, the report drawn again from samples.jsonl
    assert run(["needle"], again, tmp_path, progress=False, task_options=options)["needle"] == res
    assert again.asked == [] and json.loads((tmp_path / "needle-grid.json").read_text()) == grid


def test_cli_passes_the_flags_and_what_the_backend_knows(tmp_path, monkeypatch, capsys):
    import zenlm.eval.backends

    fake = Fake()
    monkeypatch.setattr(zenlm.eval.backends, "EngineBackend", lambda *a, **k: fake)
    argv = ["eval", "needle", "--max-context", "8192", "--depths", "100,0", "--output", str(tmp_path), "--json",
            "--no-progress"]
    assert cli.main(argv) == 0
    assert fake.asked == [f"needle/{n}/{d}" for n in (1024, 2048, 3000) for d in (0, 100)]  # Fake's context: 3000
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == {"needle": {"accuracy": 1.0}}
    assert json.loads((tmp_path / "needle-grid.json").read_text())["token_counter"].startswith("approximate")


# ---- the real default model ----------------------------------------------------------------------------

def test_real_needle_in_process(gguf_path, tmp_path):
    from zenlm.eval.backends import EngineBackend

    backend = EngineBackend("default", "int4")
    assert backend.context_length == 32768
    options = {"needle": {"max_context": 2048, "depths": (0, 50, 100), "context_length": backend.context_length,
                          "counter": backend.token_counter()}}
    res = run(["needle"], backend, tmp_path, max_tokens=32, progress=False, task_options=options)["needle"]
    assert res["n"] == 6 and res["mode"] == "chat"
    grid = json.loads((tmp_path / "needle-grid.json").read_text())
    assert grid["lengths"] == [1024, 2048] and grid["depths"] == [0, 50, 100]
    assert [row[0] for row in grid["accuracy"]] == [1.0, 1.0, 1.0]  # every needle found at 1K
    assert grid["token_counter"] == f"the tokenizer of {backend.model}"
    assert (tmp_path / "needle-heatmap.png").stat().st_size > 1000
    for r in read_samples(tmp_path / "samples.jsonl"):  # the whole chat prompt and the answer fit the length
        assert len(backend.llm.chat_ids(r["prompt"])) + ANSWER_ROOM <= r["meta"]["length"]
        assert r["correct"] == (r["answer"] == needle_of(r["meta"]["length"], r["meta"]["depth"])[1])


def test_real_needle_against_zen_serve(gguf_path, tmp_path):
    from zenlm.eval.tokens import default_counter

    proc, url = serve_process.start(["--model", str(gguf_path), "--dtype", "int4", "--served-model-name",
                                     "zen-test"], tmp_path / "serve.txt")
    try:
        out = tmp_path / "out"
        cmd = [sys.executable, "-m", "zenlm", "eval", "needle", "--base-url", url, "--max-context", "1024",
               "--depths", "0,100", "--max-tokens", "32", "--output", str(out), "--json", "--no-progress"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout.strip().splitlines()[-1]) == {"needle": {"accuracy": 1.0}}
        res = json.loads((out / "results.json").read_text())["needle"]
        assert (res["n"], res["model"], res["dtype"], res["mode"]) == (2, "zen-test", "server", "chat")
        grid = json.loads((out / "needle-grid.json").read_text())
        assert grid["model_context"] == 32768  # the server's max_model_len
        assert grid["token_counter"] == "the tokenizer of zen-coder-0.5b-instruct"
        assert grid["accuracy"] == [[1.0], [1.0]] and (out / "needle-heatmap.png").exists()
        expected = {s.id: s.prompt for s in Needle(max_context=1024, depths=(0, 100),
                                                   counter=default_counter()).samples("chat")}
        assert {r["id"]: r["prompt"] for r in read_samples(out / "samples.jsonl")} == expected
    finally:
        proc.terminate()
        proc.wait(timeout=30)
