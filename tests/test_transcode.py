"""--dtype auto: a GGUF file's quantized blocks carried into zenlm's 4/5/8-bit layouts (weights/transcode.py),
checked against gguf's own dequantizer, through fused projections of mixed types, and on the real file."""

import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T
from test_weights import TINY, random_weights, write_gguf, write_hf_dir

from zenlm.quant.linear import QEmbedding, QLinear
from zenlm.weights.load import load
from zenlm.weights.transcode import gguf_codes

N, K = 20, 512  # 20 rows: a partial tile; K: two K-quant super-blocks


def blocks(qtype: T) -> np.ndarray:
    """Raw bytes [N, row bytes] of a random tensor: gguf's own quantizer where it has one, else random
    blocks with sane fp16 scales (K-quants)."""
    rng = np.random.default_rng(int(qtype))
    if qtype in (T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0):
        return gguf.quants.quantize(rng.standard_normal((N, K)).astype(np.float32), qtype)
    block, size = GGML_QUANT_SIZES[qtype]
    b = rng.integers(0, 256, (N * K // block, size), dtype=np.uint8)
    scales = (rng.random((b.shape[0], 2)) * 0.01 + 0.001).astype(np.float16).view(np.uint8)
    if qtype == T.Q6_K:
        b[:, 208:210] = scales[:, :2]
    else:  # Q4_K, Q5_K: d and dmin first
        b[:, 0:4] = scales
    return b.reshape(N, -1)


def from_codes(c) -> torch.Tensor:
    return (c.q.float().view(N, -1, 32) * c.d.float()[..., None] + c.m.float()[..., None]).view(N, K)


@pytest.mark.parametrize("qtype,bits", [(T.Q4_0, 4), (T.Q4_1, 4), (T.Q5_0, 5), (T.Q5_1, 5), (T.Q8_0, 8)])
def test_one_scale_per_32_types_carry_over_exactly(qtype, bits):
    raw = blocks(qtype)
    c = gguf_codes(raw, qtype, (N, K))
    want = torch.from_numpy(gguf.quants.dequantize(raw, qtype)).view(N, K)
    assert c.bits == bits and int(c.q.max()) < 1 << bits
    torch.testing.assert_close(from_codes(c), want, rtol=0, atol=0)
    layer = QLinear.from_codes(c.q, c.d, c.m, c.bits, None)  # the kernel's tiled layout holds the same weights
    torch.testing.assert_close(layer.dequantize(), want, rtol=0, atol=0)


@pytest.mark.parametrize("qtype,bits", [(T.Q4_K, 4), (T.Q5_K, 5)])
def test_k_quants_with_a_scale_per_32_differ_only_by_fp16_rounding_of_the_scales(qtype, bits):
    raw = blocks(qtype)
    c = gguf_codes(raw, qtype, (N, K))
    want = torch.from_numpy(gguf.quants.dequantize(raw, qtype)).view(N, K)
    assert c.bits == bits
    err = (from_codes(c) - want).abs()
    # d * scale and dmin * min, each within half an fp16 ulp (2^-11 relative), times at most 2^bits - 1
    d, m = (t.float().abs().repeat_interleave(32, 1) for t in (c.d, c.m))
    bound = 2 ** -11 * (d * (2 ** bits - 1) + m)
    assert (err <= bound * 1.001 + 1e-9).all() and err.max() > 0


def test_q6_k_goes_to_8_bits_within_half_a_step_of_each_groups_range():
    raw = blocks(T.Q6_K)
    c = gguf_codes(raw, T.Q6_K, (N, K))
    want = torch.from_numpy(gguf.quants.dequantize(raw, T.Q6_K)).view(N, K)
    g = want.view(N, -1, 32)
    half_step = ((g.amax(-1) - g.amin(-1)) / 255 / 2).repeat_interleave(32, 1)
    err = (from_codes(c) - want).abs()
    assert c.bits == 8 and (err <= half_step * 1.01 + 1e-6).all()


MIXED = {"blk.0.attn_q.weight": T.Q4_0, "blk.0.attn_k.weight": T.Q4_0, "blk.0.attn_v.weight": T.Q8_0,
         "blk.0.ffn_gate.weight": T.Q5_0, "blk.0.ffn_up.weight": T.Q4_1, "blk.0.ffn_down.weight": T.Q4_1,
         "blk.1.attn_q.weight": T.Q5_1, "blk.1.attn_k.weight": T.Q5_1, "blk.1.attn_v.weight": T.Q5_1,
         "token_embd.weight": T.Q8_0, "output.weight": T.Q5_0}


def test_auto_keeps_each_tensors_precision_through_fused_projections(tmp_path, monkeypatch):
    """q/k in 4 bits with v in 8 fuse into an 8-bit qkv holding every weight exactly; float tensors go to 8 bits."""
    monkeypatch.setenv("ZEN_CACHE", str(tmp_path / "cache"))
    path = write_gguf(tmp_path / "m.gguf", TINY, random_weights(TINY), qtype=MIXED)
    ref = load(path, progress=False).model  # fp32, dequantized by gguf's rules
    for _ in range(2):  # converted, then restored from the cached copy
        m = load(path, progress=False, quant="auto").model
        layers = m.model.layers
        bits = {n: mod.bits for n, mod in m.named_modules() if isinstance(mod, QLinear)}
        assert bits["model.layers.0.self_attn.qkv_proj"] == 8 and bits["model.layers.0.mlp.gate_up_proj"] == 5
        assert bits["model.layers.0.mlp.down_proj"] == 4 and bits["model.layers.1.self_attn.qkv_proj"] == 5
        assert bits["model.layers.1.mlp.gate_up_proj"] == 8  # F32 in the file: 8 bits
        assert bits["lm_head"] == 5 and isinstance(m.model.embed_tokens, QEmbedding)
        assert m.model.embed_tokens.table.bits == 8
        for name in ("self_attn.qkv_proj", "mlp.gate_up_proj", "mlp.down_proj"):
            got = layers[0].get_submodule(name).dequantize()
            torch.testing.assert_close(got, ref.model.layers[0].get_submodule(name).weight, rtol=0, atol=0)
        ids = torch.tensor([[5, 9, 200, 7, 3, 260]])
        with torch.inference_mode():
            a, b = m(ids, torch.arange(6)[None]), ref(ids, torch.arange(6)[None])
        assert ((a - b).norm() / b.norm()).item() < 0.02  # activations quantized to int8 on the fly: all else equal


def test_auto_ties_the_head_to_the_embedding_codes(tmp_path, monkeypatch):
    monkeypatch.setenv("ZEN_CACHE", str(tmp_path / "cache"))
    c = TINY.replace(tie_word_embeddings=True)
    path = write_gguf(tmp_path / "t.gguf", c, random_weights(c), skip={"output.weight"},
                      qtype={"token_embd.weight": T.Q5_0})
    m = load(path, progress=False, quant="auto").model
    assert m.lm_head is m.model.embed_tokens.table and m.lm_head.bits == 5


def test_auto_on_float_weights_is_int8(tmp_path, monkeypatch):
    monkeypatch.setenv("ZEN_CACHE", str(tmp_path / "cache"))
    hf = write_hf_dir(tmp_path / "hf", TINY, random_weights(TINY))
    a, b = load(hf, progress=False, quant="auto").model, load(hf, progress=False, quant="int8").model
    assert {mod.bits for mod in a.modules() if isinstance(mod, QLinear)} == {8}
    ids = torch.tensor([[5, 9, 200]])
    with torch.inference_mode():
        torch.testing.assert_close(a(ids, torch.arange(3)[None]), b(ids, torch.arange(3)[None]), rtol=0, atol=0)


def test_the_default_file_runs_at_its_own_precision(gguf_path):
    """Q5_0 tensors in 5 bits exactly, Q4_K in 4, Q6_K and Q8_0 (the head) in 8."""
    from zenlm.weights.dequant import dequantize
    from zenlm.weights.gguf_reader import read_gguf

    m = load("default", progress=False, quant="auto").model
    bits = [mod.bits for mod in m.modules() if isinstance(mod, QLinear)]
    assert (bits.count(4), bits.count(5), bits.count(8)) == (12, 61, 25)
    _, tensors = read_gguf(gguf_path)
    t = tensors["blk.3.attn_output.weight"]
    assert t.qtype == T.Q5_0
    want = dequantize(t.data, t.qtype, t.shape)
    torch.testing.assert_close(m.model.layers[3].self_attn.o_proj.dequantize(), want, rtol=0, atol=0)
