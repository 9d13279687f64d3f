"""Tensor parallelism for real: 2 (and 3) gloo processes on loopback against one process, token for token.

Models: a tiny random HF directory whose 4 heads / 2 KV heads split over two ranks (KV partitioned), the
zen-tiny shape (3 heads, 1 KV head: KV replicated over three ranks) with a 300-token byte vocabulary, and the
real default model in fp32 (one short run). Also: int8 weights sharded in code space, `zen generate --tp 2`,
and workers that end when rank 0's process is killed.
"""

import gc
import os
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest
import serve_process
import torch
from tiny_train import byte_tokenizer, tiny_config

from zenlm.config import preset
from zenlm.engine.llm import LLM
from zenlm.engine.sampling import SamplingParams
from zenlm.model import Transformer

PROMPTS = ["hello world, ", "abc", "the quick brown fox jumps over"]
# two rows sharing a 32-token prefix: the second finds two whole blocks in the prefix cache
PREFIX = "0123456789abcdefghijklmnopqrstuv"


def model_dir(path: Path, **over) -> Path:
    """A random tiny model with weights large enough that greedy output wanders (std 0.02 repeats one token)."""
    from zenlm.train.export import save_model_dir

    torch.manual_seed(0)
    m = Transformer(tiny_config(**over))
    m.init_weights(std=0.25)
    return save_model_dir(path, m.config, m.state_dict(), byte_tokenizer())


def run(llm: LLM, max_tokens: int = 16) -> dict:
    """Greedy completions (batched, then a prefix-cache hit), their per-token logprobs and prompt logprobs."""
    sp = SamplingParams(max_tokens=max_tokens, temperature=0, logprobs=0)
    batch = llm.generate(PROMPTS, sp)
    first = llm.generate(PREFIX + "wx", sp)[0]
    hit = llm.generate(PREFIX + "yz", sp)[0]
    return {"tokens": [c.token_ids for c in batch + [first, hit]], "cached": hit.cached_tokens,
            "logprobs": [e[0] for c in batch + [first, hit] for e in c.logprobs],
            "prompt": [e[0] for e in llm.prompt_logprobs(llm.tokenizer.encode(PROMPTS[2]))[1:]]}


def compare(one: dict, many: dict) -> None:
    assert many["tokens"] == one["tokens"]
    assert len(set(map(tuple, one["tokens"]))) == len(one["tokens"]), "the rows should differ"
    assert one["cached"] >= 16 and many["cached"] == one["cached"]
    torch.testing.assert_close(torch.tensor(many["logprobs"]), torch.tensor(one["logprobs"]), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(torch.tensor(many["prompt"]), torch.tensor(one["prompt"]), atol=1e-4, rtol=1e-4)


def both(path: Path, tp: int, dtype: str = "float32") -> tuple[dict, dict, LLM]:
    one = run(LLM(str(path), dtype=dtype, progress=False))
    llm = LLM(str(path), dtype=dtype, progress=False, tp=tp)
    return one, run(llm), llm


def test_two_ranks_with_partitioned_kv_heads_equal_one_process(tmp_path):
    one, many, llm = both(model_dir(tmp_path / "m"), 2)  # 4 heads, 2 KV heads: one KV head per rank
    try:
        assert llm.config.num_kv_heads == 2 and llm.model.config.num_kv_heads == 1  # rank 0's shard and cache
        assert llm.engine.runner.cache.k[0].shape[1] == 1
        compare(one, many)
    finally:
        llm.close()
    assert all(not p.is_alive() for p in llm.tp.procs)
    with pytest.raises(RuntimeError, match="the tensor-parallel group is closed"):
        llm.generate("abc", SamplingParams(max_tokens=2))


def test_zen_tiny_over_three_ranks_replicates_its_one_kv_head(tmp_path):
    c = preset("zen-tiny")  # 3 heads, 1 KV head, head_dim 32: tp=3 keeps the KV head on every rank
    shape = dict(hidden_size=c.hidden_size, num_layers=c.num_layers, num_heads=c.num_heads,
                 num_kv_heads=c.num_kv_heads, head_dim=c.head_dim, intermediate_size=c.intermediate_size,
                 tie_word_embeddings=c.tie_word_embeddings)
    one, many, llm = both(model_dir(tmp_path / "m", **shape), 3)
    try:
        assert llm.model.config.num_heads == 1 and llm.model.config.num_kv_heads == 1
        compare(one, many)
    finally:
        llm.close()


def test_int8_weights_shard_in_code_space(tmp_path):
    # hidden 64, 2 heads of 16 per rank (32 inputs), MLP 64 per rank: o_proj and down_proj split on group bounds
    path = model_dir(tmp_path / "m", intermediate_size=128)
    one, many, llm = both(path, 2, dtype="int8")
    try:
        from zenlm.quant.linear import QLinear

        assert isinstance(llm.model.model.layers[0].self_attn.o_proj.inner, QLinear)
        compare(one, many)
    finally:
        llm.close()


def test_zen_generate_with_tp_two_prints_what_one_process_prints(tmp_path):
    path = model_dir(tmp_path / "m")

    def generate(tp: int) -> str:
        out = subprocess.run([sys.executable, "-m", "zenlm", "generate", "hello world", "--raw", "--model",
                              str(path), "--dtype", "float32", "--temperature", "0", "--max-tokens", "24",
                              "--tp", str(tp)], capture_output=True, text=True, timeout=180)
        assert out.returncode == 0, out.stderr
        return out.stdout

    assert generate(2) == generate(1)
    bad = subprocess.run([sys.executable, "-m", "zenlm", "generate", "x", "--model", str(path), "--tp", "many"],
                         capture_output=True, text=True, timeout=180)
    assert bad.returncode == 1 and "--tp must be a whole number" in bad.stderr


def test_bfloat16_runs_sharded_within_bfloat16_rounding(tmp_path):
    one, many, llm = both(model_dir(tmp_path / "m"), 2, dtype="bfloat16")
    llm.close()
    assert many["cached"] == one["cached"] >= 16
    assert many["tokens"][0][:4] == one["tokens"][0][:4]  # bf16 partial sums round differently: the start agrees
    torch.testing.assert_close(torch.tensor(many["prompt"]), torch.tensor(one["prompt"]), atol=0.25, rtol=0.05)


def test_torchrun_ranks_equal_one_process(tmp_path):
    path = model_dir(tmp_path / "m")
    args = ["-m", "zenlm", "generate", "hello world", "--raw", "--model", str(path), "--dtype", "float32",
            "--temperature", "0", "--max-tokens", "24"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    run = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port())]
    ranks = subprocess.run([*run, *args, "--tp", "2"], capture_output=True, text=True, timeout=180, env=env)
    assert ranks.returncode == 0, ranks.stderr
    one = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=180)
    assert ranks.stdout == one.stdout  # rank 1 prints nothing: it served rank 0's forwards, then exited


def test_zen_serve_with_tp_two_answers_the_openai_client_and_stops_its_workers(tmp_path):
    path = model_dir(tmp_path / "m")
    want = LLM(str(path), dtype="float32", progress=False).generate(PROMPTS[2], SamplingParams(max_tokens=16,
                                                                                                temperature=0))[0]
    proc, url = serve_process.start(["--model", str(path), "--dtype", "float32", "--tp", "2"], tmp_path / "log")
    try:
        workers = _children(proc.pid)
        assert len(workers) >= 1
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="none")
        got = client.completions.create(model="m", prompt=PROMPTS[2], max_tokens=16, temperature=0)
        assert got.choices[0].text == want.text
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    log = (tmp_path / "log").read_text()
    assert "Traceback" not in log and "did not stop cleanly" not in log, log  # STOP, barrier, destroy
    assert not _gone(workers)


def _gone(pids: list[int], wait: float = 30) -> list[str]:
    """The command lines of those still alive after `wait` seconds."""
    deadline = time.time() + wait
    while time.time() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.2)
    return [Path(f"/proc/{p}/cmdline").read_text() for p in pids if _alive(p)]


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.split(")")[-1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


RANK0 = """
import os, sys, torch
from zenlm.engine.llm import LLM
if __name__ == "__main__":
    llm = LLM(sys.argv[1], dtype="float32", progress=False, tp=2)
    print(llm.tp.procs[0].pid, flush=True)
    sys.stdin.read()
"""


def test_workers_exit_when_rank_zero_is_killed(tmp_path):
    path = model_dir(tmp_path / "m")
    script = tmp_path / "rank0.py"
    script.write_text(RANK0)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    proc = subprocess.Popen([sys.executable, str(script), str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env)
    try:
        worker = int(proc.stdout.readline())
        os.kill(worker, 0)  # alive
        proc.kill()
        proc.wait(timeout=30)
        assert not _gone([worker]), "the worker outlived rank 0"
    finally:
        proc.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie (exited, not yet reaped by init) counts as gone
        return f.read().split(")")[-1].split()[0] != "Z"


def test_default_model_fp32_tp_two_equals_one_process(gguf_path):
    llm = LLM("default", dtype="float32", progress=False)
    messages = [{"role": "user", "content": "Write a Python function that reverses a string."}]
    sp = SamplingParams(max_tokens=12, temperature=0, logprobs=0)
    ids = [llm.chat_ids(messages), llm.tokenizer.encode("def fibonacci(n):")]

    def outputs(m: LLM) -> tuple[list, list, int]:
        done = m.generate(ids, sp) + m.generate([ids[0] + m.tokenizer.encode("Be brief.")], sp)
        return [c.token_ids for c in done], [e[0] for c in done for e in c.logprobs], done[-1].cached_tokens

    ref = outputs(llm)
    del llm
    gc.collect()
    llm = LLM("default", dtype="float32", progress=False, tp=2)
    try:
        got = outputs(llm)
    finally:
        llm.close()
    assert got[0] == ref[0] and len(got[1]) >= 12
    assert got[2] == ref[2] >= 16  # the chat prompt's whole blocks came from the prefix cache
    torch.testing.assert_close(torch.tensor(got[1]), torch.tensor(ref[1]), atol=1e-3, rtol=1e-3)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
