"""Quantization: weight-only quantized linears for inference (int4, int8)."""
