"""Float tensors -> GGUF tensor bytes, with the math of llama.cpp's reference quantizers (ggml-quants.c).

`encode(x, qtype)` covers F32, F16, BF16, the 32-element block types (gguf_blocks.py) and the K-quants
Q2_K .. Q6_K (gguf_kquant.py). Everything is vectorized numpy in float32 in the C code's operation order,
sums included, so the bytes are those of llama.cpp's quantizer without an importance matrix (a compiler's
fused multiply-adds can still tip a rare tie). It does not choose types per tensor (gguf_mix.py) or
write files (gguf_write.py).
"""

from __future__ import annotations

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES
from gguf import GGMLQuantizationType as T

from zenlm.quant import gguf_blocks, gguf_kquant

# Blocks are encoded about this many elements at a time: the K-quant searches' temporaries stay in cache,
# the cheap 32-element types amortize numpy's per-call cost (measured on 2 cores).
_CHUNK_ELEMENTS = {32: 1 << 20, 256: 1 << 16}

_BLOCK_ENCODERS = {
    T.Q8_0: gguf_blocks.q8_0, T.Q4_0: gguf_blocks.q4_0, T.Q4_1: gguf_blocks.q4_1,
    T.Q5_0: gguf_blocks.q5_0, T.Q5_1: gguf_blocks.q5_1,
    T.Q2_K: gguf_kquant.q2_k, T.Q3_K: gguf_kquant.q3_k, T.Q4_K: gguf_kquant.q4_k,
    T.Q5_K: gguf_kquant.q5_k, T.Q6_K: gguf_kquant.q6_k,
}
_FLOAT_ENCODERS = {T.F32: lambda x: x.view(np.uint8), T.F16: gguf_blocks.f16_bytes, T.BF16: gguf_blocks.bf16_bytes}
ENCODABLE: frozenset[T] = frozenset(_BLOCK_ENCODERS) | frozenset(_FLOAT_ENCODERS)


def row_bytes(qtype: T, cols: int) -> int:
    """Bytes of one row of `cols` elements stored as qtype."""
    block, type_size = GGML_QUANT_SIZES[T(qtype)]
    return cols // block * type_size


def encode(x: np.ndarray | torch.Tensor, qtype: T) -> np.ndarray:
    """Encode a float tensor [..., cols] as `qtype`: uint8 [..., bytes per row], rows in llama.cpp's layout.

    cols must be a whole number of the type's blocks (32, or 256 for the K-quants): ValueError otherwise.
    """
    qtype = T(qtype)
    if qtype not in ENCODABLE:
        names = ", ".join(sorted(t.name for t in ENCODABLE))
        raise ValueError(f"cannot encode GGUF type {qtype.name} (encodable: {names})")
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float32).numpy()
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 0:
        x = x.reshape(1)
    block, type_size = GGML_QUANT_SIZES[qtype]
    if x.shape[-1] % block:
        raise ValueError(f"{qtype.name} needs rows of whole {block}-element blocks, got rows of {x.shape[-1]}")
    out_shape = (*x.shape[:-1], row_bytes(qtype, x.shape[-1]))
    if qtype in _FLOAT_ENCODERS:
        return _FLOAT_ENCODERS[qtype](x).reshape(out_shape)
    blocks = x.reshape(-1, block)
    out = np.empty((blocks.shape[0], type_size), dtype=np.uint8)
    step = _CHUNK_ELEMENTS[block] // block
    kernel = _BLOCK_ENCODERS[qtype]
    for i in range(0, blocks.shape[0], step):
        out[i:i + step] = kernel(blocks[i:i + step])
    return out.reshape(out_shape)
