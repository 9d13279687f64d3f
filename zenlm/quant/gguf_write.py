"""write_gguf: any model zenlm loads -> one GGUF file of a llama.cpp file type (f16, q8_0, q4_k_m, ...).

The tensors' types come from llama.cpp's mix rules (gguf_mix.py), their bytes from zenlm's encoders
(gguf_encode.py), the metadata from the source (gguf_meta.py, gguf_source.py); the `gguf` package's
GGUFWriter lays out the container. Tensors are read, encoded and written one at a time, so memory holds
one tensor and its encoding, never the model. A GGUF tensor that keeps its stored type is copied as it
is, as llama-quantize does. The file appears under its name only once it is complete.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import GGUFWriter
from tqdm import tqdm

from zenlm.quant import gguf_meta
from zenlm.quant.gguf_encode import encode, row_bytes
from zenlm.quant.gguf_mix import ModelShape, file_type, tensor_types
from zenlm.quant.gguf_source import SourceTensor, open_source


def write_gguf(src: str, output: Path, qtype: str, progress: bool = True) -> Path:
    """Write model `src` ('default', a .gguf file, an HF directory, a hub name) to `output` as file type
    `qtype` (gguf_mix.FILE_TYPES: f16, q8_0, q4_0, q4_k_m, q5_k_m, q6_k, ...). Returns the output path."""
    ft = file_type(qtype)
    output = Path(output)
    if output.is_dir():
        raise ValueError(f"{output} is a directory; give the .gguf file to write")
    source = open_source(str(src), progress)
    if output.exists() and output.resolve() == source.path.resolve():
        raise ValueError(f"{output} is the source model; write to another file")
    c = source.config
    model = ModelShape(c.num_layers, c.num_heads, c.num_kv_heads, c.num_experts if c.is_moe else 0, c.arch)
    types = tensor_types({t.name: t.shape for t in source.tensors}, ft, model)
    kv = gguf_meta.sampling(source.generation) | source.kv | gguf_meta.typed(
        {"general.file_type": int(ft.ftype), "general.quantization_version": gguf_meta.QUANTIZATION_VERSION})

    output.parent.mkdir(parents=True, exist_ok=True)
    part = output.with_name(output.name + ".part")
    writer = GGUFWriter(part, gguf_meta.GGUF_ARCH[c.arch])
    for key, (value, vtype, item) in kv.items():
        writer.add_key_value(key, value, vtype, item)
    for t in source.tensors:
        nbytes = math.prod(t.shape[:-1]) * row_bytes(types[t.name], t.shape[-1])
        writer.add_tensor_info(t.name, t.shape, np.dtype(np.float32), nbytes, raw_dtype=types[t.name])
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        bar = tqdm(source.tensors, desc=f"writing {output.name}", unit="tensor", disable=not progress, leave=False)
        for t in bar:
            writer.write_tensor_data(tensor_bytes(t, types[t.name]))
        writer.close()
        os.replace(part, output)
    finally:
        writer.close()
        part.unlink(missing_ok=True)
    return output


def tensor_bytes(t: SourceTensor, qtype: T) -> np.ndarray:
    """One tensor's bytes as `qtype`: the stored ones when the source already holds that type, else encoded."""
    if t.stored == qtype and t.raw is not None:
        return np.ascontiguousarray(t.raw).view(np.uint8)
    return encode(t.load(), qtype)
