"""Weights: turn files on disk (GGUF, HF safetensors directories) into Config, tensors and a tokenizer."""
