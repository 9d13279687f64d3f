"""zenlm as an lm-eval-harness model: `zen lm-eval` runs two small tasks written here (a multiple_choice and a
generate_until one over local JSONL, no network) on the default model, and the model class's log-likelihoods,
rolling log-likelihoods and generations equal the engine's own (LLM.prompt_logprobs, greedy LLM.generate)."""

import json
import logging
import os
import subprocess
import sys
import textwrap

import pytest
from lm_eval.api.instance import Instance

from zenlm.engine.sampling import SamplingParams
from zenlm.eval.harness import ZenLM, sampling_params
from zenlm.eval.loglik import prefix_id

MC_DOCS = [{"question": "What is 2 + 2?", "choices": ["3", "4", "5", "22"], "answer": 1},
           {"question": "What is the capital of France?", "choices": ["Paris", "Berlin", "Madrid"], "answer": 0},
           {"question": "Which one is a colour?", "choices": ["seven", "blue"], "answer": 1}]
GEN_DOCS = [{"question": "What is 3 + 4?", "answer": "7"}, {"question": "What is 10 - 3?", "answer": "7"}]


def request(kind, *args):
    return Instance(kind, {}, tuple(args), 0)


@pytest.fixture(scope="module")
def zen(gguf_path):
    return ZenLM(model="default", dtype="int4", progress=False)


def by_hand(llm, context_ids, continuation_ids):
    """The continuation's summed logprob, from one prompt_logprobs pass over context + continuation."""
    scored = llm.prompt_logprobs(context_ids + continuation_ids)
    return sum(lp for lp, _ in scored[len(context_ids):])


def test_loglikelihood_equals_the_engines(zen):
    llm, enc = zen.llm, zen.llm.tokenizer.encode
    ctx = "Question: What is 2 + 2?\nAnswer:"
    greedy = llm.generate(ctx, SamplingParams(max_tokens=3, temperature=0.0, repetition_penalty=1.0))[0]
    assert enc(ctx + greedy.text)[len(enc(ctx)):] == greedy.token_ids  # the text re-encodes to the same tokens
    reqs = [(ctx, greedy.text), (ctx, " 22"), ("The capital of France is ", "Paris"), ("", "Hello world")]
    got = zen.loglikelihood([request("loglikelihood", *r) for r in reqs])
    expected = [by_hand(llm, enc(ctx), greedy.token_ids), by_hand(llm, enc(ctx), enc(ctx + " 22")[len(enc(ctx)):]),
                by_hand(llm, enc("The capital of France is"), enc(" Paris")),
                by_hand(llm, [prefix_id(llm.tokenizer)], enc("Hello world"))]
    assert [lp for lp, _ in got] == pytest.approx(expected, abs=1e-6)
    assert [g for _, g in got][:2] == [True, False]  # what greedy decoding wrote is greedy; " 22" is not
    assert all(lp < 0 for lp, _ in got)


def test_loglikelihood_rolling_windows(zen):
    llm = zen.llm
    ids = llm.tokenizer.encode("one two three four five six seven eight nine ten")
    assert len(ids) == 10
    whole = zen.loglikelihood_rolling([request("loglikelihood_rolling", "one two three four five six seven eight "
                                                                       "nine ten")])[0]
    assert whole == pytest.approx(by_hand(llm, [prefix_id(llm.tokenizer)], ids), abs=1e-6)  # one window
    kept, zen.max_length = zen.max_length, 4
    try:  # lm-eval's documented layout for 10 tokens and windows of 4: each token predicted once
        windowed = zen.loglikelihood_rolling([request("loglikelihood_rolling", llm.tokenizer.decode(ids))])[0]
    finally:
        zen.max_length = kept
    bos = prefix_id(llm.tokenizer)
    expected = (by_hand(llm, [bos], ids[0:4]) + by_hand(llm, ids[3:4], ids[4:8]) +
                by_hand(llm, ids[5:8], ids[8:10]))
    assert windowed == pytest.approx(expected, abs=1e-6) and windowed != pytest.approx(whole, abs=1e-3)


def test_generate_until_equals_greedy_generate(zen):
    llm = zen.llm
    reqs = [("Question: What is 3 + 4?\nAnswer:", {"until": ["\n"], "max_gen_toks": 12, "do_sample": False}),
            ("def add(a, b):\n", {"until": ["\n\n", "def "], "max_gen_toks": 24}),
            ("The three primary colours are", {"until": ".", "max_gen_toks": 16, "temperature": 0.0})]
    got = zen.generate_until([request("generate_until", *r) for r in reqs])
    ref = llm.generate([ctx for ctx, _ in reqs],
                       [SamplingParams(max_tokens=kw["max_gen_toks"], temperature=0.0, repetition_penalty=1.0,
                                       stop=kw["until"]) for _, kw in reqs])
    assert got == [c.text for c in ref] and all(got)
    assert "\n" not in got[0] and "." not in got[2]


def test_sampling_params_from_gen_kwargs(caplog):
    greedy = sampling_params({"until": "Q:", "max_gen_toks": 5})
    assert (greedy.stop, greedy.max_tokens, greedy.temperature, greedy.repetition_penalty) == (["Q:"], 5, 0.0, 1.0)
    assert sampling_params({}).max_tokens == 256 and sampling_params({"temperature": 0.0}).temperature == 0.0
    hot = sampling_params({"temperature": 0.7, "top_p": 0.9, "top_k": 20})  # a temperature above 0 samples
    assert (hot.temperature, hot.top_p, hot.top_k, hot.repetition_penalty) == (0.7, 0.9, 20, None)
    assert sampling_params({"do_sample": True}).temperature is None  # the model's own
    assert sampling_params({"do_sample": False, "temperature": 0.8}).temperature == 0.0
    with caplog.at_level(logging.WARNING, "zenlm.eval"):
        sampling_params({"num_beams": 4})
    assert "zenlm ignores these generation settings: num_beams" in caplog.text
    with pytest.raises(ValueError, match="max_gen_toks must be a whole number"):
        sampling_params({"max_gen_toks": "many"})
    with pytest.raises(ValueError, match="top_p must be in"):
        sampling_params({"do_sample": True, "top_p": 2.0})


def test_registering_keeps_lm_evals_own_models():
    """lm-eval fills its model table only while it is empty: zenlm's entry must not hide the others."""
    code = ("import zenlm.eval.harness\nfrom lm_eval.api.registry import get_model\n"
            "print(get_model('zenlm').__name__, get_model('local-completions').__name__)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["ZenLM", "LocalCompletionsAPI"]


def test_registered_and_model_args_checked_before_loading():
    from lm_eval.api.registry import get_model

    assert get_model("zenlm") is ZenLM
    with pytest.raises(ValueError, match="zenlm model_args: unknown batch, pretrained"):
        ZenLM.create_from_arg_string("pretrained=x,batch=2")
    with pytest.raises(ValueError, match="max_num_seqs must be a whole number of at least 1"):
        ZenLM.create_from_arg_string("max_num_seqs=0")


@pytest.fixture(scope="module")
def tasks_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("lm-eval-tasks")
    for name, docs in (("mc", MC_DOCS), ("gen", GEN_DOCS)):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(doc) + "\n" for doc in docs))
    common = "dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {path}\ntest_split: test\n"
    (d / "zen_mc.yaml").write_text("task: zen_mc\n" + common.format(path=d / "mc.jsonl") + textwrap.dedent("""\
        output_type: multiple_choice
        doc_to_text: "Question: {{question}}\\nAnswer:"
        doc_to_choice: "{{choices}}"
        doc_to_target: answer
        metric_list:
          - metric: acc
          - metric: acc_norm
        """))
    (d / "zen_gen.yaml").write_text("task: zen_gen\n" + common.format(path=d / "gen.jsonl") + textwrap.dedent("""\
        output_type: generate_until
        doc_to_text: "Question: {{question}}\\nAnswer:"
        doc_to_target: " {{answer}}"
        generation_kwargs:
          until: ["\\n"]
          max_gen_toks: 8
          do_sample: false
        metric_list:
          - metric: exact_match
        """))
    return d


def test_zen_lm_eval_runs_generated_tasks(zen, tasks_dir, tmp_path):
    env = {**os.environ, "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "hf")}
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "zenlm", "lm-eval", "--model", "zenlm", "--model_args",
           "model=default,dtype=int4,progress=False", "--device", "cpu", "--include_path", str(tasks_dir),
           "--tasks", "zen_mc,zen_gen", "--limit", "2", "--output_path", str(out), "--log_samples"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "|zen_mc |" in done.stdout and "|zen_gen|" in done.stdout
    results = json.loads(next(out.rglob("results_*.json")).read_text())["results"]
    assert 0 <= results["zen_mc"]["acc,none"] <= 1 and 0 <= results["zen_mc"]["acc_norm,none"] <= 1
    rows = {}
    for path in out.rglob("samples_*.jsonl"):
        task = "zen_mc" if "zen_mc" in path.name else "zen_gen"
        rows[task] = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(rows["zen_mc"]) == len(rows["zen_gen"]) == 2
    for row in rows["zen_mc"]:  # every choice's log-likelihood is the in-process model's
        doc = row["doc"]
        ours = zen.loglikelihood([request("loglikelihood", f"Question: {doc['question']}\nAnswer:", " " + c)
                                  for c in doc["choices"]])
        assert [float(lp) for lp, _ in row["filtered_resps"]] == pytest.approx([lp for lp, _ in ours], abs=1e-4)
        assert [g == "True" for _, g in row["filtered_resps"]] == [g for _, g in ours]
        best = max(range(len(ours)), key=lambda i: ours[i][0])
        assert row["acc"] == float(best == doc["answer"])
    for row in rows["zen_gen"]:  # and every generation the engine's greedy one
        kwargs = {"until": ["\n"], "max_gen_toks": 8, "do_sample": False}
        ours = zen.generate_until([request("generate_until", f"Question: {row['doc']['question']}\nAnswer:", kwargs)])
        assert row["filtered_resps"] == ours and row["exact_match"] == float(ours[0] == row["target"])
