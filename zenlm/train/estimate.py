"""`zen estimate`: training memory from the config alone, itemised as this package trains.

Weights (fp32; for QLoRA 4-bit linears and the rest in bf16 or fp32), gradients and AdamW states of
what trains, activations saved for backward per block (bf16 autocast or fp32; all blocks, or block
inputs plus one block with activation checkpointing), attention K/V and masks, the chunked output
head's buffers, and the process itself (Python, torch, tokenizer). The peak is the largest of a
forward/backward, the AdamW update (its foreach temporaries) and loading (fp32 weights plus one tensor
being dequantized; QLoRA quantizes while loading, qlora_load.py, so its load is its own weights plus
one chunk of rows).
Counted per tensor as trainer.py, losses.py and model.py allocate them, with two measured constants
(RUNTIME, the head's workspace); not a measurement.
"""

from __future__ import annotations

from zenlm.config import Config, param_counts
from zenlm.train.lora import ROWS
from zenlm.train.losses import CHUNK

GiB = 1024 ** 3
# Resident memory of a `zen train` process before its model exists: Python, torch and its CPU
# kernels, zenlm, the 151,936-token tokenizer and the tokenized data (measured: 0.33-0.36 GiB).
RUNTIME = int(0.34 * GiB)


def _linears(c: Config) -> list[tuple[int, int]]:
    """(in, out) of every projection in the blocks (dense layers)."""
    h, q, kv, i = c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.intermediate_size
    per = [(h, q), (h, kv), (h, kv), (q, h), (h, i), (h, i), (i, h)]
    return per * c.num_layers


def estimate(c: Config, method: str = "full", seq_len: int = 512, batch: int = 1, lora_rank: int = 16,
             checkpointing: bool = False, bf16: bool = True, qlora_dtype: str = "bf16") -> dict:
    """Bytes per component and their sum (`total`), for one training step at its peak. qlora_dtype is
    QLoRA's dtype for the weights not in 4 bits (embedding, norms, head)."""
    if method not in ("full", "lora", "qlora"):
        raise ValueError(f"method must be full, lora or qlora, got {method!r}")
    if qlora_dtype not in ("bf16", "fp32"):
        raise ValueError(f"qlora_dtype must be bf16 or fp32, got {qlora_dtype!r}")
    if c.is_moe:
        raise ValueError("the memory estimate covers dense models only")
    P = param_counts(c)["params_total"]
    lin = sum(a * b for a, b in _linears(c))
    h, q, kv, inter = c.hidden_size, c.num_heads * c.head_dim, c.num_kv_heads * c.head_dim, c.intermediate_size
    V, L, N = c.vocab_size, c.num_layers, batch * seq_len
    a = 2 if bf16 else 4  # bytes of an activation in the compute dtype
    cast = 1 if bf16 else 0  # autocast keeps a bf16 copy of each linear's fp32 input

    if method == "full":
        weights, trainable = 4 * P, P
    else:
        trainable = sum(lora_rank * (i + o) for i, o in _linears(c))
        scales = sum(i * o // (64 if i % 64 == 0 else 32) * 4 for i, o in _linears(c))  # bf16 scale + low per block
        frozen = 2 if method == "qlora" and qlora_dtype == "bf16" else 4  # bytes of a weight not in 4 bits
        base = 4 * P if method == "lora" else frozen * (P - lin) + lin // 2 + scales
        weights = base + 4 * trainable
    grads = 4 * trainable
    optimizer = 8 * trainable  # AdamW exp_avg + exp_avg_sq, fp32

    # Saved for backward, bytes per token per block (model.py under the loop's autocast):
    norms = 2 * 8 * h  # each RMSNorm keeps its fp32 input and normalised output
    casts = cast * 2 * 2 * h  # bf16 copies of the normed input for the fused qkv_proj and gate_up_proj
    attn = 5 * q * a + 4 * kv * a  # q, k (+ rotated, + SDPA inputs), v, attention output, o_proj input
    mlp = 4 * inter * a  # gate, up, silu(gate), silu(gate) * up
    lora = 0 if method == "full" else sum(lora_rank * a for _ in range(7)) + 7 * h * a
    per_block = norms + casts + attn + mlp + lora
    kv_bytes = N * (2 * kv * a) * L + batch * seq_len * seq_len * L  # K/V kept by attention + bool masks
    if checkpointing:
        activations = N * 4 * h * L + N * per_block  # block inputs, then one block recomputed
        kv_bytes = N * 2 * kv * a + batch * seq_len * seq_len
    else:
        activations = N * per_block * L
    activations += N * 4 * h * 3  # embedding output, final norm input and output
    backward = N * per_block  # gradients of one block's activations while it runs backward
    head_trains = method == "full"
    rows = min(CHUNK, N)
    head = 2 * rows * V * a + N * 4 * h  # logits and probabilities buffers, grad of the hidden states
    if a == 2 and not (method == "qlora" and qlora_dtype == "bf16"):
        head += V * h * 2  # the bf16 copy of the fp32 head weight
    if head_trains:
        head += V * h * 4 + V * h * a  # fp32 grad of the head weight and each chunk's part
    # The matmul library's packed copies of the head weight when autocast casts an fp32 head (measured, not
    # derived); a head already in the compute dtype (QLoRA's bf16) is used as it is (measured: none).
    workspace = 0 if method == "qlora" and qlora_dtype == "bf16" and a == 2 else 2 * V * h * a
    out = {"runtime": RUNTIME, "weights": weights, "gradients": grads, "optimizer": optimizer,
           "activations": activations, "kv": kv_bytes, "backward": backward, "head": head,
           "workspace": workspace}
    if method == "qlora":  # the largest (fused) 4-bit weight dequantized for its matmul, ROWS rows at a time
        out["dequant"] = max(h * (q + 2 * kv), q * h, 2 * h * inter, inter * h) * a + ROWS * max(h, q, inter) * 12
    out["step"] = sum(out.values())
    # The optimizer step, after backward: foreach AdamW makes one more fp32 tensor per trainable one (sqrt v).
    out["adamw_step"] = RUNTIME + weights + grads + optimizer + 4 * trainable
    # Loading: the fp32 model plus its largest tensor (the embedding) being dequantized or cast beside
    # it. QLoRA quantizes while loading: its own weights plus one chunk of rows (float, codes, sums).
    if method == "qlora":
        out["load"] = RUNTIME + weights + ROWS * max(h, q, inter) * 16
    else:
        out["load"] = RUNTIME + 4 * P + 4 * V * h
    out["total"] = max(out["step"], out["adamw_step"], out["load"])
    return {"model": c.name, "method": method, "seq_len": seq_len, "batch": batch, "bf16": bf16,
            "checkpointing": checkpointing, "lora_rank": lora_rank, "qlora_dtype": qlora_dtype,
            "params": P, "trainable": trainable, "bytes": out}


def format_estimate(e: dict) -> str:
    lines = [f"{e['model']}  {e['method']}  batch {e['batch']} x seq {e['seq_len']}  "
             f"{'bf16 autocast' if e['bf16'] else 'fp32'}{'  checkpointing' if e['checkpointing'] else ''}",
             f"params {e['params']:,}  trainable {e['trainable']:,}"]
    for k, v in e["bytes"].items():
        lines.append(f"{k:12s} {v / GiB:8.3f} GiB")
    return "\n".join(lines)
