"""zenlm's native CPU kernels (C, built on first use and loaded with ctypes) and their guarded entry points.

Quantized matmul, paged attention, RMSNorm and argmax; anything in zenlm may call them, and they import
nothing of zenlm's but the cache folder. Without a compiler `available()` is False and callers run torch.
"""

from zenlm.kernels.ops import argmax, attention, available, dequant_rows, isa, linear, quantize, rmsnorm

__all__ = ["argmax", "attention", "available", "dequant_rows", "isa", "linear", "quantize", "rmsnorm"]
