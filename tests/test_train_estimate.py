"""`zen estimate` against the peak memory of real `zen train` runs on zen-tiny (within 20%).

Each measurement is a real training process (`python -m zenlm train pretrain --model zen-tiny`, a
few steps) whose peak resident memory is read from the kernel when it exits (ru_maxrss of that
child, via os.wait4): imports, tokenizer, model, the steps, checkpoint and export all count.
The CLI prints the breakdown.
"""

import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from zenlm.cli import main
from zenlm.config import preset
from zenlm.train.estimate import estimate


def peak_rss_of_training(tmp_path: Path, method: str, T: int, B: int) -> int:
    """Run a 2-step zen-tiny training in a fresh process; its peak RSS in bytes (its own ru_maxrss)."""
    data = tmp_path / "data.py"
    data.write_text((Path(sysconfig.get_paths()["stdlib"]) / "json" / "decoder.py").read_text() * 4)
    out = tmp_path / method
    args = [sys.executable, "-m", "zenlm", "train", "pretrain", "--model", "zen-tiny", "--data", str(data),
            "--output", str(out), "--seq-len", str(T), "--batch-size", str(B), "--max-steps", "2",
            "--no-progress", "--no-resume"] + ([f"--{method}"] if method != "full" else [])
    with open(tmp_path / f"{method}.log", "w") as log:
        proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # this child's rusage, not every child's (RUSAGE_CHILDREN)
    assert os.waitstatus_to_exitcode(status) == 0, (tmp_path / f"{method}.log").read_text()[-2000:]
    assert (out / "model.safetensors").exists()
    return usage.ru_maxrss * 1024  # KiB on Linux


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
    assert qlora["load"] == lora["load"] and qlora["total"] == max(qlora["step"], qlora["load"])
    assert lora["gradients"] < full["gradients"] / 50 and qlora["weights"] < lora["weights"] / 2  # the fp32 embedding stays
    ckpt = estimate(c, "full", 1024, 2, checkpointing=True)["bytes"]
    assert ckpt["activations"] < full["activations"] / 5
    assert main(["estimate", "zen-0.5b", "--method", "qlora", "--seq-len", "1024", "--batch", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["bytes"]["total"] == qlora["total"]
    assert main(["estimate", "zen-tiny"]) == 0
    assert "activations" in capsys.readouterr().out
    with pytest.raises(ValueError, match="method"):
        estimate(c, "adapter")
