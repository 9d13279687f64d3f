"""zenlm's native CPU kernels (C, built on first use and loaded with ctypes)."""
