"""Write a GPTQ or AWQ HF directory from any model zenlm loads: `quantize_to_hf` (`zen quantize`'s engine).

Methods: rtn (GPTQ's grid and format, rounding only, no data), gptq (gptq.py) and awq (awq.py), both on
calibration text (up to 128 samples of 512 tokens). The directory holds what AutoGPTQ/GPTQModel and
AutoAWQ write: config.json with `quantization_config`, model.safetensors with each block linear as
qweight/qzeros/scales (+ g_idx for GPTQ) and its bias, every other tensor in fp16, tokenizer files and
generation_config.json (+ quantize_config.json for GPTQ, AutoGPTQ's own copy). GPTQ is written in the
classic v1 format (zero points minus one), symmetric like AutoGPTQ's default, which is what vLLM's
Marlin kernels and transformers read; AWQ in the GEMM layout with zero points. The embedding, norms and
head stay in fp16 (both tools quantize only the blocks' linears).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
from safetensors.torch import save_file

from zenlm.model import checkpoint_layout
from zenlm.quant.packing import Grid, to_awq, to_gptq

log = logging.getLogger("zenlm.quant")

METHODS = ("rtn", "gptq", "awq")
CALIB_SAMPLES, CALIB_LEN = 128, 512
DAMP = 0.01


def check_args(method: str, bits: int, group_size: int, calib: Path | None, desc_act: bool) -> None:
    """ValueError, before anything loads, for a combination that cannot be written."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if bits not in (4, 8):
        raise ValueError(f"bits must be 4 or 8, got {bits}")
    if method == "awq" and bits != 4:
        raise ValueError("AWQ's GEMM format holds 4-bit weights only")
    if group_size != -1 and (group_size <= 0 or group_size % 32):
        raise ValueError(f"group size must be a positive multiple of 32 or -1, got {group_size}")
    if method != "rtn" and calib is None:
        raise ValueError(f"{method} needs calibration text (--calib FILE or DIR)")
    if desc_act and method != "gptq":
        raise ValueError("desc_act (act-order) is GPTQ's; it does not apply to " + method)


def quantize_to_hf(src: str, output: Path, method: str, bits: int, group_size: int, calib: Path | None,
                   desc_act: bool = False, progress: bool = True) -> Path:
    """Quantize the model `src` names (anything zenlm loads, in fp32) and write it as an HF directory."""
    return quantize(src, output, method, bits, group_size, calib, desc_act, progress)


def quantize(src: str, output: Path, method: str, bits: int, group_size: int, calib: Path | None,
             desc_act: bool = False, progress: bool = True, samples: int = CALIB_SAMPLES, seq_len: int = CALIB_LEN,
             awq_search_samples: int = 16) -> Path:
    """quantize_to_hf with the calibration's size (samples x seq_len tokens) and AWQ's search subset open."""
    from zenlm.quant.calibration import calibration_files, calibration_tokens
    from zenlm.weights.load import load

    check_args(method, bits, group_size, calib, desc_act)
    output = Path(output)
    if (output / "config.json").exists():
        raise ValueError(f"{output} already holds a model (config.json); choose another --output")
    files = calibration_files(calib) if calib is not None and method != "rtn" else []
    loaded = load(src, dtype=torch.float32, progress=progress)
    model, tok = loaded.model, loaded.tokenizer
    tokens = calibration_tokens(tok, files, samples, seq_len) if files else None
    _check_groups(model, group_size)
    if method == "rtn":
        from zenlm.quant.gptq import quantize_rtn

        grids = quantize_rtn(model, bits, group_size)
    elif method == "gptq":
        from zenlm.quant.gptq import quantize_gptq

        grids = quantize_gptq(model, tokens, bits, group_size, act_order=desc_act, damp=DAMP, progress=progress)
    else:
        from zenlm.quant.awq import quantize_awq

        grids = quantize_awq(model, tokens, bits, group_size, search_samples=awq_search_samples, progress=progress)
    qc = quantization_config(method, bits, group_size, desc_act)
    return write(output, model, grids, qc, tok, loaded.generation_config)


def _check_groups(model, group_size: int) -> None:
    from zenlm.quant.gptq import block_linears

    for name, linear in block_linears(model).items():
        if group_size != -1 and linear.in_features % group_size:
            raise ValueError(f"{name} has {linear.in_features} inputs, not whole groups of {group_size}")


def quantization_config(method: str, bits: int, group_size: int, desc_act: bool) -> dict:
    """config.json's quantization_config as AutoGPTQ/GPTQModel (rtn, gptq) and AutoAWQ (awq) write it."""
    if method == "awq":
        return {"quant_method": "awq", "bits": bits, "group_size": group_size, "zero_point": True, "version": "gemm",
                "modules_to_not_convert": None}
    return {"quant_method": "gptq", "bits": bits, "group_size": group_size, "damp_percent": DAMP,
            "desc_act": desc_act, "static_groups": False, "sym": True, "true_sequential": True,
            "checkpoint_format": "gptq", "model_name_or_path": None, "model_file_base_name": "model"}


def write(output: Path, model, grids: dict[str, Grid], qc: dict, tokenizer, generation_config: dict) -> Path:
    """The HF directory: the grids packed per checkpoint member, every other tensor in fp16."""
    from zenlm.train.export import hf_config

    config = model.config
    sd = model.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    for name, (target, rows) in checkpoint_layout(model).items():
        owner, _, leaf = target.rpartition(".")
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        if owner in grids and leaf == "weight":
            g = grids[owner] if rows is None else grids[owner].rows(rows)
            member = name.removesuffix(".weight")
            packed = to_awq(g) if qc["quant_method"] == "awq" else to_gptq(g, v1=True)
            tensors |= {f"{member}.{k}": v for k, v in packed.items()}
        else:
            t = sd[target] if rows is None else sd[target][rows]
            tensors[name] = t.detach().to("cpu", torch.float16).contiguous()
    output.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(output / "model.safetensors"), metadata={"format": "pt"})
    cfg = hf_config(config, torch.float16) | {"quantization_config": qc}
    (output / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    if qc["quant_method"] == "gptq":
        (output / "quantize_config.json").write_text(json.dumps(qc, indent=2) + "\n")
    tokenizer.save(output)
    eos = tokenizer.eos_token_ids
    gen = {"bos_token_id": tokenizer.bos_token_id, "eos_token_id": eos if len(eos) > 1 else eos[0],
           "pad_token_id": tokenizer.pad_token_id}
    gen |= {k: v for k, v in (generation_config or {}).items() if not k.endswith("token_id")}
    (output / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    return output
