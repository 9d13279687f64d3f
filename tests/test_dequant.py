"""Dequantization tests: every supported GGUF type is bit-identical to gguf's numpy `dequantize`.

Raw blocks are built in code (gguf's own quantizer where it has one, random bytes with finite fp16
scales otherwise), so no model file is needed; one test also checks real tensors when the default
model file is present.
"""


import gguf
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

from zenlm.weights import dequant
from zenlm.weights.dequant import SUPPORTED, dequantize

BLOCK_TYPES = sorted(SUPPORTED - {T.F32, T.F16, T.BF16}, key=lambda t: t.value)
# Byte offsets of the fp16 fields (d, and dmin/m where present) inside one block.
HALF_FIELDS = {T.Q4_0: (0,), T.Q4_1: (0, 2), T.Q5_0: (0,), T.Q5_1: (0, 2), T.Q8_0: (0,),
               T.Q2_K: (80, 82), T.Q3_K: (108,), T.Q4_K: (0, 2), T.Q5_K: (0, 2), T.Q6_K: (208,)}
QUANTIZABLE = {T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0}  # gguf.quants.quantize implements these
SHAPES = [(3, 512), (1024,), (2, 3, 256)]


def random_blocks(qtype: T, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Random bytes in qtype's block layout, uint8 [rows..., bytes per row], fp16 fields finite."""
    block, type_size = GGML_QUANT_SIZES[qtype]
    n_blocks = int(np.prod(shape)) // block
    raw = rng.integers(0, 256, (n_blocks, type_size), dtype=np.uint8)
    for off in HALF_FIELDS[qtype]:
        halves = (rng.standard_normal(n_blocks) * rng.choice([1e-4, 1e-2, 1.0, 100.0], n_blocks))
        raw[:, off:off + 2] = halves.astype(np.float16).view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(*shape[:-1], shape[-1] // block * type_size)


def reference(data: np.ndarray, qtype: T, shape: tuple[int, ...]) -> torch.Tensor:
    return torch.from_numpy(np.array(gguf.quants.dequantize(data, qtype), dtype=np.float32)).reshape(shape)


def assert_bit_exact(data, qtype: T, shape: tuple[int, ...]) -> None:
    got = dequantize(data, qtype, shape)
    want = reference(data, qtype, shape)
    assert not want.isnan().any(), "test data must not produce NaN (NaN != NaN)"
    assert got.dtype == torch.float32 and got.shape == shape and got.is_contiguous()
    assert torch.equal(got, want), f"{qtype.name} {shape}: {(got != want).sum()} elements differ"


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda t: t.name)
def test_random_blocks_bit_exact(qtype, shape):
    assert_bit_exact(random_blocks(qtype, shape, np.random.default_rng(qtype.value)), qtype, shape)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("qtype", sorted(QUANTIZABLE, key=lambda t: t.value), ids=lambda t: t.name)
def test_quantized_floats_bit_exact(qtype, shape):
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    assert_bit_exact(gguf.quants.quantize(x, qtype), qtype, shape)


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda t: t.name)
def test_many_chunks_with_ragged_tail(qtype, monkeypatch):
    """Force tiny chunks so the chunk loop runs many times and ends on a partial chunk."""
    monkeypatch.setattr(dequant, "_CHUNK_ELEMENTS", 1024)
    shape = (13, 768) if GGML_QUANT_SIZES[qtype][0] == 256 else (13, 96)
    assert_bit_exact(random_blocks(qtype, shape, np.random.default_rng(1)), qtype, shape)


@pytest.mark.parametrize("qtype", BLOCK_TYPES, ids=lambda t: t.name)
def test_single_block(qtype):
    block = GGML_QUANT_SIZES[qtype][0]
    for shape in [(block,), (1, block)]:
        assert_bit_exact(random_blocks(qtype, shape, np.random.default_rng(5)), qtype, shape)


def test_float_types_bit_exact():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((5, 64)) * 10.0 ** rng.integers(-6, 6, (5, 64))).astype(np.float32)
    assert_bit_exact(x, T.F32, (5, 64))
    assert_bit_exact(np.clip(x, -6e4, 6e4).astype(np.float16), T.F16, (5, 64))  # with subnormals
    assert_bit_exact(x.ravel(), T.F32, (320,))
    # BF16 comes as raw bytes (uint8 [rows, 2 * cols]), the way gguf's readers return it.
    bf16 = (x.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8).reshape(5, 128)
    assert_bit_exact(bf16, T.BF16, (5, 64))


def test_accepts_torch_tensors_and_never_aliases_input():
    raw = random_blocks(T.Q8_0, (4, 64), np.random.default_rng(3))
    assert torch.equal(dequantize(torch.from_numpy(raw), T.Q8_0, (4, 64)), reference(raw, T.Q8_0, (4, 64)))
    x = torch.randn(3, 8)
    y = dequantize(x, T.F32, (3, 8))
    assert torch.equal(x, y) and y.data_ptr() != x.data_ptr()


def test_unaligned_torch_input():
    raw = random_blocks(T.Q5_0, (2, 64), np.random.default_rng(6))
    buf = torch.zeros(raw.size + 1, dtype=torch.uint8)
    buf[1:] = torch.from_numpy(raw.ravel())
    assert torch.equal(dequantize(buf[1:], T.Q5_0, (2, 64)), reference(raw, T.Q5_0, (2, 64)))


def test_read_only_memmap_input(tmp_path):
    raw = random_blocks(T.Q4_K, (2, 256), np.random.default_rng(4))
    raw.tofile(tmp_path / "t.bin")
    mm = np.memmap(tmp_path / "t.bin", dtype=np.uint8, mode="r", shape=raw.shape)
    assert torch.equal(dequantize(mm, T.Q4_K, (2, 256)), reference(raw, T.Q4_K, (2, 256)))


def test_unsupported_type_raises():
    with pytest.raises(ValueError, match="unsupported GGUF tensor type IQ4_NL"):
        dequantize(np.zeros((1, 18), np.uint8), T.IQ4_NL, (1, 32))
    assert T.IQ4_NL not in SUPPORTED


def test_bad_sizes_raise():
    with pytest.raises(ValueError, match="whole blocks"):
        dequantize(np.zeros(34, np.uint8), T.Q8_0, (2, 16))
    with pytest.raises(ValueError, match="bytes"):
        dequantize(np.zeros(33, np.uint8), T.Q8_0, (32,))


def test_real_model_tensors_bit_exact(gguf_path):
    from zenlm.weights.gguf_reader import read_gguf

    _, tensors = read_gguf(gguf_path)
    by_type: dict[T, list] = {}
    for t in tensors.values():
        by_type.setdefault(t.qtype, []).append(t)
    assert set(by_type) <= SUPPORTED
    for ts in by_type.values():
        for t in sorted(ts, key=lambda t: t.data.size)[:2]:  # the two smallest of each type
            got = dequantize(t.data, t.qtype, t.shape)
            assert torch.equal(got, reference(t.data, t.qtype, t.shape)), t.name
