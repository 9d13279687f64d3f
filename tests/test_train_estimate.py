"""`zen estimate` against the measured peak memory of real training steps on zen-tiny (within 20%).

Each measurement runs in a fresh process: it resets the kernel's peak-RSS mark (/proc/self/clear_refs),
builds the model, runs two optimizer steps and reads VmHWM. The CLI prints the breakdown.
"""

import json
import subprocess
import sys

import pytest

from zenlm.cli import main
from zenlm.config import preset
from zenlm.train.estimate import estimate

MEASURE = r"""
import re, sys, torch
from zenlm.config import preset
from zenlm.model import Transformer
from zenlm.train.data import Batch, Loader, Row
from zenlm.train.losses import CrossEntropy
from zenlm.train.lora import LoRAConfig, apply_lora
from zenlm.train.trainer import Trainer, TrainConfig
method, T, B = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def rss(key):
    return int(re.search(rf"{key}:\s+(\d+)", open("/proc/self/status").read()).group(1)) * 1024
x = torch.randn(256, 256, requires_grad=True)
with torch.autocast("cpu", dtype=torch.bfloat16):
    (x @ x).float().sum().backward()  # libraries and thread pools are up before the baseline
open("/proc/self/clear_refs", "w").write("5")
base = rss("VmRSS")
c = preset("zen-tiny")
m = Transformer(c)
if method != "full":
    apply_lora(m, LoRAConfig(rank=16, alpha=32, quantize="nf4" if method == "qlora" else None))
g = torch.Generator().manual_seed(0)
rows = []
for _ in range(3 * B):
    t = torch.randint(0, c.vocab_size, (T + 1,), generator=g).tolist()
    rows.append(Row(t[:T], t[1:], list(range(T)), [0] * T))
def col(rs):
    return Batch(*(torch.tensor([getattr(r, k) for r in rs]) for k in ("tokens", "labels", "positions")), None)
tr = Trainer(m, CrossEntropy(), Loader(rows, B), col,
             TrainConfig(output=sys.argv[4], batch_size=B, progress=False, resume=False))
for _ in range(2):
    tr.train_step()
print(rss("VmHWM") - base)
"""


@pytest.mark.parametrize("method,T,B", [("full", 512, 4), ("lora", 256, 2)])
def test_estimate_within_20_percent_of_measured_peak(tmp_path, method, T, B):
    r = subprocess.run([sys.executable, "-c", MEASURE, method, str(T), str(B), str(tmp_path)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    measured = int(r.stdout.split()[-1])
    est = estimate(preset("zen-tiny"), method, T, B)["bytes"]["total"]
    assert 0.8 < est / measured < 1.2, (est, measured)


def test_estimate_breakdown_and_cli(capsys):
    c = preset("zen-0.5b")
    full, lora, qlora = (estimate(c, m, 1024, 2)["bytes"] for m in ("full", "lora", "qlora"))
    assert full["optimizer"] == 2 * full["weights"] == 2 * full["gradients"]
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
