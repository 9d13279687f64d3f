"""A checkpoint's generation defaults, from what the file says it is, never from the name it was given by.

An HF directory carries generation_config.json. A GGUF file does not, so its metadata decides: a
Qwen-lineage chat release (general.finetune "Instruct"/"Chat", with or without a quantization
suffix) gets the release's generation_config (reference/models.md section 6), and any
general.sampling.* keys a converter wrote override it. Base models get none (greedy unless asked).
"""

from __future__ import annotations

# Qwen1.5-Chat, Qwen2 / Qwen2.5 (and -Coder, -Math) Instruct: one generation_config.json for all sizes.
QWEN_CHAT = {"temperature": 0.7, "top_p": 0.8, "top_k": 20, "repetition_penalty": 1.05}
QWEN_ARCHS = {"qwen2", "qwen2moe"}
CHAT_FINETUNES = ("instruct", "chat")
# GGUF keys some converters write with the release's sampling defaults -> generation_config keys.
GGUF_SAMPLING = {"general.sampling.temp": "temperature", "general.sampling.top_p": "top_p",
                 "general.sampling.top_k": "top_k", "general.sampling.min_p": "min_p"}


def gguf_generation_config(meta: dict) -> dict:
    """Sampling defaults for a GGUF file from its metadata."""
    finetune = str(meta.get("general.finetune", "")).lower()
    chat = meta.get("general.architecture") in QWEN_ARCHS and finetune.startswith(CHAT_FINETUNES)
    return (dict(QWEN_CHAT) if chat else {}) | {v: meta[k] for k, v in GGUF_SAMPLING.items() if k in meta}
