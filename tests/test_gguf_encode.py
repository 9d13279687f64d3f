"""zenlm's GGUF encoders: bytes equal to the gguf package's quantizers where it has one, every type decoded by
gguf.quants.dequantize within its error bound, edge blocks, and the default model's own blocks re-encoded.

(Bit-exactness against llama.cpp's C quantizer itself is benchmarks/gguf_llamacpp.py's, through llama-cpp-python.)
"""

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, quants
from gguf import GGMLQuantizationType as T

from zenlm.quant.gguf_encode import ENCODABLE, encode

# Relative RMS error of a decoded N(0, 0.02) matrix: about 1.3x what each type measures (ordered by bits).
ERROR_BOUND = {T.F32: 0.0, T.F16: 3e-4, T.BF16: 2.5e-3, T.Q8_0: 0.008, T.Q6_K: 0.025, T.Q5_K: 0.05, T.Q5_1: 0.05,
               T.Q5_0: 0.06, T.Q4_K: 0.095, T.Q4_1: 0.1, T.Q4_0: 0.115, T.Q3_K: 0.2, T.Q2_K: 0.38}
GGUF_QUANTIZES = [T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1]  # gguf.quants.quantize has these


def weights(rows=64, cols=512, seed=0) -> np.ndarray:
    """N(0, 0.02) with rows of every scale, an all-zero row, a constant row, outliers and one-signed rows."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, cols)).astype(np.float32) * 0.02
    x *= rng.uniform(0.01, 3, (rows, 1)).astype(np.float32)
    x[0] = 0
    x[1] = 0.37
    x[2, ::97] = 1.5  # outliers
    x[3] = np.abs(x[3])
    x[4] = -np.abs(x[4])
    x[5, :256] = 0  # a zero super-block inside a row
    x[6] = rng.standard_t(2, cols).astype(np.float32) * 0.01  # heavy tails
    return x


def decode(b: np.ndarray, qtype: T, shape) -> np.ndarray:
    return quants.dequantize(b, qtype).reshape(shape)


@pytest.mark.parametrize("qtype", GGUF_QUANTIZES, ids=lambda t: t.name)
def test_bytes_equal_the_gguf_packages_quantizer(qtype):
    x = weights()
    ours = encode(x, qtype)
    ref = np.ascontiguousarray(quants.quantize(x, qtype)).view(np.uint8).reshape(ours.shape)
    assert ours.dtype == np.uint8 and ours.shape == (64, 512 // GGML_QUANT_SIZES[qtype][0] * GGML_QUANT_SIZES[qtype][1])
    np.testing.assert_array_equal(ours, ref)


@pytest.mark.parametrize("qtype", sorted(ENCODABLE, key=lambda t: t.value), ids=lambda t: t.name)
def test_every_type_decodes_within_its_error_bound(qtype):
    x = weights(seed=1)
    x[:7] = np.random.default_rng(2).standard_normal((7, 512)).astype(np.float32) * 0.02  # the bound is for N(0, s)
    y = decode(encode(x, qtype), qtype, x.shape)
    rel = float(np.sqrt(((y - x) ** 2).mean() / (x ** 2).mean()))
    assert rel <= ERROR_BOUND[qtype]
    if qtype != T.F32:
        assert rel > 0  # a real quantizer, not a copy


@pytest.mark.parametrize("qtype", sorted(ENCODABLE, key=lambda t: t.value), ids=lambda t: t.name)
def test_edge_rows_decode_sensibly(qtype):
    x = weights(seed=3)
    y = decode(encode(x, qtype), qtype, x.shape)
    assert np.isfinite(y).all()
    assert (y[0] == 0).all() and (y[5, :256] == 0).all()  # zero blocks stay exactly zero
    np.testing.assert_allclose(y[1], 0.37, rtol=0.02)  # a constant row keeps its value
    if qtype not in (T.Q2_K, T.Q3_K):  # the 2/3-bit types clip outliers by design
        np.testing.assert_allclose(y[2, ::97], 1.5, rtol=0.1)  # outliers survive
    if qtype in (T.Q4_1, T.Q5_1):  # the block minimum is the offset: a non-negative row stays non-negative
        assert (y[3] >= 0).all()


def test_k_quant_error_falls_with_bits():
    x = weights(seed=4)[8:]
    err = [float(np.abs(decode(encode(x, t), t, x.shape) - x).mean()) for t in (T.Q2_K, T.Q3_K, T.Q4_K, T.Q5_K, T.Q6_K)]
    assert err == sorted(err, reverse=True) and err[0] > 8 * err[-1]


@pytest.mark.parametrize("qtype", [T.Q8_0, T.Q4_0, T.Q5_0, T.Q4_1, T.Q5_1], ids=lambda t: t.name)
def test_block_types_reencode_their_own_output_unchanged(qtype):
    x = weights(seed=5)
    once = decode(encode(x, qtype), qtype, x.shape)
    np.testing.assert_array_equal(decode(encode(once, qtype), qtype, x.shape), once)  # (a zero block's d may flip sign)


def test_k_quant_layout_fields():
    """Q4_K: d = max scale / 63 in fp16, the 6-bit scale of the largest sub-block is 63 (packed in byte j for j < 4)."""
    x = np.zeros((1, 256), np.float32)
    x[0, :32] = np.linspace(0, 1.5, 32)  # sub-block 0 dominates
    x[0, 32:] = np.random.default_rng(6).uniform(0, 0.1, 224)
    b = encode(x, T.Q4_K)[0]
    d = b[0:2].view(np.float16)[0]
    assert b[4] & 63 == 63
    np.testing.assert_allclose(float(d), 1.5 / 15 / 63, rtol=0.05)


def test_takes_torch_and_stacked_tensors():
    x = weights(seed=7)
    stacked = np.stack([x, -x])  # [experts, rows, cols]
    out = encode(torch.from_numpy(stacked).to(torch.bfloat16), T.Q8_0)
    assert out.shape == (2, 64, 512 // 32 * 34)
    np.testing.assert_array_equal(out[0], encode(torch.from_numpy(x).to(torch.bfloat16), T.Q8_0))


def test_bad_input_is_one_clear_error():
    with pytest.raises(ValueError, match="Q4_K needs rows of whole 256-element blocks, got rows of 896"):
        encode(np.zeros((2, 896), np.float32), T.Q4_K)
    with pytest.raises(ValueError, match="cannot encode GGUF type IQ2_XXS"):
        encode(np.zeros((2, 256), np.float32), T.IQ2_XXS)


def test_default_models_q4_k_blocks_reencode_to_themselves(gguf_path):
    """The file's Q4_K and Q5_0 tensors, dequantized and encoded again, give back their own blocks: all of
    Q5_0's and over 99% of Q4_K's (the rest are blocks where llama.cpp's scale search, which this encoder
    follows bit for bit, settles on a neighbouring 6-bit scale)."""
    from zenlm.weights.dequant import dequantize
    from zenlm.weights.gguf_reader import read_gguf

    tensors = read_gguf(gguf_path)[1]
    for qtype, least in ((T.Q4_K, 0.99), (T.Q5_0, 1.0)):
        same = total = 0
        for t in [t for t in tensors.values() if t.qtype == qtype][:6]:
            size = GGML_QUANT_SIZES[qtype][1]
            again = encode(dequantize(t.data, t.qtype, t.shape), qtype).reshape(-1, size)
            same += int((again == np.asarray(t.data).reshape(-1, size)).all(axis=1).sum())
            total += again.shape[0]
        assert total > 0 and same / total >= least, (qtype.name, same, total)
