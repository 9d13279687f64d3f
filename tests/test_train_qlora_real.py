"""QLoRA SFT on the real default model (zen-Coder-0.5B-Instruct Q4_K_M GGUF), in its own process.

`zen train sft --qlora --checkpointing` at seq 256, batch 1, two steps (activation checkpointing, as
the Qwen v1 README's Q-LoRA runs use: without it the 24 blocks' saved activations add 0.42 GiB); the
process's peak resident memory (its
ru_maxrss, read through a small forking launcher as in test_train_estimate.py) must stay within the
4-bit weights (the GGUF file) plus 1 GiB, and within 20% of `zen estimate`'s figure for the run.
"""

import json
import subprocess
import sys
from pathlib import Path

from tests.test_train_estimate import LAUNCH
from zenlm.train.estimate import estimate
from zenlm.weights.gguf import GGUFCheckpoint

GiB = 2 ** 30


def test_qlora_sft_peak_rss_is_the_4bit_weights_plus_at_most_1_gib(tmp_path, gguf_path):
    chats = [{"messages": [{"role": "user", "content": f"Write function number {i} adding two numbers. " * 4},
                           {"role": "assistant", "content": f"def add_{i}(a, b):\n    return a + b\n" * 6}]}
             for i in range(20)]
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps(c) + "\n" for c in chats))
    out = tmp_path / "out"
    args = [sys.executable, "-c", LAUNCH, "-m", "zenlm", "train", "sft", "--model", str(gguf_path), "--qlora",
            "--checkpointing", "--data", str(data), "--output", str(out), "--seq-len", "256", "--batch-size", "1",
            "--max-steps", "2", "--no-progress", "--no-resume"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-2000:]
    peak = int(r.stdout.split("MAXRSS_KIB")[-1].split()[0]) * 1024
    weights = Path(gguf_path).stat().st_size  # the default model's 4-bit weights (Q4_K_M)
    est = estimate(GGUFCheckpoint(gguf_path).config, "qlora", 256, 1, checkpointing=True)["bytes"]["total"]
    print(f"QLoRA SFT 0.5B seq 256 batch 1: peak RSS {peak / GiB:.3f} GiB, 4-bit weights {weights / GiB:.3f} GiB, "
          f"bound {(weights + GiB) / GiB:.3f} GiB, estimate {est / GiB:.3f} GiB")
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(0 < x < 20 for x in losses)
    assert (out / "adapter" / "adapter_model.safetensors").exists() and (out / "model.safetensors").exists()
    assert peak > 0.5 * GiB  # a real process holding the model, not a stub
    assert peak <= weights + GiB
    assert 0.8 < est / peak < 1.2, (est, peak)
