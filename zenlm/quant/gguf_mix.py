"""Which GGML type each tensor of a GGUF file gets, by llama.cpp's rules (llama_tensor_get_type).

A file type (`q4_k_m`, `q8_0`, ...) names a default type; the mix rules then give some tensors more
bits: the output head Q6_K (Q8_0 for the pure types' own Q8_0), half the attn_v and ffn_down tensors Q6_K
in Q4_K_M/Q5_K_M (use_more_bits: the first and last eighth of the layers and every third between), more
in Q2_K/Q3_K. A row length that is not a multiple of the type's block falls back as llama.cpp does
(Q4_K -> Q5_0, Q5_K -> Q5_1, Q6_K -> Q8_0, Q2_K/Q3_K -> Q4_0; F16 below 32). Norms, biases and MoE routers
stay F32. The layer counters run over the tensors in llama.cpp's tensor-map order (layer number, then
name), so a file quantized here and one quantized by llama-quantize get the same types. (Files from older
llama.cpp, the default model's among them, counted in file order: blk.0, blk.1, blk.10, ...; their Q6_K
layers differ.) Only the types zenlm can encode are offered (no IQ types, no importance matrix).
"""

from __future__ import annotations

from dataclasses import dataclass

from gguf import GGML_QUANT_SIZES, LlamaFileType
from gguf import GGMLQuantizationType as T


@dataclass(frozen=True, slots=True)
class FileType:
    name: str  # as `zen quantize --type` takes it: "q4_k_m"
    ftype: LlamaFileType  # general.file_type
    default: T  # the type of every tensor no rule changes


FILE_TYPES: dict[str, FileType] = {ft.name: ft for ft in (
    FileType("f32", LlamaFileType.ALL_F32, T.F32),
    FileType("f16", LlamaFileType.MOSTLY_F16, T.F16),
    FileType("bf16", LlamaFileType.MOSTLY_BF16, T.BF16),
    FileType("q8_0", LlamaFileType.MOSTLY_Q8_0, T.Q8_0),
    FileType("q4_0", LlamaFileType.MOSTLY_Q4_0, T.Q4_0),
    FileType("q4_1", LlamaFileType.MOSTLY_Q4_1, T.Q4_1),
    FileType("q5_0", LlamaFileType.MOSTLY_Q5_0, T.Q5_0),
    FileType("q5_1", LlamaFileType.MOSTLY_Q5_1, T.Q5_1),
    FileType("q2_k", LlamaFileType.MOSTLY_Q2_K, T.Q2_K),
    FileType("q3_k_s", LlamaFileType.MOSTLY_Q3_K_S, T.Q3_K),
    FileType("q3_k_m", LlamaFileType.MOSTLY_Q3_K_M, T.Q3_K),
    FileType("q3_k_l", LlamaFileType.MOSTLY_Q3_K_L, T.Q3_K),
    FileType("q4_k_s", LlamaFileType.MOSTLY_Q4_K_S, T.Q4_K),
    FileType("q4_k_m", LlamaFileType.MOSTLY_Q4_K_M, T.Q4_K),
    FileType("q5_k_s", LlamaFileType.MOSTLY_Q5_K_S, T.Q5_K),
    FileType("q5_k_m", LlamaFileType.MOSTLY_Q5_K_M, T.Q5_K),
    FileType("q6_k", LlamaFileType.MOSTLY_Q6_K, T.Q6_K),
)}
_FLOATS = {T.F32, T.F16, T.BF16}
_FALLBACK = {T.Q2_K: T.Q4_0, T.Q3_K: T.Q4_0, T.Q4_K: T.Q5_0, T.Q5_K: T.Q5_1, T.Q6_K: T.Q8_0}


def file_type(name: str) -> FileType:
    """The FileType called `name` (case-insensitive); ValueError naming the choices otherwise."""
    ft = FILE_TYPES.get(name.lower())
    if ft is None:
        raise ValueError(f"unknown GGUF type {name!r}; choose one of {', '.join(FILE_TYPES)}")
    return ft


@dataclass(frozen=True, slots=True)
class ModelShape:
    """What the rules read about the model besides the tensors themselves."""
    n_layers: int
    n_heads: int
    n_kv_heads: int
    n_experts: int = 0
    arch: str = "qwen2"


def _category(name: str) -> str:
    """llama.cpp's tensor category, from the GGUF name (its substring tests, in its order)."""
    if name == "output.weight":
        return "output"
    if name == "token_embd.weight":
        return "token_embd"
    for part in ("attn_qkv.weight", "attn_kv_b.weight", "attn_v.weight"):
        if part in name:
            return "attn_v"
    for part, cat in (("attn_k.weight", "attn_k"), ("attn_q.weight", "attn_q"), ("attn_output.weight", "attn_output"),
                      ("ffn_up", "ffn_up"), ("ffn_gate", "ffn_gate"), ("ffn_down", "ffn_down")):
        if part in name:
            return cat
    return "other"


def quantizable(name: str, shape: tuple[int, ...]) -> bool:
    """Whether llama.cpp quantizes this tensor at all: weights of two or more dimensions (trailing ones in
    GGML order do not count), but not norms or MoE routers. Everything else stays F32."""
    dims = list(shape)
    while len(dims) > 1 and dims[0] == 1:  # PyTorch order: GGML's trailing dimensions come first
        dims.pop(0)
    return (len(dims) >= 2 and name.endswith("weight") and "_norm.weight" not in name
            and "ffn_gate_inp.weight" not in name)


def _use_more_bits(i: int, n: int) -> bool:
    return i < n // 8 or i >= 7 * n // 8 or (i - n // 8) % 3 == 2


def _layer_of(name: str) -> int:
    return int(name.split(".")[1])


def _map_order(name: str) -> tuple[int, str]:
    """llama.cpp's tensor map order (weight_name_comparer): by layer number (-1 outside the blocks), then name."""
    return (_layer_of(name) if name.startswith("blk.") else -1, name)


def tensor_types(tensors: dict[str, tuple[int, ...]], ft: FileType, model: ModelShape) -> dict[str, T]:
    """{GGUF tensor name: GGML type} for a file of type `ft`; `tensors` maps names to PyTorch-order shapes."""
    n_attn_v = sum(_category(name) == "attn_v" for name in tensors)
    tied = "output.weight" not in tensors
    counters = {"attn_v": 0, "ffn_down": 0}
    out: dict[str, T] = {}
    for name in sorted(tensors, key=_map_order):
        shape = tensors[name]
        if not quantizable(name, shape):
            out[name] = T.F32
            continue
        new = ft.default
        if new not in _FLOATS:
            new = _mixed_type(name, shape, ft, model, tied, counters, n_attn_v)
            new = _fallback(new, shape[-1])
        out[name] = new
    return {name: out[name] for name in tensors}


def _mixed_type(name: str, shape: tuple[int, ...], ft: FileType, model: ModelShape, tied: bool,
                counters: dict[str, int], n_attn_v: int) -> T:
    """llama_tensor_get_type_impl for the non-IQ file types (it advances the attn_v / ffn_down counters)."""
    f, new, cat = ft.name, ft.default, _category(name)
    gqa = model.n_heads // max(1, model.n_kv_heads)
    if cat == "output" or (tied and cat == "token_embd"):
        if shape[-1] % GGML_QUANT_SIZES[new][0]:
            return T.Q8_0
        return new if new == T.Q8_0 else T.Q6_K
    if cat == "attn_v":
        i = counters["attn_v"]
        counters["attn_v"] += 1
        if f == "q2_k":
            new = T.Q4_K if gqa >= 4 else T.Q3_K
        elif f == "q3_k_m":
            new = T.Q5_K if i < 2 else T.Q4_K
        elif f == "q3_k_l":
            new = T.Q5_K
        elif f in ("q4_k_m", "q5_k_m") and _use_more_bits(i, n_attn_v):
            new = T.Q6_K
        elif f == "q4_k_s" and i < 4:
            new = T.Q5_K
        if model.arch == "qwen2" and model.n_layers == 80 and new in (T.Q3_K, T.Q4_K):
            new = T.Q5_K  # llama.cpp's 70B class: 8 heads share each attn_v, so it is small
        if model.n_experts == 8:
            new = T.Q8_0
        return new
    if cat == "attn_k":
        return T.Q8_0 if model.n_experts == 8 else new
    if cat == "ffn_down":
        i, n = counters["ffn_down"], model.n_layers
        counters["ffn_down"] += 1
        if model.n_experts > 1:  # expert tensors are not one per layer in order: the name says which layer
            i = _layer_of(name)
        if f == "q2_k":
            new = T.Q3_K
        elif f == "q3_k_m":
            new = T.Q5_K if i < n // 16 else T.Q4_K
        elif f == "q3_k_l":
            new = T.Q5_K
        elif f in ("q4_k_m", "q5_k_m") and _use_more_bits(i, n):
            new = T.Q6_K
        elif f == "q4_k_s" and i < n // 8:
            new = T.Q5_K
        return new
    if cat == "attn_output":
        if model.n_experts == 8:
            return T.Q5_K if f in ("q2_k", "q3_k_s", "q3_k_m", "q4_k_s", "q4_k_m") else new
        return {"q2_k": T.Q3_K, "q3_k_m": T.Q4_K, "q3_k_l": T.Q5_K}.get(f, new)
    return new


def _fallback(qtype: T, cols: int) -> T:
    """A type whose blocks fit rows of `cols` elements (llama.cpp's tensor_type_fallback; F16 where even 32
    does not divide the row, where llama.cpp would stop)."""
    if cols % GGML_QUANT_SIZES[qtype][0] == 0:
        return qtype
    qtype = _FALLBACK.get(qtype, T.F16)
    return qtype if cols % GGML_QUANT_SIZES[qtype][0] == 0 else T.F16
