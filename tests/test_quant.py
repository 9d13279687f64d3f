"""Weight-only quantization: kernel outputs against float math, quantize-on-load with fused projections,
and the bound the quantized paths keep on the real model (perplexity of held-out text, top-1 agreement)."""

import inspect
import json
import math
import platform

import pytest
import torch
from torch import nn

import zenlm.kernels
import zenlm.kernels.ops
from zenlm.kernels.loader import _cpu_id, build
from zenlm.quant.linear import QLinear, _quantize_torch, quantize_linear, quantize_model


def _marches() -> list[str]:
    """The builds to test: this CPU's and, on x86, AVX2's (what most laptops run; where this CPU can
    run it) and plain C's."""
    if platform.machine() not in ("x86_64", "AMD64"):
        return ["native"]
    flags = set(_cpu_id().split())
    return ["native"] + (["x86-64-v3"] if {"avx2", "fma", "f16c"} <= flags else []) + ["x86-64"]


@pytest.fixture(params=_marches())
def kernels(request, monkeypatch):
    """The C kernels built for one instruction set, in place of this CPU's for every caller."""
    dll = build(request.param)  # BuildError (with the compiler's message) when they do not build
    monkeypatch.setattr(zenlm.kernels.ops, "lib", lambda: dll)
    return dll


@pytest.mark.parametrize("bits", [4, 5, 8])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_kernel_equals_float_math_on_the_dequantized_weight(kernels, bits, dtype):
    torch.manual_seed(0)
    lin = nn.Linear(256, 40, bias=True)  # N = 40: a partial tile of 16 rows
    q = QLinear.from_float(lin.weight, lin.bias, bits)
    w = q.dequantize()
    assert w.shape == lin.weight.shape
    weight_err = ((w - lin.weight).norm() / lin.weight.norm()).item()
    assert weight_err < {4: 0.08, 5: 0.04, 8: 0.005}[bits]
    for M in (1, 3, 4, 5, 17):
        x = torch.randn(2, M, 256).to(dtype)
        want = torch.nn.functional.linear(x.float(), w, lin.bias)
        got = q(x)
        assert got.dtype == dtype and got.shape == (2, M, 40)
        # the only difference: activations quantized to int8 per group of 32 (and bf16 output rounding)
        assert ((got.float() - want).norm() / want.norm()).item() < 0.012


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_swiglu_input_equals_silu_times_up(kernels, dtype):
    """QLinear.swiglu([gate, up]) is the down projection of silu(gate) * up, made inside the kernel."""
    torch.manual_seed(0)
    q = QLinear.from_float(torch.randn(40, 64), None, 4)
    for M in (1, 9):
        gate_up = (torch.randn(M, 128) * 3).to(dtype)
        gate, up = gate_up.float().chunk(2, dim=-1)
        want = torch.nn.functional.linear(torch.nn.functional.silu(gate) * up, q.dequantize())
        got = q.swiglu(gate_up)
        assert got.dtype == dtype and got.shape == (M, 40)
        assert ((got.float() - want).norm() / want.norm()).item() < 0.012


def test_a_quantized_down_projection_keeps_the_swiglu_contract(kernels):
    """quantize_linear of an MLP's SwiGLULinear takes [gate, up] too, inside the kernel (spec kind swiglu)."""
    from zenlm.model import SwiGLULinear

    torch.manual_seed(0)
    down = SwiGLULinear(64, 40, bias=True)
    q = quantize_linear(down, "int8")
    assert isinstance(q, QLinear) and q.glu and q.spec() == ["swiglu", 64, 40, 8, True]
    gate_up = torch.randn(2, 5, 128) * 3
    with torch.no_grad():
        want = down(gate_up)
    got = q(gate_up)
    assert got.shape == (2, 5, 40) and ((got - want).norm() / want.norm()).item() < 0.012
    narrow = SwiGLULinear(40, 8, bias=False)  # K = 40 cannot be quantized: the same module, frozen
    assert quantize_linear(narrow, "int8") is narrow and not narrow.weight.requires_grad


@pytest.mark.parametrize("bits", [4, 5, 8])
def test_native_and_torch_quantizers_write_the_same_bytes(kernels, bits):
    w = torch.randn(48, 96)
    q = QLinear.from_float(w, None, bits)
    qs, d, m = _quantize_torch(w, bits)
    assert torch.equal(q.qs, qs) and torch.equal(q.d, d) and torch.equal(q.m, m)


def test_embedding_rows_equal_the_dequantized_table():
    q = QLinear.from_float(torch.randn(37, 64), None, 8)
    rows = torch.tensor([0, 36, 5, 5])
    torch.testing.assert_close(q.dequantize(rows), q.dequantize()[rows], rtol=0, atol=0)


def test_a_weight_the_grid_can_represent_is_exact():
    q = torch.randint(0, 16, (16, 2, 32))
    q[:, :, 0], q[:, :, 1] = 0, 15  # every group of 32 spans the whole 4-bit range
    w = q.view(16, 64).float() * 0.25 - 1  # integers 0..15 times 0.25, minus 1: exactly representable
    torch.testing.assert_close(QLinear.from_float(w, None, 4).dequantize(), w, rtol=0, atol=0)


def test_quantize_model_swaps_every_linear_it_can():
    m = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Sequential(nn.Linear(64, 40), nn.Linear(40, 64)))
    quantize_model(m, "int4")
    assert isinstance(m[0], QLinear) and isinstance(m[2][0], QLinear)
    assert isinstance(m[2][1], nn.Linear)  # K = 40 is not whole groups of 32: stays in float
    with pytest.raises(ValueError, match="unknown quantization 'int3'"):
        quantize_model(nn.Sequential(nn.Linear(4, 4)), "int3")


@pytest.mark.parametrize("bs", [4, 16])  # 16: the AVX-512 path, 4: the plain one
@pytest.mark.parametrize("B,T,contexts", [(3, 1, (5, 35, 1)), (1, 6, (35,)),  # a decode batch; a prefill chunk
                                          (2, 1, (600, 300)), (1, 20, (600,))])  # several key chunks; query tiles
def test_attention_kernel_equals_sdpa(kernels, bs, B, T, contexts):
    """zen_attention (rope, cache write, attention over each row's own blocks) against torch."""
    torch.manual_seed(0)
    H, KV, D = 4, 2, 32
    ctx = torch.tensor(contexts)
    nb = max(contexts) // bs + 1  # blocks per row, one more than the longest context needs
    nblk = B * nb + 1
    for kv_dtype in (torch.float32, torch.bfloat16):
        P = 2 if kv_dtype == torch.bfloat16 else 1  # values side by side in the cache
        for window in (0, 4, 3, 300):
            kc = torch.randn(nblk, KV, D // P, bs, P).to(kv_dtype)  # keys transposed inside a block
            vc = torch.randn(nblk, KV, bs // P, D, P).to(kv_dtype)
            tables = torch.randperm(nblk)[:B * nb].view(B, nb)  # [B, nb blocks], none shared
            for b in range(B):  # never-written slots past a row's context may hold NaN
                for pos in range(int(ctx[b]), nb * bs):
                    blk, off = tables[b, pos // bs], pos % bs
                    kc[blk, :, :, off] = vc[blk, :, off // P, :, off % P] = float("nan")
            qkv = torch.randn(B, T, (H + 2 * KV) * D)
            ang = torch.rand(B, T, D // 2) * 3
            cos, sin = torch.cat([ang.cos()] * 2, -1), torch.cat([ang.sin()] * 2, -1)
            q, k, v = qkv.split([H * D, KV * D, KV * D], -1)

            def rot(x):  # rotate-half rope with this step's cos, sin
                return x * cos[..., None, :] + torch.cat([-x[..., D // 2:], x[..., :D // 2]], -1) * sin[..., None, :]

            q, k, v = rot(q.view(B, T, H, D)), rot(k.view(B, T, KV, D)), v.view(B, T, KV, D)
            want, kc2, vc2 = torch.empty(B, T, H * D), kc.clone(), vc.clone()
            for b in range(B):
                n = int(ctx[b])
                for t in range(T):
                    blk, off = tables[b, (n - T + t) // bs], (n - T + t) % bs
                    kc2[blk, :, :, off] = k[b, t].reshape(KV, D // P, P).to(kv_dtype)
                    vc2[blk, :, off // P, :, off % P] = v[b, t].to(kv_dtype)
                keys = kc2[tables[b]].permute(1, 0, 3, 2, 4).reshape(KV, -1, D).float()  # [KV, S, D]
                vals = vc2[tables[b]].permute(1, 0, 2, 4, 3).reshape(KV, -1, D).float()
                for t in range(T):
                    p = n - T + t + 1  # this query sees positions [start, p)
                    start = max(0, p - window) if window else 0
                    o = torch.nn.functional.scaled_dot_product_attention(
                        q[b, t][None, :, None], keys[None, :, start:p], vals[None, :, start:p], enable_gqa=True)
                    want[b, t] = o.reshape(H * D)
            out = zenlm.kernels.attention(qkv, cos, sin, kc, vc, tables, ctx, (H, KV, D), bs, window, D ** -0.5)
            # a bfloat16 cache on AVX512-BF16 (bs 16): q and the probabilities are rounded to bfloat16 too
            bf16_math = kv_dtype == torch.bfloat16 and bs == 16 and b"bf16" in kernels.zen_isa()
            tol = 2e-2 if bf16_math else 1e-4
            torch.testing.assert_close(out, want, rtol=tol, atol=tol)
            torch.testing.assert_close(kc, kc2, rtol=0, atol=0, equal_nan=True)  # the new keys and values landed
            torch.testing.assert_close(vc, vc2, rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("hidden", [64, 48])  # 48: q/k/v and gate/up fuse but stay in float
def test_a_saved_quantized_model_restores_to_the_same_outputs(tmp_path, hidden):
    from zenlm.config import Config
    from zenlm.model import Transformer, checkpoint_state_dict
    from zenlm.weights import prequantized
    from zenlm.weights.load import build

    c = Config(name="t", vocab_size=96, hidden_size=hidden, num_layers=2, num_heads=4, num_kv_heads=2,
               head_dim=hidden // 4, intermediate_size=128, tie_word_embeddings=False, context_length=64)
    torch.manual_seed(0)
    m = Transformer(c)
    m.init_weights(std=0.2)
    q = build(c, iter(checkpoint_state_dict(m).items()), tmp_path, quant="int4")
    prequantized.save(q, tmp_path / "q.safetensors")
    r = prequantized.restore(c, tmp_path / "q.safetensors")
    ids = torch.randint(0, 96, (2, 7))
    pos = torch.arange(7).expand(2, 7)
    with torch.inference_mode():
        torch.testing.assert_close(r(ids, pos), q(ids, pos), rtol=0, atol=0)
    for name, module in q.named_modules():  # the same module types, the fused float ones included
        assert type(r.get_submodule(name)) is type(module), name


HELD_OUT = inspect.getsource(json)[:4000]  # text the model was not tuned on in this form: stdlib source


@pytest.fixture(scope="module")
def fp32_reference(default_llm):
    ids = torch.tensor([default_llm.tokenizer.encode(HELD_OUT)[:512]])
    with torch.inference_mode():
        logits = default_llm.model(ids, torch.arange(ids.shape[1])[None]).float()
    return ids, logits


def perplexity(logits, ids) -> float:
    return math.exp(torch.nn.functional.cross_entropy(logits[0, :-1], ids[0, 1:]).item())


@pytest.mark.parametrize("mode,ppl_bound,agree_bound", [("auto", 1.005, 0.99), ("int8", 1.01, 0.97),
                                                       ("int4", 1.08, 0.88)])
def test_quantized_real_model_stays_close_to_fp32(fp32_reference, mode, ppl_bound, agree_bound):
    from zenlm.weights.load import load

    ids, ref = fp32_reference
    m = load("default", dtype=torch.float32, quant=mode, progress=False).model
    assert isinstance(m.model.layers[0].self_attn.qkv_proj, QLinear) and m.model.layers[0].mlp.down_proj.glu
    with torch.inference_mode():
        logits = m(ids, torch.arange(ids.shape[1])[None]).float()
    p_ref, p = perplexity(ref, ids), perplexity(logits, ids)
    agree = (logits.argmax(-1) == ref.argmax(-1)).float().mean().item()
    print(f"{mode}: perplexity {p:.4f} vs fp32 {p_ref:.4f}; top-1 agreement {agree:.3f}")
    assert p / p_ref < ppl_bound and agree > agree_bound


def test_the_engines_bf16_attention_stays_close_to_fp32_attention(fp32_reference):
    """The engine's path for a quantized model, K/V in a bfloat16 paged cache and attention in the C
    kernel (q and the probabilities in bfloat16 where the CPU has AVX512-BF16), against the same
    model attending in fp32 with torch."""
    from zenlm.engine.runner import PagedKVCache
    from zenlm.weights.load import load

    ids, _ = fp32_reference
    m = load("default", dtype=torch.float32, quant="int4", progress=False).model
    n, bs = ids.shape[1], 16
    cache = PagedKVCache(m.config, -(-n // bs), bs, torch.bfloat16, "cpu", native=True)
    pos = torch.arange(n)[None]
    cache.bind(pos, torch.arange(-(-n // bs))[None], pos, torch.tensor([n]))  # one row, blocks in order
    with torch.inference_mode():
        plain, paged = m(ids, pos).float(), m(ids, pos, cache).float()
    p_ref, p = perplexity(plain, ids), perplexity(paged, ids)
    agree = (paged.argmax(-1) == plain.argmax(-1)).float().mean().item()
    print(f"bf16 paged attention: perplexity {p:.4f} vs {p_ref:.4f}; top-1 agreement {agree:.3f}")
    assert abs(p / p_ref - 1) < 0.01 and agree > 0.97  # measured: +0.37%, 98.6%


def test_int4_greedy_output_is_the_same_alone_or_batched(default_llm):
    """Every kernel computes each row on its own, so batching never changes a quantized greedy answer;
    prints the share of tokens that agree with the fp32 reference."""
    from zenlm.engine.llm import LLM
    from zenlm.engine.sampling import SamplingParams

    llm = LLM("default", dtype="int4", progress=False)
    questions = ["Write a Python function that checks whether a number is prime.", "What is a closure?",
                 "Reverse a string in Go.", "Explain big-O notation in one paragraph."]
    ids = [llm.chat_ids([{"role": "user", "content": q}]) for q in questions]
    greedy = SamplingParams(max_tokens=24, temperature=0)
    alone = [llm.generate([i], greedy)[0].token_ids for i in ids]
    batched = [c.token_ids for c in llm.generate(ids, greedy)]
    assert batched == alone
    ref = [c.token_ids for c in default_llm.generate(ids, greedy)]
    same = sum(a == r for x, y in zip(alone, ref) for a, r in zip(x, y)) / sum(len(r) for r in ref)
    print(f"int4 greedy tokens equal to fp32's: {same:.1%}")


def test_a_models_cached_copy_survives_another_model_with_the_same_file_name(tmp_path, monkeypatch):
    """Quantized copies are named per source path: re-quantizing a/model.gguf drops a/model.gguf's older
    copy, never b/model.gguf's."""
    from zenlm.weights.load import _prequantized_path, _stale_copies

    monkeypatch.setenv("ZEN_CACHE", str(tmp_path / "cache"))
    a, b = tmp_path / "a" / "model.gguf", tmp_path / "b" / "model.gguf"
    for f in (a, b):
        f.parent.mkdir()
        f.write_bytes(b"weights")
    old_a, copy_b = _prequantized_path(a, "int4", torch.float32), _prequantized_path(b, "int4", torch.float32)
    assert old_a != copy_b and old_a.name.startswith("model-int4-") and copy_b.name.startswith("model-int4-")
    other_dtype = _prequantized_path(a, "int4", torch.bfloat16)
    a.write_bytes(b"weights, edited")  # a new file: a new copy of a, the old one is stale
    new_a = _prequantized_path(a, "int4", torch.float32)
    assert new_a != old_a
    old_a.parent.mkdir(parents=True)
    for f in (old_a, copy_b, other_dtype, new_a):
        f.write_bytes(b"")
    assert _stale_copies(new_a) == [old_a]
