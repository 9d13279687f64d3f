"""The mc task (multiple choice by log-likelihood): the file readers and their errors, the prompt, acc and
acc_norm, lm-eval's context/continuation split, and real runs of a small generated MMLU/C-Eval-style set
on the default model, in process and against a real `zen serve` (whose text offsets place the split)."""

import json
import math
import subprocess
import sys
from types import SimpleNamespace

import pytest
import serve_process

from zenlm import cli
from zenlm.eval.loglik import encode_pair, move_trailing_space, prefix_id
from zenlm.eval.run import read_samples, run
from zenlm.eval.task import Sample
from zenlm.eval.tasks import TASKS
from zenlm.eval.tasks.mc import MC, prompt
from zenlm.eval.tasks.mc_data import Question, read

MMLU_ROWS = ('What is 2 + 2?,3,4,5,22,B\n'
             'What is 10 - 3?,7,13,3,30,A\n'
             '"Which number is even: 3, 5, 8 or 9?",3,5,9,8,D\n')
CEVAL_ROWS = "id,question,A,B,C,D,answer\n0,中国的首都是哪个城市？ 答：,上海,北京,广州,深圳,B\n"


def write(path, text):
    path.write_text(text, encoding="utf-8")
    return path


# ---- reading the files -------------------------------------------------------------------------------

def test_mmlu_csv_without_header(tmp_path):
    qs = read(write(tmp_path / "elementary_mathematics_test.csv", MMLU_ROWS))
    assert [q.answer for q in qs] == [1, 0, 3] and [q.index for q in qs] == [0, 1, 2]
    assert qs[2].question == "Which number is even: 3, 5, 8 or 9?" and qs[2].choices == ("3", "5", "9", "8")
    assert {q.subject for q in qs} == {"elementary_mathematics"} and qs[0].file == "elementary_mathematics_test"


def test_ceval_and_cmmlu_headers(tmp_path):
    ceval = tmp_path / "accountant_val.csv"
    ceval.write_bytes("\ufeffid,question,A,B,C,D,answer,explanation\n".encode() +
                      "0,一加一等于几？,1,2,3,4,B,因为\n1,\"多行\n题目\",甲,乙,丙,丁,d,\n".encode())
    qs = read(ceval)  # a byte-order mark, an explanation column, a quoted line break, a lower-case answer
    assert [(q.question, q.answer, q.subject) for q in qs] == [("一加一等于几？", 1, "accountant"),
                                                               ("多行\n题目", 3, "accountant")]
    cmmlu = write(tmp_path / "agronomy.csv", ",Question,A,B,C,D,Answer\n0,问题？,一,二,三,四,C\n")
    assert read(cmmlu) == [Question("问题？", ("一", "二", "三", "四"), 2, "agronomy", "agronomy", 0)]
    with_subject = write(tmp_path / "mixed.csv", "Subject,QUESTION,a,b,answer\nlaw,Q?,yes,no,A\n")
    assert read(with_subject)[0].subject == "law" and read(with_subject)[0].choices == ("yes", "no")


def test_jsonl_layouts_and_a_directory(tmp_path):
    write(tmp_path / "b.jsonl", json.dumps({"question": "Q1", "choices": ["x", "y", "z"], "answer": 2}) + "\n\n" +
          json.dumps({"question": "Q2", "A": "p", "B": "q", "C": "r", "D": "s", "answer": "b",
                      "subject": "high_school_physics"}) + "\n")
    write(tmp_path / "a_dev.csv", "Q0,1,2,3,4,C\n")
    write(tmp_path / "notes.txt", "not questions")
    qs = read(tmp_path)  # a directory: its .csv and .jsonl files, sorted by name
    assert [(q.file, q.question, q.answer, q.subject) for q in qs] == [
        ("a_dev", "Q0", 2, "a"), ("b", "Q1", 2, "b"), ("b", "Q2", 1, "high_school_physics")]
    assert qs[1].choices == ("x", "y", "z")


@pytest.mark.parametrize("name, text, message", [
    ("x.csv", "Q,1,2,3,4\n", "x.csv:1: 5 columns; a CSV without a header row needs 6"),
    ("x.csv", "Q,1,2,3,4,E\n", "x.csv:1: the answer 'E' is not among the choices (A, B, C, D"),
    ("x.csv", "Q,1,2,3,4,AB\n", "the answer 'AB' is not among the choices"),
    ("x.csv", " ,1,2,3,4,A\n", "x.csv:1: the question is empty"),
    ("x.csv", "id,question,A,B,C,D\n0,Q,1,2,3,4\n", "the header has no answer column"),
    ("x.csv", "question,a,answer\nQ,A,A\n", "x.csv:1: 3 columns; a CSV without a header row needs 6"),
    ("x.csv", "question,A,B,answer\nQ,1\n", "x.csv:2: 2 columns; the header's layout needs 4"),
    ("x.csv", "", "x.csv holds no question"),
    ("x.jsonl", '{"question": "Q", "choices": ["a", "b"], "answer": 2}\n', "x.jsonl:1: the answer 2 is not among"),
    ("x.jsonl", '{"question": "Q", "choices": ["a"], "answer": 0}\n', "x.jsonl:1: 1 choices; give 2 to 26"),
    ("x.jsonl", '{"question": "Q", "A": "a", "B": "b"}\n', "the answer None is not among the choices"),
    ("x.jsonl", '{"choices": ["a", "b"], "answer": 0}\n', '"question" (and "subject", if given) must be text'),
    ("x.jsonl", '{"question": "Q", "choices": ["a", ["b"]], "answer": 0}\n', "every choice must be text"),
    ("x.jsonl", '\n{"question": "Q",\n', "x.jsonl:2: not JSON"),
    ("x.jsonl", '["Q"]\n', "x.jsonl:1: expected a JSON object, got list"),
    ("x.txt", "Q,1,2,3,4,A\n", "expected a .csv or .jsonl file"),
])
def test_bad_files(tmp_path, name, text, message):
    with pytest.raises(ValueError) as e:
        read(write(tmp_path / name, text))
    assert message in str(e.value) and "\n" not in str(e.value)


def test_bad_encoding(tmp_path):
    for name in ("x.csv", "x.jsonl"):
        (tmp_path / name).write_bytes("Q,1,2,3,4,A\n".encode("utf-16"))
        with pytest.raises(ValueError, match=f"{name}: not UTF-8 text"):
            read(tmp_path / name)


def test_missing_path_and_empty_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.csv does not exist"):
        MC(tmp_path / "nope.csv")
    with pytest.raises(ValueError, match="holds no .csv or .jsonl file"):
        MC(tmp_path)
    with pytest.raises(ValueError, match="mc needs --data PATH"):
        TASKS["mc"]()


def test_cli_checks_the_data_before_loading_a_model(tmp_path, capsys):
    assert cli.main(["eval", "mc", "--output", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == ("zen: error: mc needs --data PATH: a CSV or JSONL file of questions, "
                                               "or a directory of them")
    bad = write(tmp_path / "bad.csv", "Q,1,2,3,4,Z\n")
    assert cli.main(["eval", "gsm8k,mc", "--data", str(bad), "--output", str(tmp_path)]) == 1
    assert "bad.csv:1: the answer 'Z' is not among the choices" in capsys.readouterr().err


# ---- prompts and scores --------------------------------------------------------------------------------

def test_prompt_golden(tmp_path):
    data = write(tmp_path / "elementary_mathematics_test.csv", MMLU_ROWS)
    samples = MC(data).samples("chat")  # raw text in either mode
    assert [s.id for s in samples] == [f"mc/elementary_mathematics_test/{i}" for i in range(3)]
    assert samples[0].prompt == ("The following are multiple choice questions (with answers) about elementary "
                                 "mathematics.\n\nWhat is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer:")
    assert samples[0].continuations == [" A", " B", " C", " D"] and samples[0].reference == 1
    assert MC(data).samples("completion") == samples

    shot = ("The following are multiple choice questions (with answers) about elementary mathematics.\n\n"
            "What is 2 + 2?\nA. 3\nB. 4\nC. 5\nD. 22\nAnswer: B\n\n")
    head = MC(data).samples("chat", num_shots=1)  # the first question becomes the shot and is not scored
    assert [s.id for s in head] == ["mc/elementary_mathematics_test/1", "mc/elementary_mathematics_test/2"]
    assert head[0].prompt == shot + "What is 10 - 3?\nA. 7\nB. 13\nC. 3\nD. 30\nAnswer:"

    dev = write(tmp_path / "elementary_mathematics_dev.csv", "What is 2 + 2?,3,4,5,22,B\nWhat is 1 + 1?,2,1,0,3,A\n")
    from_dev = MC(data, dev).samples("chat", num_shots=1)  # shots by subject from the dev file; all scored
    assert len(from_dev) == 3 and from_dev[1].prompt == head[0].prompt
    assert MC(data, dev).samples("chat", num_shots=2)[0].prompt.count("\nAnswer: ") == 2
    with pytest.raises(ValueError, match="--dev-data has 2 questions of subject 'elementary_mathematics', fewer "
                                         "than --num-shots 3"):
        MC(data, dev).samples("chat", num_shots=3)
    other = write(tmp_path / "law_dev.csv", "Q?,1,2,3,4,A\n")
    with pytest.raises(ValueError, match="has 0 questions of subject 'elementary_mathematics'"):
        MC(data, other).samples("chat", num_shots=1)
    five = Question("Q", tuple("abcde"), 4, "x", "f", 0)
    assert prompt(five, []).endswith("\nD. d\nE. e\nAnswer:")


def test_acc_and_acc_norm(tmp_path):
    task = MC(write(tmp_path / "x.csv", MMLU_ROWS))
    letters = Sample("mc/x/0", "…Answer:", reference=2, continuations=[" A", " B", " C", " D"])
    assert task.score(letters, [-3.0, -2.0, -0.5, -4.0]) == ("C", {"acc": True, "acc_norm": True})
    assert task.score(letters, [-0.1, -2.0, -0.5, -4.0]) == ("A", {"acc": False, "acc_norm": False})
    # equal-length letters can never split acc from acc_norm; choices of different lengths can
    texts = Sample("mc/x/1", "The capital of Italy is", reference=1, continuations=[" Paris", " the city of Rome"])
    assert task.score(texts, [-6.0, -10.0]) == ("A", {"acc": False, "acc_norm": True})  # -6/5 < -10/16
    assert task.score(texts, [-2.0, -10.0]) == ("A", {"acc": False, "acc_norm": False})  # -2/5 > -10/16
    assert task.score(letters, [-1.0, -1.0, -1.0, -1.0])[0] == "A"  # a tie: the first, as numpy's argmax
    assert task.score(letters, [float("nan"), -2.0, -0.5, -4.0])[0] == "C"
    assert task.score(letters, [-1.0, -2.0]) == ("", {"acc": False, "acc_norm": False})
    assert task.score(letters, "text") == ("", {"acc": False, "acc_norm": False})


# ---- lm-eval's split -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer(gguf_path):
    from zenlm.tokenizer.bpe import Tokenizer
    from zenlm.weights.gguf_reader import read_gguf

    return Tokenizer.from_gguf(read_gguf(gguf_path)[0])


def lm_eval_split(tokenizer, pairs):
    """lm-eval-harness's own TemplateLM.loglikelihood tokenizing with our tokenizer: the oracle."""
    from lm_eval.api.model import TemplateLM

    class Oracle(TemplateLM):
        eot_token_id = prefix_token_id = property(lambda self: prefix_id(tokenizer))

        def tok_encode(self, string, add_special_tokens=None, **kwargs):
            return tokenizer.encode(string)

        def _loglikelihood_tokens(self, requests, **kwargs):
            return [(ctx, cont) for _, ctx, cont in requests]

        loglikelihood_rolling = generate_until = None

    return Oracle().loglikelihood([SimpleNamespace(args=p) for p in pairs], disable_tqdm=True)


def test_split_is_lm_evals(tokenizer):
    assert move_trailing_space("Answer: ", "B") == ("Answer:", " B")
    assert move_trailing_space("Q \n\t", "x") == ("Q", " \n\tx") and move_trailing_space("Q", " x") == ("Q", " x")
    pairs = [("Answer:", " B"), ("Answer: ", "B"), ("Answer:  ", "B"), ("Hello wor", "ld"), ("", "Hello"),
             ("中国的首都是哪个城市？ 答：", " 北京"), ("x\n", "y"), ("The answer is", " 1234")]
    ours = [encode_pair(tokenizer, c, x) for c, x in pairs]
    assert ours == lm_eval_split(tokenizer, pairs)
    enc = tokenizer.encode
    assert ours[1] == (enc("Answer:"), enc(" B")) == ours[0]  # the trailing space moved onto the continuation
    assert ours[3] == (enc("Hello wor"), enc("Hello world")[len(enc("Hello wor")):])  # whole[len(context):]
    assert ours[3][1] == [] and len(enc("Hello world")) == 2  # ' wor' + 'ld' merge: nothing left to score
    assert ours[4] == ([prefix_id(tokenizer)], enc("Hello"))  # an empty context reads the prefix token
    assert encode_pair(tokenizer, "  ", "x") == ([prefix_id(tokenizer)], enc("  x"))  # whitespace only, likewise


def test_server_text_offsets_count_whole_characters(tokenizer):
    from zenlm.server.protocol import completion_logprobs
    from zenlm.tokenizer.bpe import bytes_to_unicode

    text = "首都？ 答：北京 🤖 é"
    ids = tokenizer.encode(text)
    assert sum("\ufffd" in tokenizer.decode([t]) for t in ids) >= 3  # characters split over byte tokens
    byte = {ch: b for b, ch in bytes_to_unicode().items()}
    raw = [bytes(byte[ch] for ch in tokenizer.id_to_token(t)) for t in ids]
    assert b"".join(raw) == text.encode()
    starts = [len(b"".join(raw[:i]).decode("utf-8", "ignore")) for i in range(len(ids))]  # whole characters
    offsets = completion_logprobs(tokenizer, [(t, -1.0, []) for t in ids])["text_offset"]
    assert offsets == starts and text[offsets[-1]:] == " é"


# ---- the real default model ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("mc-data")
    write(d / "elementary_mathematics_test.csv", MMLU_ROWS)  # MMLU's layout
    write(d / "geography_val.csv", CEVAL_ROWS)  # C-Eval's, with characters split over byte tokens
    return d


@pytest.fixture(scope="module")
def in_process(gguf_path, data_dir, tmp_path_factory):
    from zenlm.eval.backends import EngineBackend

    backend = EngineBackend("default", "int4")
    out = tmp_path_factory.mktemp("mc-out")
    res = run(["mc"], backend, out, progress=False, task_options={"mc": {"data": str(data_dir)}})["mc"]
    return backend, res, {r["id"]: r for r in read_samples(out / "samples.jsonl")}


def test_real_mc_in_process(in_process, data_dir):
    backend, res, rows = in_process
    samples = MC(data_dir).samples("chat")
    assert (res["n"], res["metric"], res["dtype"]) == (4, "acc", "int4") and set(rows) == {s.id for s in samples}
    assert res["metrics"]["acc"]["value"] == res["metrics"]["acc_norm"]["value"] == res["value"]  # letters
    llm, tok = backend.llm, backend.llm.tokenizer
    assert any("\ufffd" in tok.decode([t]) for t in tok.encode(samples[-1].prompt))
    for s in samples:
        row, context = rows[s.id], tok.encode(s.prompt)
        expected = []
        for cont in s.continuations:  # each choice's tokens after the prompt's, summed from one forward pass
            whole = tok.encode(s.prompt + cont)
            assert whole[:len(context)] == context and len(whole) == len(context) + 1
            expected.append(sum(lp for lp, _ in llm.prompt_logprobs(whole)[len(context):]))
        assert row["output"] == pytest.approx(expected, abs=1e-6)
        assert 0.5 < sum(math.exp(x) for x in row["output"]) <= 1.0  # after "Answer:" the letters take most mass
        assert (row["answer"], row["scores"]) == MC(data_dir).score(s, row["output"])
    assert res["correct"] == sum(r["correct"] for r in rows.values())


def test_real_mc_against_zen_serve(in_process, data_dir, gguf_path, tmp_path):
    _, res, rows = in_process
    proc, url = serve_process.start(["--model", str(gguf_path), "--dtype", "int4"], tmp_path / "serve.txt")
    try:
        cmd = [sys.executable, "-m", "zenlm", "eval", "mc", "--data", str(data_dir), "--base-url", url,
               "--output", str(tmp_path / "out"), "--json", "--no-progress", "--concurrency", "2"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert done.returncode == 0, done.stderr
    remote = {r["id"]: r for r in read_samples(tmp_path / "out" / "samples.jsonl")}
    assert set(remote) == set(rows)
    for key, row in rows.items():  # the echoed tokens' logprobs, split by text offset, are the engine's
        assert remote[key]["output"] == pytest.approx(row["output"], abs=1e-4)
        assert remote[key]["answer"] == row["answer"]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"mc": {"acc": res["value"], "acc_norm": res["value"]}}
