"""`zen estimate` against the peak memory of real `zen train` runs on zen-tiny (within 20%).

Each measurement is a real training process (`python -m zenlm train pretrain --model zen-tiny`, a
few steps) whose peak resident memory is read from the kernel when it exits (its ru_maxrss, via
os.wait4 in a small launcher): imports, tokenizer, model, the steps, checkpoint and export all count.
The CLI prints the breakdown.
"""

import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from zenlm.cli import main
from zenlm.config import preset
from zenlm.train.estimate import estimate

# A fresh launcher forks the training process: on Linux exec records the exec'ing mm's peak in the
# process's ru_maxrss, so a child spawned straight from this (large) pytest process would report
# pytest's own RSS. The grandchild starts from the launcher's small mm and its ru_maxrss is its own.
LAUNCH = """import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.executable, [sys.executable] + sys.argv[1:])
_, status, usage = os.wait4(pid, 0)
print("MAXRSS_KIB", usage.ru_maxrss)
sys.exit(os.waitstatus_to_exitcode(status))
"""


def peak_rss_of_training(tmp_path: Path, method: str, T: int, B: int) -> int:
    """Run a 2-step zen-tiny training in a fresh process; its peak RSS in bytes (its own ru_maxrss)."""
    data = tmp_path / "data.py"
    data.write_text((Path(sysconfig.get_paths()["stdlib"]) / "json" / "decoder.py").read_text() * 4)
    out = tmp_path / method
    args = [sys.executable, "-c", LAUNCH, "-m", "zenlm", "train", "pretrain", "--model", "zen-tiny",
            "--data", str(data), "--output", str(out), "--seq-len", str(T), "--batch-size", str(B),
            "--max-steps", "2", "--no-progress", "--no-resume"] + ([f"--{method}"] if method != "full" else [])
    r = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
    assert (out / "model.safetensors").exists()
    return int(r.stdout.split("MAXRSS_KIB")[-1].split()[0]) * 1024  # KiB on Linux


@pytest.mark.parametrize("method,T,B", [("full", 256, 4), ("qlora", 256, 2)])
def test_estimate_within_20_percent_of_a_real_training_run(tmp_path, method, T, B):
    measured = peak_rss_of_training(tmp_path, method, T, B)
    est = estimate(preset("zen-tiny"), method, T, B)["bytes"]["total"]
    print(f"zen-tiny {method} T={T} B={B}: estimate {est / 2**30:.3f} GiB, measured {measured / 2**30:.3f} GiB")
    assert measured > 2**28  # a real process with torch and the model in it, not a stub
    assert 0.8 < est / measured < 1.2, (est, measured)


def test_estimate_breakdown_and_cli(capsys):
    c = preset("zen-0.5b")
    full, lora, qlora = (estimate(c, m, 1024, 2)["bytes"] for m in ("full", "lora", "qlora"))
    assert full["optimizer"] == 2 * full["weights"] == 2 * full["gradients"]
    assert full["total"] == full["step"] > full["load"]  # training outgrows loading the fp32 weights
    assert qlora["load"] < lora["load"] / 3  # quantized while loading: no fp32 model first
    assert qlora["total"] == max(qlora["step"], qlora["adamw_step"], qlora["load"])
    assert lora["gradients"] < full["gradients"] / 50
    assert qlora["weights"] < lora["weights"] / 3  # 4-bit linears, the rest in bf16
    ckpt = estimate(c, "full", 1024, 2, checkpointing=True)["bytes"]
    assert ckpt["activations"] < full["activations"] / 5
    assert main(["estimate", "zen-0.5b", "--method", "qlora", "--seq-len", "1024", "--batch", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bytes"]["total"] == qlora["total"]
    assert main(["estimate", "zen-tiny"]) == 0
    assert "activations" in capsys.readouterr().out
    with pytest.raises(ValueError, match="method"):
        estimate(c, "adapter")
