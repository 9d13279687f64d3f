"""Distributed training for real: `torchrun --nproc_per_node 2 -m zenlm train` on CPU (gloo, FSDP2).

The 2-process run's losses equal the single-process run with the same global batch (fp32), its
distributed checkpoint resumes on 1 process to the same next losses, and its export equals the
single-process export. A LoRA run with one held-out item on two ranks finishes (every rank runs
the same number of forwards), its held-out loss is that item's own, and rank 0 writes the adapter.
"""

import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
import torch

from tests.tiny_train import write_model_dir
from zenlm.train.trainer import hidden_states
from zenlm.weights.safetensors import read_safetensors

COMMON = ["pretrain", "--max-steps", "6", "--seq-len", "32", "--batch-size", "2", "--lr", "3e-3",
          "--warmup-steps", "2", "--no-bf16", "--no-progress", "--val-fraction", "0", "--save-every", "3"]


def zen(args: list[str], nproc: int = 1, timeout: float = 300) -> None:
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    if nproc == 1:
        cmd = [sys.executable, "-m", "zenlm", "train", *args]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
               "-m", "zenlm", "train", *args]
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    try:
        _, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)  # the workers too
        raise
    assert p.returncode == 0, err[-3000:]


def losses(out) -> list[float]:
    return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()]


def documents(src, n: int):
    """n small text files in src, each a little longer than the one before."""
    src.mkdir()
    for i in range(n):
        (src / f"d{i}.txt").write_text(f"document {i}: " + "the quick brown fox jumps. " * (3 + i))
    return src


def weights(out) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in read_safetensors(out / "model.safetensors")}


def test_two_process_fsdp_equals_one_process_and_resumes_on_one(tmp_path):
    base, src = write_model_dir(tmp_path / "base"), documents(tmp_path / "text", 12)
    data = ["--model", str(base), "--data", str(src)]
    one, two = tmp_path / "one", tmp_path / "two"
    zen(COMMON + data + ["--output", str(one), "--grad-accum", "2"])
    zen(COMMON + data + ["--output", str(two)], nproc=2)
    ref = losses(one)
    assert len(ref) == 6 and ref[-1] < ref[0]
    assert losses(two) == pytest.approx(ref, rel=1e-5, abs=1e-6)
    assert sorted(p.name for p in (two / "checkpoints" / "step_0000003").glob("*.distcp")) == \
        ["__0_0.distcp", "__1_0.distcp"]
    w1, w2 = weights(one), weights(two)
    assert w1.keys() == w2.keys()
    for k in w1:
        torch.testing.assert_close(w2[k], w1[k], atol=1e-5, rtol=1e-4)

    # kill the 2-process run after step 3 (drop what came later) and resume it on 1 process
    shutil.rmtree(two / "checkpoints" / "step_0000006")
    (two / "model.safetensors").unlink()
    zen(COMMON + data + ["--output", str(two), "--grad-accum", "2"])
    resumed = losses(two)
    assert resumed[3:] == pytest.approx(ref[3:], rel=1e-5, abs=1e-6)
    for k, v in weights(two).items():
        torch.testing.assert_close(v, w1[k], atol=1e-5, rtol=1e-4)


def test_two_process_lora_with_one_held_out_item_finishes_and_writes_the_adapter(tmp_path):
    from zenlm.train.data import collate, pretrain_rows
    from zenlm.train.lora import LoRALinear, load_adapter
    from zenlm.train.losses import CrossEntropy
    from zenlm.weights.load import load

    base, src = write_model_dir(tmp_path / "base"), documents(tmp_path / "text", 6)
    held = tmp_path / "held.txt"
    held.write_text("held out: the lazy dog sleeps all day long.")  # one row of 32 tokens
    out = tmp_path / "lora"
    args = ["pretrain", "--model", str(base), "--data", str(src), "--eval-data", str(held), "--output", str(out),
            "--max-steps", "2", "--eval-every", "1", "--seq-len", "32", "--batch-size", "2", "--lr", "3e-2",
            "--warmup-steps", "1", "--no-bf16", "--no-progress", "--lora", "--lora-rank", "4"]
    zen(args, nproc=2, timeout=180)  # before the padding this hung in the held-out evaluation
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2] and all("eval_loss" in r for r in recs)

    # the adapter: PEFT names, one A and B per target linear, loads back into the base
    loaded = load(str(base), dtype=torch.float32, progress=False)
    model, tok = loaded.model, loaded.tokenizer
    cfg = load_adapter(model, out / "adapter")
    assert cfg.rank == 4
    mods = [m for m in model.modules() if isinstance(m, LoRALinear)]
    pairs = [(A, m.lora_B[name]) for m in mods for name, A in m.lora_A.items()]  # one per HF linear
    assert len(mods) == 2 * 4 and len(pairs) == 2 * 7 and all(A.shape[0] == 4 for A, _ in pairs)
    assert any(B.abs().sum() > 0 for _, B in pairs)  # trained: B starts at zero

    # base + adapter equals the merged export, and its loss on the held-out item is the logged one
    row = pretrain_rows([str(held)], tok, 32)
    assert len(row) == 1
    batch = collate(row)
    merged = load(str(out), dtype=torch.float32, progress=False).model
    with torch.no_grad():
        ce = CrossEntropy()
        got = float(ce(lambda b: hidden_states(model, b), model.lm_head.weight, batch).total) / ce.count(batch)
        ref = float(ce(lambda b: hidden_states(merged, b), merged.lm_head.weight, batch).total) / ce.count(batch)
    assert got == pytest.approx(ref, rel=1e-5)
    assert recs[-1]["eval_loss"] == pytest.approx(got, rel=1e-4)
