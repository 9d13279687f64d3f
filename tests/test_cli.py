"""The `zen` command line, run as a real subprocess on the real default model."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from zenlm.engine.sampling import SamplingParams

FP32 = ("--dtype", "float32")  # the exact path, to compare with the fp32 default_llm fixture


def zen(*args, input=None, timeout=300):
    return subprocess.run([sys.executable, "-m", "zenlm", *args], input=input, capture_output=True, text=True,
                          timeout=timeout)


def test_generate_prints_only_the_completion(default_llm):
    r = zen("generate", "Write hello world in Python.", "--max-tokens", "16", "--temperature", "0", *FP32)
    assert r.returncode == 0, r.stderr
    want = default_llm.chat([{"role": "user", "content": "Write hello world in Python."}],
                            SamplingParams(max_tokens=16, temperature=0)).text
    assert r.stdout == want + "\n"


def test_generate_raw_and_system(default_llm):
    r = zen("generate", "def fibonacci(n):", "--raw", "--max-tokens", "8", "--temperature", "0", *FP32)
    assert r.returncode == 0, r.stderr
    want = default_llm.generate("def fibonacci(n):", SamplingParams(max_tokens=8, temperature=0))[0].text
    assert r.stdout == want + "\n"
    r = zen("generate", "Name a color.", "--system", "Answer in French.", "--max-tokens", "8", "--temperature", "0",
            *FP32)
    want = default_llm.chat([{"role": "system", "content": "Answer in French."},
                             {"role": "user", "content": "Name a color."}], SamplingParams(max_tokens=8, temperature=0))
    assert r.returncode == 0 and r.stdout == want.text + "\n"


def test_info_json():
    r = zen("info", "zen-7b", "--json")
    d = json.loads(r.stdout)
    assert d["params_total"] == 7_615_616_512 and d["params_non_embedding"] == 6_525_621_760
    assert "params_active" not in d
    d = json.loads(zen("info", "qwen1.5-moe-a2.7b", "--json").stdout)
    assert abs(d["params_active"] / 1e9 - 2.7) < 0.027


def test_info_reads_a_gguf_file(gguf_path):
    d = json.loads(zen("info", str(gguf_path), "--json").stdout)
    assert d["arch"] == "qwen2" and d["num_layers"] == 24 and d["params_non_embedding"] == 357_898_112


@pytest.mark.parametrize("args,message", [
    (["generate", "hi", "--model", "/no/such.gguf"], "unknown model '/no/such.gguf'"),
    (["generate", "hi", "--max-tokens", "0"], "max_tokens must be >= 1"),
    (["generate", "hi", "--temperature", "-1"], "temperature must be >= 0"),
    (["generate", "hi", "--raw", "--system", "x"], "--system needs the chat template"),
    (["info", "zen-9b"], "unknown model 'zen-9b'"),
])
def test_errors_are_one_line(args, message):
    r = zen(*args)
    assert r.returncode == 1
    assert r.stderr.count("\n") == 1 and message in r.stderr and r.stderr.startswith("zen: error:")
    assert r.stdout == ""


def test_chat_multi_turn_reset_exit():
    r = zen("chat", "--temperature", "0", "--max-tokens", "24",
            input="My name is Ada. Reply with just OK.\nWhat is my name?\n/reset\nWhat is my name?\n/exit\n")
    assert r.returncode == 0, r.stderr
    answers = [line for line in r.stdout.split(">>> ") if line.strip()]
    assert len(answers) == 3, r.stdout
    assert "Ada" in answers[1]  # remembers the first turn
    assert "Ada" not in answers[2]  # forgot it after /reset
    assert "history cleared" in r.stderr


def test_chat_ctrl_c_stops_the_answer_not_the_chat():
    # a job started in the background (`cmd &` in a script) ignores SIGINT, and its children inherit
    # that: give the chat the default disposition, as a terminal would
    p = subprocess.Popen([sys.executable, "-m", "zenlm", "chat", "--temperature", "0", "--max-tokens", "400"],
                         stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    p.stdin.write(b"Write a long essay about the history of computing.\n")
    p.stdin.flush()
    os.set_blocking(p.stdout.fileno(), False)
    seen, deadline = b"", time.time() + 240
    while len(seen) < 40 and time.time() < deadline:  # wait until the answer is streaming
        try:
            seen += os.read(p.stdout.fileno(), 4096)
        except BlockingIOError:
            time.sleep(0.2)
    assert len(seen) >= 40, "the answer never started streaming"
    p.send_signal(signal.SIGINT)
    time.sleep(1)
    os.set_blocking(p.stdout.fileno(), True)
    out, err = p.communicate(b"/exit\n", timeout=120)
    assert p.returncode == 0, err
    assert b"[stopped]" in seen + out


def test_bench_json():
    r = zen("bench", "--prompt-tokens", "64", "--gen-tokens", "8", "--concurrency", "2", "--json")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)
    for key in ("prefill_tok_s", "decode_tok_s", "ttft_s", "aggregate_tok_s", "aggregate_short_tok_s", "peak_rss_mb",
                "load_s"):
        assert d[key] > 0, key
    assert d["dtype"] == "auto" and d["concurrency"] == 2
    from zenlm.bench import _kernels

    assert d["kernels"] == _kernels() != "torch ops (no C kernels)"  # the C kernels built and ran
