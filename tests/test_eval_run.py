"""The eval runner and `zen eval`: results.json / samples.jsonl from a fake backend, resume after a crash,
the CLI's errors, and real GSM8K runs on the default model, in process and against a real `zen serve`."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import serve_process

from zenlm import cli
from zenlm.eval.run import read_samples, run, stderr, summary, table

GOLD = [json.loads(line)["answer"].rpartition("####")[2].strip().replace(",", "")
        for line in (Path(cli.__file__).parents[1] / "eval/data/gsm8k/test.jsonl").read_text().splitlines()]


class Fake:
    """Deterministic answers: right unless the index is 1 mod 3 (then '7'); raises after `fail_after` answers."""

    model, dtype = "fake-model", "none"

    def __init__(self, fail_after: int | None = None, mode: str = "chat"):
        self.fail_after, self.mode, self.asked = fail_after, mode, []

    def default_mode(self):
        return self.mode

    def answers(self, samples, max_tokens):
        for k, s in enumerate(reversed(samples)):  # out of order, as a batching engine finishes them
            if k == self.fail_after:
                raise RuntimeError("killed")
            self.asked.append(s.id)
            i = int(s.id.split("/")[1])
            yield s, ("the answer is 7" if i % 3 == 1 else f"so it is \\boxed{{{s.reference}}}.")


def expected(n: int) -> int:
    return sum(i % 3 != 1 or GOLD[i] == "7" for i in range(n))


def test_run_writes_results_and_samples(tmp_path):
    res = run(["gsm8k"], Fake(), tmp_path, limit=10, max_tokens=64, progress=False)["gsm8k"]
    k = expected(10)
    assert k == 7  # golds 1, 4, 7 are not 7
    assert res["n"] == 10 and res["correct"] == k and res["value"] == pytest.approx(k / 10)
    assert res["stderr"] == pytest.approx((0.7 * 0.3 / 10) ** 0.5) and stderr(0.0, 0) == 0.0
    assert (res["metric"], res["model"], res["dtype"], res["mode"]) == ("accuracy", "fake-model", "none", "chat")
    on_disk = json.loads((tmp_path / "results.json").read_text())
    assert on_disk == {"gsm8k": res} and res["seconds"] >= 0
    rows = read_samples(tmp_path / "samples.jsonl")
    assert sorted(r["id"] for r in rows) == sorted(f"gsm8k/{i}" for i in range(10))
    row = next(r for r in rows if r["id"] == "gsm8k/0")
    assert row["answer"] == "18" and row["correct"] is True and row["output"].endswith("\\boxed{18}.")
    assert row["prompt"][0]["role"] == "user" and row["task"] == "gsm8k"
    assert (row["model"], row["dtype"], row["max_tokens"]) == ("fake-model", "none", 64)
    assert next(r for r in rows if r["id"] == "gsm8k/1")["answer"] == "7"
    assert summary({"gsm8k": res}) == {"gsm8k": {"accuracy": 0.7}}
    assert "| gsm8k | accuracy | 70.0 |" in table({"gsm8k": res})

    again = Fake()  # everything is on disk: nothing is asked again, the numbers stay
    assert run(["gsm8k"], again, tmp_path, limit=10, max_tokens=64, progress=False)["gsm8k"] == res
    assert again.asked == []
    more = Fake()  # a larger --limit asks only the new samples
    assert run(["gsm8k"], more, tmp_path, limit=12, max_tokens=64, progress=False)["gsm8k"]["n"] == 12
    assert sorted(more.asked) == ["gsm8k/10", "gsm8k/11"]


def test_interrupted_run_resumes_to_the_same_results(tmp_path):
    whole = run(["gsm8k"], Fake(), tmp_path / "a", limit=20, progress=False)
    with pytest.raises(RuntimeError, match="killed"):
        run(["gsm8k"], Fake(fail_after=8), tmp_path / "b", limit=20, progress=False)
    assert len(read_samples(tmp_path / "b" / "samples.jsonl")) == 8
    assert not (tmp_path / "b" / "results.json").exists()
    with open(tmp_path / "b" / "samples.jsonl", "a") as f:
        f.write('{"task": "gsm8k", "id": "gsm8k/3", "pro')  # a line cut short by a kill
    second = Fake()
    resumed = run(["gsm8k"], second, tmp_path / "b", limit=20, progress=False)
    assert len(second.asked) == 12 and not set(second.asked) & {f"gsm8k/{i}" for i in range(12, 20)}

    def drop_seconds(path):
        return {t: {k: v for k, v in r.items() if k != "seconds"} for t, r in json.loads(path.read_text()).items()}

    assert drop_seconds(tmp_path / "a" / "results.json") == drop_seconds(tmp_path / "b" / "results.json")
    assert resumed["gsm8k"]["correct"] == whole["gsm8k"]["correct"] == expected(20)
    assert len(read_samples(tmp_path / "b" / "samples.jsonl")) == 20  # the torn line skipped, 20 whole ones


def test_run_refuses_mixed_prompts_and_bad_input(tmp_path):
    run(["gsm8k"], Fake(), tmp_path, limit=2, progress=False)
    with pytest.raises(ValueError, match="another prompt"):
        run(["gsm8k"], Fake(mode="completion"), tmp_path, limit=2, progress=False)
    with pytest.raises(ValueError, match="asked with max_tokens 512, not 64"):
        run(["gsm8k"], Fake(), tmp_path, limit=2, max_tokens=64, progress=False)
    other = Fake()
    other.model = "another-model"
    with pytest.raises(ValueError, match="asked with model 'fake-model', not 'another-model'"):
        run(["gsm8k"], other, tmp_path, limit=2, progress=False)
    with pytest.raises(ValueError, match="--limit must be at least 1"):
        run(["gsm8k"], Fake(), tmp_path, limit=0)
    with pytest.raises(ValueError, match="unknown mode"):
        run(["gsm8k"], Fake(), tmp_path, mode="text")
    done = run(["gsm8k"], Fake(), tmp_path / "c", limit=3, mode="completion", num_shots=2, progress=False)
    assert done["gsm8k"]["mode"] == "completion" and done["gsm8k"]["num_shots"] == 2


@pytest.mark.parametrize("argv, message", [
    (["eval", "nope"], "unknown task 'nope'; choose from"),
    (["eval", "gsm8k,nope"], "unknown task 'nope'"),
    (["eval", ","], "no task given"),
    (["eval", "gsm8k", "--limit", "0"], "--limit must be at least 1, got 0"),
    (["eval", "gsm8k", "--limit", "ten"], "--limit must be a whole number, got 'ten'"),
    (["eval", "gsm8k", "--num-shots", "-2"], "--num-shots must be at least 0, got -2"),
    (["eval", "gsm8k", "--max-tokens", "0"], "--max-tokens must be at least 1, got 0"),
    (["eval", "gsm8k", "--max-num-seqs", "0"], "--max-num-seqs must be at least 1, got 0"),
    (["eval", "gsm8k", "--base-url", "localhost:8000"], "--base-url must start with http://"),
    (["eval", "gsm8k", "--base-url", "http://127.0.0.1:9", "--concurrency", "0"], "--concurrency must be at least 1"),
    (["eval", "gsm8k", "--base-url", "http://127.0.0.1:9"], "cannot reach http://127.0.0.1:9/v1/models"),
])
def test_cli_bad_input(argv, message, capsys):
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("zen: error: ")


def test_cli_table_and_json(tmp_path, monkeypatch, capsys):
    import zenlm.eval.backends

    monkeypatch.setattr(zenlm.eval.backends, "EngineBackend", lambda *a, **k: Fake())
    assert cli.main(["eval", "gsm8k", "--limit", "6", "--output", str(tmp_path), "--json", "--no-progress"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out[0].startswith("| task | metric |") and out[2].startswith("| gsm8k | accuracy | 66.7 |")
    assert json.loads(out[-1]) == {"gsm8k": {"accuracy": pytest.approx(4 / 6)}}


# ---- the real default model --------------------------------------------------------------------------

def test_real_tasks_in_process(gguf_path, tmp_path):
    from zenlm.engine.sampling import SamplingParams
    from zenlm.eval.backends import EngineBackend
    from zenlm.eval.tasks import TASKS

    backend = EngineBackend("default", "int4")
    assert backend.default_mode() == "chat"  # the GGUF says Instruct
    every = run(["gsm8k", "humaneval", "mbpp"], backend, tmp_path, limit=3, max_tokens=64, progress=False)
    res = every["gsm8k"]
    assert res["n"] == 3 and res["mode"] == "chat" and res["dtype"] == "int4"
    rows = {r["id"]: r for r in read_samples(tmp_path / "samples.jsonl")}
    for name in ("humaneval", "mbpp"):  # model-written code, run in the sandbox and scored again here
        task = TASKS[name]()
        assert every[name]["n"] == 3 and every[name]["metric"] == "pass@1"
        for s in task.samples("chat")[:3]:
            assert rows[s.id]["task"] == name and (rows[s.id]["answer"], rows[s.id]["correct"]) == \
                task.score(s, rows[s.id]["output"])
    samples = TASKS["gsm8k"]().samples("chat")[:3]
    # the same greedy requests through LLM.generate (all at once too) give the same text
    llm = backend.llm
    ref = llm.generate([llm.chat_ids(s.prompt) for s in samples],
                       SamplingParams(max_tokens=64, temperature=0.0, repetition_penalty=1.0))
    for s, c in zip(samples, ref):
        assert rows[s.id]["output"] == c.text and len(c.text) > 20
        assert (rows[s.id]["answer"], rows[s.id]["correct"]) == TASKS["gsm8k"]().score(s, c.text)
    assert res["correct"] == sum(r["correct"] for r in rows.values() if r["task"] == "gsm8k")


def test_real_tasks_against_zen_serve(gguf_path, tmp_path):
    proc, url = serve_process.start(["--model", str(gguf_path), "--dtype", "int4", "--served-model-name",
                                     "zen-test"], tmp_path / "serve.txt")
    try:
        out = tmp_path / "out"
        cmd = [sys.executable, "-m", "zenlm", "eval", "gsm8k,humaneval", "--base-url", url, "--limit", "2",
               "--max-tokens", "64", "--output", str(out), "--json", "--concurrency", "2"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        last = json.loads(done.stdout.strip().splitlines()[-1])
        res = json.loads((out / "results.json").read_text())["gsm8k"]
        he = json.loads((out / "results.json").read_text())["humaneval"]
        assert last == {"gsm8k": {"accuracy": res["value"]}, "humaneval": {"pass@1": he["value"]}} and he["n"] == 2
        assert (res["n"], res["model"], res["dtype"], res["mode"]) == (2, "zen-test", "server", "chat")
        rows = read_samples(out / "samples.jsonl")
        assert sorted(r["id"] for r in rows) == ["HumanEval/0", "HumanEval/1", "gsm8k/0", "gsm8k/1"]
        assert all(len(r["output"]) > 20 for r in rows)
        again = subprocess.run(cmd, capture_output=True, text=True, timeout=600)  # resumes: nothing left to ask
        assert again.returncode == 0 and len(read_samples(out / "samples.jsonl")) == 4
        assert json.loads((out / "results.json").read_text())["gsm8k"] == res  # seconds too: nothing was asked
    finally:
        proc.terminate()
        proc.wait(timeout=30)
