"""The C kernels' guarded entry points: every shape, dtype, device, contiguity and index the C code
relies on is checked here before any data_ptr reaches it (a bad one raises ValueError naming the
kernel and the argument), and a kernel's allocation failure becomes MemoryError. A weight's or a
cache layer's layout is checked on first use and remembered while its tensors and pointers stay the
same. Callers use these, never lib().zen_x; they check available() first and keep a torch path.
"""

from __future__ import annotations

import weakref

import torch

from zenlm.kernels.loader import lib

GROUP, TILE = 32, 16  # inputs per scale, weight rows per tile (csrc/linear.c)
INT_MAX = 2**31 - 1  # the kernels take sizes as C ints
OK, ENOMEM, ERANGE = 0, 1, 2  # csrc/common.h
_seen: dict[int, tuple] = {}  # id -> (weakref, ...) of the tensors that passed _weight or _caches


def _remember(t: torch.Tensor, *record) -> None:
    """Keep record for t while t lives (tensors compare elementwise, so no WeakKeyDictionary)."""
    key = id(t)

    def forget(ref):
        if _seen.get(key, (None,))[0] is ref:
            del _seen[key]

    _seen[key] = (weakref.ref(t, forget), *record)


def _recall(t) -> tuple | None:
    rec = _seen.get(id(t))
    return rec[1:] if rec is not None and rec[0]() is t else None


def available() -> bool:
    """Whether the C kernels are loaded in this process."""
    return lib() is not None


def isa() -> str:
    """The code path the loaded kernels run: "avx512-vnni+bf16", "avx512-vnni", "avx2" or "plain C"."""
    return _dll("zen_isa").zen_isa().decode()


def _dll(kernel: str):
    dll = lib()
    if dll is None:
        raise RuntimeError(f"{kernel}: zenlm's C kernels are not loaded; take the torch path")
    return dll


def _tensor(kernel: str, arg: str, t, dtypes: tuple[torch.dtype, ...], shape: tuple[int | None, ...]) -> None:
    """t is a contiguous CPU tensor of one of dtypes with the given shape (None: any size there).
    The common case is one expression (this runs per layer per step); _explain says what is wrong."""
    if isinstance(t, torch.Tensor) and t.is_cpu and t.dtype in dtypes and t.is_contiguous():
        ts = t.shape
        if ts == shape or len(ts) == len(shape) and all(s is None or s == n for s, n in zip(shape, ts)):
            return
    raise ValueError(f"{kernel}: {arg} {_explain(t, dtypes, shape)}")


def _explain(t, dtypes: tuple[torch.dtype, ...], shape: tuple[int | None, ...]) -> str:
    if not isinstance(t, torch.Tensor):
        return f"must be a tensor, got {type(t).__name__}"
    if not t.is_cpu:
        return f"must be on the CPU, got {t.device}"
    if t.dtype not in dtypes:
        return f"must be {' or '.join(map(str, dtypes))}, got {t.dtype}"
    if not t.is_contiguous():
        return "must be contiguous"
    want = ", ".join("*" if s is None else str(s) for s in shape)
    return f"must have shape [{want}], got {list(t.shape)}"


def _size(kernel: str, arg: str, n, lo: int = 1) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not lo <= n <= INT_MAX:
        raise ValueError(f"{kernel}: {arg} must be an integer in [{lo}, {INT_MAX}], got {n!r}")
    return n


def _weight(kernel: str, qs, d, m, bits: int, K: int, N: int) -> tuple[int, int, int]:
    """A quantized [N, K] weight in csrc/linear.c's layout (qs uint8, d and m fp16 per group and row);
    returns its data pointers. Checked on first use, then remembered by identity and data pointers
    (a weight is used every step; any reallocation or .data swap changes a pointer and checks again)."""
    try:
        ptrs = (qs.data_ptr(), d.data_ptr(), m.data_ptr())
        seen = _recall(qs)
    except (AttributeError, TypeError, RuntimeError):
        ptrs, seen = (0, 0, 0), None
    if seen is not None and seen[0] is d and seen[1] is m and seen[2] == (bits, K, N, *ptrs):
        return ptrs
    if bits not in (4, 5, 8):
        raise ValueError(f"{kernel}: bits must be 4, 5 or 8, got {bits!r}")
    _size(kernel, "N", N)
    if _size(kernel, "K", K) % GROUP:
        raise ValueError(f"{kernel}: K must be a multiple of {GROUP}, got {K}")
    T = -(-N // TILE)
    _tensor(kernel, "qs", qs, (torch.uint8,), (T, K * TILE * bits // 8))
    _tensor(kernel, "d", d, (torch.float16,), (T, K // GROUP, TILE))
    _tensor(kernel, "m", m, (torch.float16,), (T, K // GROUP, TILE))
    _remember(qs, d, m, (bits, K, N, *ptrs))
    return ptrs


def _caches(kernel: str, k_cache, v_cache, KV: int, D: int, bs: int) -> int:
    """A layer's paged K and V caches (see attention); returns their number of blocks. Remembered like
    _weight's weights once checked."""
    try:
        ptrs = (k_cache.data_ptr(), v_cache.data_ptr())
        seen = _recall(k_cache)
    except (AttributeError, TypeError, RuntimeError):
        ptrs, seen = (0, 0), None
    if seen is not None and seen[0] is v_cache and seen[1] == (KV, D, bs, *ptrs):
        return seen[2]
    P = 2 if getattr(k_cache, "dtype", None) == torch.bfloat16 else 1
    if P == 2 and (bs % 2 or D % 2):
        raise ValueError(f"{kernel}: a bfloat16 cache needs an even block size and head dim, got {bs} and {D}")
    blocks = k_cache.shape[0] if isinstance(k_cache, torch.Tensor) and k_cache.dim() else None
    _tensor(kernel, "k_cache", k_cache, (torch.float32, torch.bfloat16), (blocks, KV, D // P, bs, P))
    _size(kernel, "the cache's block count", blocks)
    _tensor(kernel, "v_cache", v_cache, (k_cache.dtype,), (blocks, KV, bs // P, D, P))
    _remember(k_cache, v_cache, (KV, D, bs, *ptrs), blocks)
    return blocks


def linear(x: torch.Tensor, qs: torch.Tensor, d: torch.Tensor, m: torch.Tensor, bits: int, K: int, N: int,
           bias: torch.Tensor | None = None, glu: bool = False) -> torch.Tensor:
    """y [M, N] = x [M, K] @ W^T + bias for the quantized weight (qs, d, m); with glu, x is [M, 2K] =
    [gate, up] and the input is silu(gate) * up. x float32 or bfloat16; y has x's dtype."""
    k = "zen_linear"
    pq, pd, pm = _weight(k, qs, d, m, bits, K, N)
    _tensor(k, "x", x, (torch.float32, torch.bfloat16), (None, 2 * K if glu else K))
    if bias is not None:
        _tensor(k, "bias", bias, (torch.float32,), (N,))
    M = x.shape[0]
    if M > INT_MAX:
        raise ValueError(f"{k}: x has {M} rows, more than {INT_MAX}")
    y = torch.empty(M, N, dtype=x.dtype)
    if M == 0:
        return y
    bf16 = x.dtype == torch.bfloat16
    rc = _dll(k).zen_linear(x.data_ptr(), bf16, M, K, glu, pq, pd, pm, bits, N,
                            None if bias is None else bias.data_ptr(), y.data_ptr(), bf16)
    if rc == ENOMEM:
        raise MemoryError(f"{k}: could not allocate scratch memory for {M} rows of {K} quantized activations")
    assert rc == OK, f"{k} returned {rc}"
    return y


def quantize(w: torch.Tensor, bits: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Float32 weight [N, K] -> (qs, d, m) in csrc/linear.c's layout, zero rows padding N to whole tiles."""
    k = "zen_quantize"
    if bits not in (4, 5, 8):
        raise ValueError(f"{k}: bits must be 4, 5 or 8, got {bits!r}")
    _tensor(k, "w", w, (torch.float32,), (None, None))
    N, K = w.shape
    if not 0 < N <= INT_MAX or not 0 < K <= INT_MAX or K % GROUP:
        raise ValueError(f"{k}: w must be [N, K] with 0 < N <= {INT_MAX} and K a positive multiple of {GROUP}, "
                         f"got {[N, K]}")
    T = -(-N // TILE)
    qs = torch.empty(T, K * TILE * bits // 8, dtype=torch.uint8)
    d, m = (torch.empty(T, K // GROUP, TILE, dtype=torch.float16) for _ in range(2))
    _dll(k).zen_quantize(w.data_ptr(), N, K, bits, qs.data_ptr(), d.data_ptr(), m.data_ptr())
    return qs, d, m


def dequant_rows(qs: torch.Tensor, d: torch.Tensor, m: torch.Tensor, bits: int, K: int, N: int,
                 rows: torch.Tensor) -> torch.Tensor:
    """Rows [R] (int64, each in [0, N)) of the quantized [N, K] weight as float32 [R, K]: an embedding lookup."""
    k = "zen_dequant_rows"
    pq, pd, pm = _weight(k, qs, d, m, bits, K, N)
    _tensor(k, "rows", rows, (torch.int64,), (None,))
    R = rows.numel()
    if R > INT_MAX:
        raise ValueError(f"{k}: {R} rows, more than {INT_MAX}")
    out = torch.empty(R, K)
    if R == 0:
        return out
    lo, hi = (int(v) for v in torch.aminmax(rows))
    if lo < 0 or hi >= N:
        raise ValueError(f"{k}: row {lo if lo < 0 else hi} is out of range for a table of {N} rows")
    rc = _dll(k).zen_dequant_rows(pq, pd, pm, bits, K, N, rows.data_ptr(), R, out.data_ptr())
    assert rc == OK, f"{k} returned {rc} after its rows were checked"
    return out


def attention(qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, k_cache: torch.Tensor,
              v_cache: torch.Tensor, tables: torch.Tensor, ctx: torch.Tensor, heads: tuple[int, int, int],
              block_size: int, window: int, scale: float) -> torch.Tensor:
    """Rope, the paged-cache write and attention (csrc/attention.c): qkv float32 [B, T, (H + 2 KV) D]
    (rotated in place), cos/sin float32 [B, T, D], the caches K [blocks, KV, D/P, bs, P] and V [blocks,
    KV, bs/P, D, P] (float32: P = 1, bfloat16: P = 2), tables int64 [B, nb] of block ids, ctx int64 [B]
    each row's context length (T <= ctx <= nb * bs); window 0 for none. Returns float32 [B, T, H D]."""
    kn = "zen_attention"
    H, KV, D = heads
    _size(kn, "H", H), _size(kn, "KV", KV), _size(kn, "D", D)
    if H % KV:
        raise ValueError(f"{kn}: H ({H}) must be a multiple of KV ({KV})")
    bs = _size(kn, "block_size", block_size)
    _size(kn, "window", window, lo=0)
    _tensor(kn, "qkv", qkv, (torch.float32,), (None, None, (H + 2 * KV) * D))
    B, T = qkv.shape[:2]
    _tensor(kn, "cos", cos, (torch.float32,), (B, T, D))
    _tensor(kn, "sin", sin, (torch.float32,), (B, T, D))
    blocks = _caches(kn, k_cache, v_cache, KV, D, bs)
    _tensor(kn, "tables", tables, (torch.int64,), (B, None))
    _tensor(kn, "ctx", ctx, (torch.int64,), (B,))
    nb = tables.shape[1]
    if max(B, T, nb) > INT_MAX:
        raise ValueError(f"{kn}: B, T and the blocks per row must each be at most {INT_MAX}, got {B}, {T}, {nb}")
    out = torch.empty(B, T, H * D)
    if B == 0 or T == 0:
        return out
    if nb == 0:
        raise ValueError(f"{kn}: tables must list at least one block per row")
    lo, hi = (int(v) for v in torch.aminmax(tables))
    if lo < 0 or hi >= blocks:
        raise ValueError(f"{kn}: block id {lo if lo < 0 else hi} is out of range for a cache of {blocks} blocks")
    lo, hi = (int(v) for v in torch.aminmax(ctx))
    if lo < T or hi > nb * bs:
        raise ValueError(f"{kn}: context lengths must lie in [{T}, {nb * bs}] (T new tokens, {nb} blocks of "
                         f"{bs}), got {lo if lo < T else hi}")
    # the kernel checks the same ranges again before it reads or writes anything (ZEN_ERANGE)
    rc = _dll(kn).zen_attention(qkv.data_ptr(), B, T, H, KV, D, cos.data_ptr(), sin.data_ptr(), k_cache.data_ptr(),
                                v_cache.data_ptr(), k_cache.dtype == torch.bfloat16, bs, blocks, tables.data_ptr(),
                                nb, ctx.data_ptr(), window, float(scale), out.data_ptr())
    if rc == ENOMEM:
        raise MemoryError(f"{kn}: could not allocate the attention's scratch memory")
    assert rc == OK, f"{kn} returned {rc}"
    return out


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x / sqrt(mean(x^2) + eps) * weight over the last dim, float32 x [..., dim] and weight [dim]."""
    k = "zen_rmsnorm"
    _tensor(k, "weight", weight, (torch.float32,), (None,))
    dim = weight.shape[0]
    lead = x.dim() - 1 if isinstance(x, torch.Tensor) and x.dim() else 0
    _tensor(k, "x", x, (torch.float32,), (*[None] * lead, dim))
    if not eps >= 0:
        raise ValueError(f"{k}: eps must be >= 0, got {eps!r}")
    out = torch.empty_like(x)
    rows = x.numel() // dim if dim else 0
    if rows == 0:
        return out
    if max(rows, dim) > INT_MAX:
        raise ValueError(f"{k}: x has {rows} rows of {dim}, more than {INT_MAX}")
    _dll(k).zen_rmsnorm(x.data_ptr(), weight.data_ptr(), float(eps), rows, dim, out.data_ptr())
    return out


def argmax(x: torch.Tensor) -> torch.Tensor:
    """x.argmax(-1) for float32 x [rows, n], n >= 1: the first largest value's index, or the first NaN's."""
    k = "zen_argmax"
    _tensor(k, "x", x, (torch.float32,), (None, None))
    rows, n = x.shape
    if n == 0:
        raise ValueError(f"{k}: x must have at least one column, got {list(x.shape)}")
    if max(rows, n) > INT_MAX:
        raise ValueError(f"{k}: x has {rows} rows of {n}, more than {INT_MAX}")
    out = torch.empty(rows, dtype=torch.long)
    if rows:
        _dll(k).zen_argmax(x.data_ptr(), rows, n, out.data_ptr())
    return out
