"""Weight-only quantization: kernel outputs against float math, quantize-on-load with fused projections,
and the bound the quantized paths keep on the real model (perplexity of held-out text, top-1 agreement)."""

import inspect
import json
import math

import pytest
import torch
from torch import nn

from zenlm.quant.linear import Int4Linear, Int8Linear, quantize_model


@pytest.mark.parametrize("kind,tol", [(Int8Linear, 0.02), (Int4Linear, 0.15)])
def test_quantized_linear_is_close_to_float(kind, tol):
    torch.manual_seed(0)
    lin = nn.Linear(256, 96, bias=True)
    x = torch.randn(5, 256)
    want = lin(x)
    got = kind(lin)(x.to(torch.bfloat16)).float()
    assert got.shape == want.shape
    assert ((got - want).norm() / want.norm()).item() < tol


def test_int4_on_a_weight_it_can_represent_exactly_is_exact():
    torch.manual_seed(0)
    lin = nn.Linear(64, 16, bias=False)
    q = torch.randint(0, 16, (16, 2, 32))
    q[:, :, 0], q[:, :, 1] = 0, 15  # every group of 32 spans the whole 4-bit range
    with torch.no_grad():  # integers 0..15 times 0.25, minus 1: exactly representable
        lin.weight.copy_(q.view(16, 64).float() * 0.25 - 1)
    x = torch.eye(64, dtype=torch.bfloat16)
    torch.testing.assert_close(Int4Linear(lin)(x).float().t(), lin.weight, rtol=0, atol=0)


def test_quantize_model_swaps_every_linear():
    m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Sequential(nn.Linear(64, 40), nn.Linear(40, 64)))
    quantize_model(m, "int4")
    assert isinstance(m[0], Int4Linear)
    assert isinstance(m[2][0], Int8Linear) and isinstance(m[2][1], Int8Linear)  # N or K the kernel can't tile
    with pytest.raises(ValueError, match="unknown quantization 'int3'"):
        quantize_model(nn.Sequential(nn.Linear(4, 4)), "int3")


HELD_OUT = inspect.getsource(json)[:4000]  # text the model was not tuned on in this form: stdlib source


@pytest.fixture(scope="module")
def fp32_reference(default_llm):
    ids = torch.tensor([default_llm.tokenizer.encode(HELD_OUT)[:512]])
    with torch.inference_mode():
        logits = default_llm.model(ids, torch.arange(ids.shape[1])[None]).float()
    return ids, logits


def perplexity(logits, ids) -> float:
    return math.exp(torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item())


@pytest.mark.parametrize("mode,ppl_bound,agree_bound", [("int8", 1.01, 0.97), ("int4", 1.08, 0.88)])
def test_quantized_real_model_stays_close_to_fp32(fp32_reference, mode, ppl_bound, agree_bound):
    from zenlm.weights.load import load

    ids, ref = fp32_reference
    m = load("default", dtype=torch.bfloat16, quant=mode, progress=False).model
    assert m.model.layers[0].self_attn.qkv_proj is not None and m.model.layers[0].mlp.gate_up_proj is not None
    with torch.inference_mode():
        logits = m(ids, torch.arange(ids.shape[1])[None]).float()
    p_ref, p = perplexity(ref, ids), perplexity(logits, ids)
    agree = (logits.argmax(-1) == ref.argmax(-1)).float().mean().item()
    print(f"{mode}: perplexity {p:.4f} vs fp32 {p_ref:.4f}; top-1 agreement {agree:.3f}")
    assert p / p_ref < ppl_bound and agree > agree_bound
