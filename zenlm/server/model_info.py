"""What Ollama's /api/tags, /api/show and /api/ps say about the served model, in Ollama's shapes.

The facts come from the model file (LLM.file_info: weights/file_info.py): the quantization level is
the file's (Q4_K_M for the default GGUF), whatever precision zen serve computes in; the parameter
size is Ollama's short form ("494.03M", "7.6B"); the digest is the sha256 of the weight files.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

BIG_KEYS = ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type", "tokenizer.ggml.scores")
# HF generation_config names -> Ollama's parameter names
PARAMETERS = {"temperature": "temperature", "top_p": "top_p", "top_k": "top_k", "min_p": "min_p",
              "repetition_penalty": "repeat_penalty", "presence_penalty": "presence_penalty",
              "frequency_penalty": "frequency_penalty"}
FOREVER = "2318-01-01T00:00:00Z"  # /api/ps expires_at: zen serve never unloads its model


@dataclass(frozen=True, slots=True)
class Info:
    details: dict[str, Any]
    metadata: dict[str, Any]  # GGUF metadata, or the HF config.json
    size: int  # bytes on disk
    digest: str
    modified_at: str


def describe(llm) -> Info:
    """The served model's details; blocking the first time (it reads and hashes the file): call it in a thread."""
    f = llm.file_info()
    details = {"parent_model": "", "format": f.format, "family": f.family, "families": [f.family],
               "parameter_size": parameter_size(f.parameters), "quantization_level": f.quantization}
    return Info(details, f.metadata, f.size, f.digest, f.modified_at)


def parameter_size(n: int) -> str:
    """494032768 -> "494.03M", 7615616512 -> "7.6B", as Ollama prints them."""
    for unit, scale, digits in (("B", 1e9, 1), ("M", 1e6, 2), ("K", 1e3, 2)):
        if n >= scale:
            return f"{n / scale:.{digits}f}{unit}"
    return str(n)


def brief(meta: dict[str, Any]) -> dict[str, Any]:
    """Metadata without the vocabulary-sized arrays (Ollama sends them empty unless verbose)."""
    return {k: ([] if k in BIG_KEYS else v) for k, v in meta.items()}


def parameters(generation_config: dict) -> str:
    """The model's sampling defaults as Ollama's `parameters` text: one "name value" a line."""
    lines = [f"{ours:<30} {generation_config[k]}" for k, ours in PARAMETERS.items() if k in generation_config]
    return "\n".join(lines)


def resident_bytes(llm) -> int:
    """Bytes of the model's weights in memory (shared tensors counted once)."""
    seen, total = set(), 0
    for t in itertools.chain(llm.model.parameters(), llm.model.buffers()):
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total
