"""A reference GPTQ / AWQ packer written from the formats' description, one input or output at a time
(slow and obvious), and tiny quantized HF checkpoints made with it: the oracle for zenlm/quant/packing.py
and for loading GPTQ/AWQ directories.

GPTQ: qweight[k // per, n] holds q[n, k] at bits * (k % per); qzeros[g, n // per] holds the zero point
(minus one in the v1 format) at bits * (n % per), per = 32 // bits. AWQ GEMM: qweight[k, n // 8] holds
q[n, k] at 4 * i where AWQ_ORDER[i] == n % 8; qzeros the same way along n.
"""

import json
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from tests.tiny_train import byte_tokenizer
from zenlm.config import Config
from zenlm.model import Transformer, checkpoint_state_dict
from zenlm.train.export import hf_config

AWQ_ORDER = [0, 2, 4, 6, 1, 3, 5, 7]
LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SHARED_INPUT = {"q_proj": "attn", "k_proj": "attn", "v_proj": "attn", "gate_proj": "mlp", "up_proj": "mlp"}


def _signed(words: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(words.astype(np.uint32).view(np.int32).copy())


def pack_gptq(q: np.ndarray, zero: np.ndarray, bits: int, v1: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """q [N, K], zero [G, N] (unsigned ints) -> qweight [K * bits / 32, N], qzeros [G, N * bits / 32]."""
    per = 32 // bits
    N, K = q.shape
    qweight = np.zeros((K // per, N), dtype=np.uint64)
    for k in range(K):
        qweight[k // per] |= q[:, k].astype(np.uint64) << np.uint64(bits * (k % per))
    stored = zero.astype(np.int64) - (1 if v1 else 0)
    assert stored.min() >= 0, "v1 stores zero points minus one"
    qzeros = np.zeros((zero.shape[0], N // per), dtype=np.uint64)
    for n in range(N):
        qzeros[:, n // per] |= stored[:, n].astype(np.uint64) << np.uint64(bits * (n % per))
    return _signed(qweight), _signed(qzeros)


def pack_awq(q: np.ndarray, zero: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """q [N, K], zero [G, N] (4-bit) -> qweight [K, N / 8], qzeros [G, N / 8] in AWQ's interleaved order."""
    N, K = q.shape
    qweight = np.zeros((K, N // 8), dtype=np.uint64)
    qzeros = np.zeros((zero.shape[0], N // 8), dtype=np.uint64)
    for n in range(N):
        shift = np.uint64(4 * AWQ_ORDER.index(n % 8))
        qweight[:, n // 8] |= q[n, :].astype(np.uint64) << shift
        qzeros[:, n // 8] |= zero[:, n].astype(np.uint64) << shift
    return _signed(qweight), _signed(qzeros)


def random_grid(rng: np.random.Generator, N: int, K: int, bits: int, group: int, sym: bool,
                order: np.ndarray | None, v1: bool = True) -> dict:
    """A random quantized weight: q, scale, zero, g_idx (act-order: input order[i] is in group i // G)."""
    G = K if group == -1 else group
    maxq = (1 << bits) - 1
    q = rng.integers(0, maxq + 1, size=(N, K))
    # a unit-gain layer (w's std about 1/sqrt(K)) keeps the random network's logits well-conditioned
    step = 1 / np.sqrt(K) / ((maxq + 1) / np.sqrt(12))
    scale = (step * rng.uniform(0.5, 1.5, size=(K // G, N))).astype(np.float16)
    if sym:
        zero = np.full((K // G, N), (maxq + 1) // 2)
    else:  # off-centre zero points, on both sides
        zero = rng.integers(max(1 if v1 else 0, maxq // 4), maxq - maxq // 4 + 1, size=(K // G, N))
    g_idx = np.arange(K) // G
    if order is not None:
        g_idx = np.empty(K, dtype=np.int64)
        g_idx[order] = np.arange(K) // G
    return {"q": q, "scale": scale, "zero": zero, "g_idx": g_idx}


def dequantize(g: dict) -> torch.Tensor:
    """w[n, k] = scale[g_idx[k], n] * (q[n, k] - zero[g_idx[k], n]), in float64 then float32."""
    s = g["scale"].astype(np.float64)[g["g_idx"]].T
    z = g["zero"].astype(np.float64)[g["g_idx"]].T
    return torch.from_numpy(s * (g["q"] - z)).float()


def write_quantized_dir(path: Path, c: Config, method: str, bits: int = 4, group: int = 32, sym: bool = True,
                        desc_act: bool = False, v1: bool = True, seed: int = 0,
                        shared_order: bool = True) -> tuple[Path, dict[str, torch.Tensor]]:
    """A GPTQ or AWQ HF directory of random grids for every linear of every layer (float tensors stored in
    fp16, as the tools write them); returns it and the float32 checkpoint it stands for (HF names).
    shared_order False gives each member of a fused linear its own act-order (a case zenlm cannot fuse)."""
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in checkpoint_state_dict(Transformer(c)).items()}
    tensors, truth = {}, {}
    for name, shape in shapes.items():
        if any(f".{lin}." in name for lin in LINEARS) and name.endswith(".weight"):
            continue
        if name == "lm_head.weight" and c.tie_word_embeddings:
            continue
        t = (torch.randn(shape) * (0.1 if name.endswith("bias") else 0.5)).half()
        if "norm" in name:
            t = (1 + 0.2 * torch.randn(shape)).half()
        tensors[name], truth[name] = t, t.float()
    for layer in range(c.num_layers):
        orders = {}  # input -> act-order permutation shared by the linears reading it
        for lin in LINEARS:
            part = "mlp" if lin in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            prefix = f"model.layers.{layer}.{part}.{lin}"
            N, K = shapes[f"{prefix}.weight"]
            key = SHARED_INPUT.get(lin, lin) if shared_order else lin
            order = orders.setdefault(key, rng.permutation(K)) if desc_act else None
            g = random_grid(rng, N, K, bits, group, sym, order, v1)
            truth[f"{prefix}.weight"] = dequantize(g)
            if method == "gptq":
                qweight, qzeros = pack_gptq(g["q"], g["zero"], bits, v1)
                tensors[f"{prefix}.g_idx"] = torch.from_numpy(g["g_idx"].astype(np.int32))
            else:
                qweight, qzeros = pack_awq(g["q"], g["zero"])
            tensors[f"{prefix}.qweight"], tensors[f"{prefix}.qzeros"] = qweight, qzeros
            tensors[f"{prefix}.scales"] = torch.from_numpy(g["scale"])
    path.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path / "model.safetensors"), metadata={"format": "pt"})
    cfg = hf_config(c, torch.float16)
    if method == "gptq":
        cfg["quantization_config"] = {"quant_method": "gptq", "bits": bits, "group_size": group, "desc_act": desc_act,
                                      "sym": sym, "true_sequential": True, "damp_percent": 0.01, "static_groups": False,
                                      "checkpoint_format": "gptq" if v1 else "gptq_v2"}
    else:
        cfg["quantization_config"] = {"quant_method": "awq", "bits": bits, "group_size": group, "zero_point": True,
                                      "version": "gemm", "modules_to_not_convert": None}
    (path / "config.json").write_text(json.dumps(cfg, indent=2))
    byte_tokenizer().save(path)
    return path, truth
