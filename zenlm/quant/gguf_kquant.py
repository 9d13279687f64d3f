"""K-quant encoders (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): 256-element super-blocks, llama.cpp's reference math.

Each sub-block's scale (and min) comes from the iterative searches of ggml-quants.c: make_qkx2_quants
(scale and min, a sweep of trial scales each refit by least squares), make_qx_quants (symmetric, a sweep
of trial scales) and make_q3_quants (coordinate descent). The scales are then quantized per super-block
(6 bits packed into 12 bytes for Q4_K/Q5_K, int8 for Q6_K) and every weight re-rounded against the scale
it will be decoded with. The searches run over all sub-blocks at once, elements along axis 0 ([n, M]),
so each sum adds elements in C's order. gguf_encode.encode is the entry point; it chunks big tensors.
"""

from __future__ import annotations

import numpy as np

from zenlm.quant.gguf_blocks import f16_bytes, f16_round, rint

F32 = np.float32
GROUP_MAX_EPS = F32(1e-15)


def _sub_blocks(b: np.ndarray, size: int) -> np.ndarray:
    """[n, 256] super-blocks -> [size, n * 256 / size]: column k is sub-block k (block-major), elements down."""
    return np.ascontiguousarray(b.reshape(-1, size).T)


# --- the scale searches -------------------------------------------------------------------------------

def make_qkx2(x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int,
              use_mad: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Asymmetric fit x ~ scale * L - min, L in [0, nmax], per column of x [n, M] with weights w [n, M].

    Returns (scale [M], min [M] (the positive offset subtracted), L [n, M] uint8).
    """
    lo, hi = x.min(axis=0), x.max(axis=0)
    sum_w = w.sum(axis=0)
    sum_x = (w * x).sum(axis=0)
    lo = np.minimum(lo, F32(0))
    flat = hi == lo
    span = np.where(flat, F32(1), hi - lo)
    la, buf = np.empty_like(x), np.empty_like(x)  # trial levels, scratch: the loop allocates nothing big

    def levels(iscale: np.ndarray, low: np.ndarray) -> None:  # la = clip(rint(iscale * (x - low)), 0, nmax)
        np.subtract(x, low, out=la)
        np.multiply(la, iscale, out=la)
        np.rint(la, out=la)
        np.clip(la, 0, nmax, out=la)

    def fit_error(scale: np.ndarray, low: np.ndarray) -> np.ndarray:  # sum w * (scale * la + low - x)^2 (or |.|)
        np.multiply(la, scale, out=buf)
        np.add(buf, low, out=buf)
        np.subtract(buf, x, out=buf)
        np.abs(buf, out=buf) if use_mad else np.multiply(buf, buf, out=buf)
        return np.multiply(buf, w, out=buf).sum(axis=0)

    iscale = F32(nmax) / span
    scale = F32(1) / iscale
    levels(iscale, lo)
    L = la.copy()
    best = fit_error(scale, lo)
    wl = np.empty_like(x)
    with np.errstate(divide="ignore", invalid="ignore"):
        for step in range(nstep + 1):
            levels((F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / span, lo)
            np.multiply(w, la, out=wl)
            sum_l = wl.sum(axis=0)
            sum_l2 = np.multiply(wl, la, out=buf).sum(axis=0)
            sum_xl = np.multiply(wl, x, out=buf).sum(axis=0)
            det = sum_w * sum_l2 - sum_l * sum_l
            this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
            this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
            clamp = this_min > 0
            this_min = np.where(clamp, F32(0), this_min)
            this_scale = np.where(clamp, sum_xl / sum_l2, this_scale)
            err = fit_error(this_scale, this_min)
            better = (det > 0) & (err < best)
            np.copyto(L, la, where=better)
            best = np.where(better, err, best)
            scale = np.where(better, this_scale, scale)
            lo = np.where(better, this_min, lo)
            span = np.where(flat, F32(1), hi - lo)
    scale = np.where(flat, F32(0), scale)
    L[:, flat] = 0
    return scale.astype(F32), (-lo).astype(F32), L.astype(np.uint8)


def _signed_abs_max(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per column of [n, M]: (the first element of largest magnitude, that magnitude)."""
    idx = np.abs(x).argmax(axis=0)
    mx = np.take_along_axis(x, idx[None], axis=0)[0]
    return mx, np.abs(mx)


def make_qx(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric fit x ~ scale * (L - nmax), L in [0, 2 nmax), weights x^2 (rmse_type 1), per column of
    x [n, M]; 19 trial scales around nmax / max. Returns (scale [M], L [n, M] uint8)."""
    mx, amax = _signed_abs_max(x)
    zero = amax < GROUP_MAX_EPS
    mx = np.where(zero, F32(1), mx)
    w = x * x
    wx = w * x
    lv, buf = np.empty_like(x), np.empty_like(x)

    def fit(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # lv = clip(rint(iscale * x)); sum wxl, wll
        np.multiply(x, iscale, out=lv)
        np.rint(lv, out=lv)
        np.clip(lv, -nmax, nmax - 1, out=lv)
        sumlx = np.multiply(wx, lv, out=buf).sum(axis=0)
        np.multiply(w, lv, out=buf)
        return sumlx, np.multiply(buf, lv, out=buf).sum(axis=0)

    sumlx, suml2 = fit(F32(-nmax) / mx)
    L = lv.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
        best = scale * sumlx
        for step in range(-9, 10):
            if step == 0:
                continue
            sumlx, suml2 = fit(-(F32(nmax) + F32(0.1) * F32(step)) / mx)
            better = (suml2 > 0) & (sumlx * sumlx > best * suml2)
            np.copyto(L, lv, where=better)
            scale = np.where(better, sumlx / suml2, scale)
            best = np.where(better, scale * sumlx, best)
    scale = np.where(zero, F32(0), scale).astype(F32)
    L = np.where(zero, 0, L + nmax).astype(np.uint8)
    return scale, L


def make_q3(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric fit with coordinate descent (make_q3_quants with do_rmse), per column of x [n, M].
    Returns (scale [M], L [n, M] uint8 in [0, 2 nmax))."""
    mx, amax = _signed_abs_max(x)
    zero = amax < GROUP_MAX_EPS
    mx = np.where(zero, F32(1), mx)
    L = np.clip(rint((F32(-nmax) / mx) * x), -nmax, nmax - 1).astype(F32)
    w = x * x
    wx = w * x
    sumlx = (wx * L).sum(axis=0)
    suml2 = ((w * L) * L).sum(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        for _ in range(5):  # a pass that changes nothing leaves the state as it was: no early exit needed
            for i in range(x.shape[0]):
                xi, wi, wxi, li = x[i], w[i], wx[i], L[i]
                slx = sumlx - wxi * li
                sl2 = suml2 - (wi * li) * li
                new = np.clip(rint(xi * sl2 / slx), -nmax, nmax - 1).astype(F32)
                slx_new = slx + wxi * new
                sl2_new = sl2 + (wi * new) * new
                take = ((slx > 0) & (new != li) & (sl2_new > 0)
                        & (slx_new * slx_new * suml2 > sumlx * sumlx * sl2_new))
                L[i] = np.where(take, new, li)
                sumlx = np.where(take, slx_new, sumlx)
                suml2 = np.where(take, sl2_new, suml2)
        scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    scale = np.where(zero, F32(0), scale).astype(F32)
    L = np.where(zero, 0, L + nmax).astype(np.uint8)
    return scale, L


# --- shared block steps -------------------------------------------------------------------------------

def _requantize(x: np.ndarray, L: np.ndarray, d: np.ndarray, dm: np.ndarray | None, lo: int, hi: int) -> np.ndarray:
    """Re-round each weight against the scale it decodes with: L = clip(rint((x + dm) / d)) where d != 0,
    the search's L where d == 0. x, L [n, M]; d, dm [M]. Returns L (uint8, offset so lo maps to 0)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        v = x + dm if dm is not None else x
        q = np.clip(rint(v / np.where(d == 0, F32(1), d)), lo, hi) - lo
    return np.where(d == 0, L, q).astype(np.uint8)


def _max_positive(v: np.ndarray) -> np.ndarray:
    """C's `max = 0; if (v > max) max = v` over the last axis."""
    return np.maximum(v.max(axis=-1), F32(0))


def _pack_6bit(ls: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """8 six-bit scales and mins per super-block, [n, 8] each -> the 12 packed bytes of Q4_K/Q5_K."""
    out = np.empty((ls.shape[0], 12), dtype=np.uint8)
    out[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    out[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    out[:, 8:12] = (ls[:, 4:] & 0x0F) | ((lm[:, 4:] & 0x0F) << 4)
    return out


def _inverse_of_max(top: np.ndarray, levels: int) -> np.ndarray:
    """C's `top > 0 ? levels / top : 0`."""
    return np.where(top > 0, F32(levels) / np.where(top > 0, top, F32(1)), F32(0))


def _scale_levels(v: np.ndarray, top: np.ndarray) -> np.ndarray:
    """uint8 6-bit levels of v [n, 8] against the super-block's largest value: min(63, uint8(rint(63/top * v)))."""
    return np.minimum(63, (rint(_inverse_of_max(top, 63)[:, None] * v) & 0xFF)).astype(np.uint8)


def _qkx_super_blocks(b: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int):
    """The Q4_K/Q5_K steps up to the packed scales: returns (head bytes [n, 16], L [n, 256] uint8)."""
    n = b.shape[0]
    x = _sub_blocks(b, 32)  # [32, n * 8]
    av = np.sqrt((x * x).sum(axis=0) / F32(32))
    w = av + np.abs(x)
    scales, mins, L = make_qkx2(x, w, nmax, rmin, rdelta, nstep, use_mad=False)
    scales, mins = scales.reshape(n, 8), mins.reshape(n, 8)
    max_scale, max_min = _max_positive(scales), _max_positive(mins)
    ls, lm = _scale_levels(scales, max_scale), _scale_levels(mins, max_min)
    d16, dmin16 = f16_round(max_scale / F32(63)), f16_round(max_min / F32(63))
    d = (d16[:, None] * ls.astype(F32)).reshape(-1)
    dm = (dmin16[:, None] * lm.astype(F32)).reshape(-1)
    L = _requantize(x, L, d, dm, 0, nmax)
    head = np.concatenate([f16_bytes(d16), f16_bytes(dmin16), _pack_6bit(ls, lm)], axis=1)
    return head, np.ascontiguousarray(L.T).reshape(n, 256)


# --- the types: b [n, 256] float32 super-blocks -> [n, type_size] uint8 --------------------------------

def q4_k(b: np.ndarray) -> np.ndarray:
    # d, dmin: f16; scales: 12 bytes; qs: 128 bytes, byte 32k + l = L[64k + l] | L[64k + 32 + l] << 4
    head, L = _qkx_super_blocks(b, 15, -1.0, 0.1, 20)
    q = L.reshape(-1, 4, 2, 32)
    return np.concatenate([head, (q[:, :, 0] | (q[:, :, 1] << 4)).reshape(-1, 128)], axis=1)


def q5_k(b: np.ndarray) -> np.ndarray:
    # as Q4_K, plus qh: 32 bytes, bit 2k of byte l = bit 4 of L[64k + l], bit 2k + 1 = bit 4 of L[64k + 32 + l]
    head, L = _qkx_super_blocks(b, 31, -0.5, 0.1, 15)
    q = L.reshape(-1, 8, 32)
    high = (q >> 4) << np.arange(8, dtype=np.uint8)[None, :, None]
    qh = np.bitwise_or.reduce(high, axis=1)
    low = (q & 0x0F).reshape(-1, 4, 2, 32)
    return np.concatenate([head, qh, (low[:, :, 0] | (low[:, :, 1] << 4)).reshape(-1, 128)], axis=1)


def q6_k(b: np.ndarray) -> np.ndarray:
    # ql: 128 bytes, qh: 64 bytes, scales: 16 x int8, d: f16; x = d * scale * (L - 32) per 16 elements
    n = b.shape[0]
    x = _sub_blocks(b, 16)  # [16, n * 16]
    scales, L = make_qx(x, 32)
    scales = scales.reshape(n, 16)
    idx = np.abs(scales).argmax(axis=1)
    max_scale = np.take_along_axis(scales, idx[:, None], axis=1)[:, 0]
    empty = np.abs(max_scale) < GROUP_MAX_EPS
    with np.errstate(divide="ignore"):
        iscale = F32(-128) / np.where(empty, F32(1), max_scale)
        d16 = np.where(empty, F32(0), f16_round(F32(1) / iscale))
    sc = np.minimum(127, rint(iscale[:, None] * scales)).astype(np.int8)
    sc = np.where(empty[:, None], 0, sc).astype(np.int8)
    d = (d16[:, None] * sc.astype(F32)).reshape(-1)
    L = _requantize(x, L, d, None, -32, 31)
    L = np.ascontiguousarray(L.T).reshape(n, 2, 4, 32)  # [n, half, quarter, l]
    L = np.where(empty[:, None, None, None], 0, L).astype(np.uint8)
    ql = np.stack([L[:, :, 0] & 0x0F | (L[:, :, 2] & 0x0F) << 4,
                   L[:, :, 1] & 0x0F | (L[:, :, 3] & 0x0F) << 4], axis=2).reshape(n, 128)
    qh = (L[:, :, 0] >> 4 | (L[:, :, 1] >> 4) << 2 | (L[:, :, 2] >> 4) << 4 | (L[:, :, 3] >> 4) << 6).reshape(n, 64)
    return np.concatenate([ql, qh, sc.view(np.uint8), f16_bytes(d16)], axis=1)


def _pack_2bit(L: np.ndarray) -> np.ndarray:
    """[n, 256] 2-bit levels -> 64 bytes: byte 32h + l = L[128h + l] | L[128h + 32 + l] << 2 | ... << 6."""
    q = L.reshape(-1, 2, 4, 32)
    return (q[:, :, 0] | q[:, :, 1] << 2 | q[:, :, 2] << 4 | q[:, :, 3] << 6).reshape(-1, 64)


def q2_k(b: np.ndarray) -> np.ndarray:
    # scales: 16 x (4-bit scale | 4-bit min << 4), qs: 64 bytes, d, dmin: f16
    n = b.shape[0]
    x = _sub_blocks(b, 16)  # [16, n * 16]
    scales, mins, L = make_qkx2(x, np.abs(x), 3, -0.5, 0.1, 15, use_mad=True)
    scales, mins = scales.reshape(n, 16), mins.reshape(n, 16)
    max_scale, max_min = _max_positive(scales), _max_positive(mins)
    ls = np.where(max_scale[:, None] > 0, rint(_inverse_of_max(max_scale, 15)[:, None] * scales), 0) & 0xFF
    lm = np.where(max_min[:, None] > 0, rint(_inverse_of_max(max_min, 15)[:, None] * mins), 0)
    packed = (ls | (lm << 4)).astype(np.uint8)  # the C code stores into uint8: wraps like this
    d16 = np.where(max_scale > 0, f16_round(max_scale / F32(15)), F32(0))
    dmin16 = np.where(max_min > 0, f16_round(max_min / F32(15)), F32(0))
    d = (d16[:, None] * (packed & 0x0F).astype(F32)).reshape(-1)
    dm = (dmin16[:, None] * (packed >> 4).astype(F32)).reshape(-1)
    L = _requantize(x, L, d, dm, 0, 3)
    L = np.ascontiguousarray(L.T).reshape(n, 256)
    return np.concatenate([packed, _pack_2bit(L), f16_bytes(d16), f16_bytes(dmin16)], axis=1)


def q3_k(b: np.ndarray) -> np.ndarray:
    # hmask: 32 bytes (bit k of byte l: L[32k + l] >= 4), qs: 64 bytes (low 2 bits), scales: 12 bytes
    # (16 six-bit scales, stored + 32), d: f16; x = d * (scale - 32) * (L - 4)
    n = b.shape[0]
    x = _sub_blocks(b, 16)  # [16, n * 16]
    scales, L = make_q3(x, 4)
    scales = scales.reshape(n, 16)
    idx = np.abs(scales).argmax(axis=1)
    max_scale = np.take_along_axis(scales, idx[:, None], axis=1)[:, 0]
    some = max_scale != 0
    with np.errstate(divide="ignore"):
        iscale = F32(-32) / np.where(some, max_scale, F32(1))
    lv = np.clip(rint(iscale[:, None] * scales).astype(np.int8), -32, 31) + 32
    lv = np.where(some[:, None], lv, 0).astype(np.uint8)  # 6-bit, stored with the +32 offset
    packed = np.empty((n, 12), dtype=np.uint8)
    packed[:, :8] = (lv[:, :8] & 0x0F) | ((lv[:, 8:] & 0x0F) << 4)
    high = (lv >> 4).reshape(n, 4, 4)  # [n, j // 4, j % 4]
    packed[:, 8:] = high[:, 0] | high[:, 1] << 2 | high[:, 2] << 4 | high[:, 3] << 6
    d16 = np.where(some, f16_round(F32(1) / iscale), F32(0))
    sc = np.where(some[:, None], lv.astype(np.int32) - 32, -32)
    d = (d16[:, None] * sc.astype(F32)).reshape(-1)
    L = _requantize(x, L, d, None, -4, 3)
    L = np.ascontiguousarray(L.T).reshape(n, 256)
    hmask = np.packbits((L >> 2 & 1).reshape(n, 8, 32).transpose(0, 2, 1), axis=2, bitorder="little")[:, :, 0]
    return np.concatenate([hmask, _pack_2bit(L & 3), packed, f16_bytes(d16)], axis=1)
