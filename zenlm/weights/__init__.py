"""Weights: turn files on disk (GGUF, HF safetensors directories) into Config, tensors and a tokenizer;
fetch them by hub name (hub.py, modelscope.py) into a local store (store.py)."""
