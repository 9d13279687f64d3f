/* Attention over the paged KV cache, with rope and the cache write.
 *
 * B rows of T new tokens each (a decode batch: T = 1; a prefill chunk: B = 1). Row b's tokens sit
 * at positions ctx[b] - T .. ctx[b] - 1: rotate their q and k (cos/sin [B, T, D], rotate-half
 * convention), write k and v into the cache, then let each query attend to the keys at or before
 * its position (the last `window` only, when window > 0). Every query row is computed on its own,
 * so a result never depends on how tokens were batched or chunked. qkv [B, T, (H + 2 KV) * D]
 * float32 is rotated in place; out is [B, T, H * D]. The cache is paged in blocks of bs tokens,
 * float32 or bfloat16, with P = 1 (float32) or 2 (bfloat16) values interleaved so that one 512-bit
 * load feeds a vector op: K [blocks, KV, D/P, bs, P] (transposed in the block: the scores of a
 * block's 16 keys are one op per P dimensions), V [blocks, KV, bs/P, D, P] (P tokens side by
 * side); tables [B, nb] list each row's blocks. Threads: one task per (row, tile of up to 16 of its
 * tokens, kv head); a group's query heads share every load. */
#include "common.h"

#define QT 16     /* query rows per task (a prefill chunk's), sharing each chunk of keys */
#define CHUNK 256 /* keys per chunk (16 blocks) */

static void exp_sub(float *x, int n, float mx) { /* x = exp(x - mx) */
    int j = 0;
#if ZEN_VNNI
    for (; j + 16 <= n; j += 16) _mm512_storeu_ps(x + j, exp16(_mm512_sub_ps(_mm512_loadu_ps(x + j), _mm512_set1_ps(mx))));
#endif
#pragma omp simd
    for (int i = j; i < n; i++) x[i] = exp_poly(x[i] - mx);
}

static void rope(float *x, const float *cos, const float *sin, int D) {
    const int h = D / 2;
    for (int i = 0; i < h; i++) {
        float a = x[i], b = x[i + h];
        x[i] = a * cos[i] - b * sin[i];
        x[i + h] = b * cos[i + h] + a * sin[i + h];
    }
}

/* where key dimension i of token t, and value dimension i of token t, of (block, kv head) bg live */
static inline size_t k_at(size_t bg, int D, int bs, int P, int i, int t) {
    return ((bg * (D / P) + i / P) * bs + t) * P + i % P;
}
static inline size_t v_at(size_t bg, int D, int bs, int P, int t, int i) {
    return ((bg * (bs / P) + t / P) * D + i) * P + t % P;
}

static inline float get(const void *c, int bf16, size_t at) {
    return bf16 ? bf16_to_f32(((const uint16_t *)c)[at]) : ((const float *)c)[at];
}

static inline void put(void *c, int bf16, size_t at, float v) {
    if (bf16) ((uint16_t *)c)[at] = f32_to_bf16(v);
    else ((float *)c)[at] = v;
}

#if ZEN_VNNI
static inline void prefetch_block(const void *c, int bf16, size_t at, int n) { /* n values from at */
    const char *b = (const char *)c + at * (bf16 ? 2 : 4);
    for (int i = 0; i < n * (bf16 ? 2 : 4); i += 64) _mm_prefetch(b + i, _MM_HINT_T0);
}

static inline __mmask16 span(int c, int start, int n) { /* the keys of block c in [start, n) */
    const int t0 = start > c * 16 ? start - c * 16 : 0, t1 = n - c * 16 < 16 ? n - c * 16 : 16;
    return (__mmask16)(((1u << t1) - 1) & ~((1u << t0) - 1));
}

/* scores of block c's 16 keys for PER heads: float32 cache, one FMA per head and dimension */
static inline __attribute__((always_inline)) void scores_f32(const float *q, const int PER, int D, const float *k,
                                                            __m512 *acc) {
    for (int h = 0; h < PER; h++) acc[h] = _mm512_setzero_ps();
    for (int i = 0; i < D; i++) {
        const __m512 kv = _mm512_loadu_ps(k + (size_t)i * 16);
        for (int h = 0; h < PER; h++) acc[h] = _mm512_fmadd_ps(_mm512_set1_ps(q[h * D + i]), kv, acc[h]);
    }
}

#if ZEN_BF16
/* the same from a bfloat16 cache and q rounded to bfloat16: one dot-product op per 2 dimensions */
static inline __attribute__((always_inline)) void scores_bf16(const int32_t *qp, const int PER, int D,
                                                             const uint16_t *k, __m512 *acc) {
    for (int h = 0; h < PER; h++) acc[h] = _mm512_setzero_ps();
    for (int j = 0; j < D / 2; j++) {
        const __m512bh kv = (__m512bh)_mm512_loadu_si512(k + (size_t)j * 32);
        for (int h = 0; h < PER; h++)
            acc[h] = _mm512_dpbf16_ps(acc[h], kv, (__m512bh)_mm512_set1_epi32(qp[h * D / 2 + j]));
    }
}

static inline void to_bf16(const float *x, int n, uint16_t *y) { /* n % 16 == 0; round to nearest even */
    for (int i = 0; i < n; i += 16) _mm256_storeu_si256((__m256i *)(y + i), (__m256i)_mm512_cvtneps_pbh(_mm512_loadu_ps(x + i)));
}
#endif

/* The common case, blocks of 16 keys, D % 32 == 0 and PER <= 8 query heads per kv head (a constant
 * per call site, so the heads' accumulators stay in registers). Query rows r < nq (q [nq, PER * D]
 * with row stride qs; o likewise with stride os) of one sequence, row r seeing keys [start[r],
 * n[r]). Online softmax over chunks of 256 keys, each chunk read from memory once for all the rows;
 * a row's result depends only on its own keys and query, never on the other rows of the task.
 * work: scratch floats, (PER * CHUNK) * 3 / 2 + nq * PER * (D * 3 / 2 + 2). */
static inline __attribute__((always_inline)) void attend16(const float *q, size_t qs, int nq, const int PER, int D,
                                                          const void *kc, const void *vc, int bf16,
                                                          const int64_t *table, int KV, int g, const int *start,
                                                          const int *n, float scale, float *o, size_t os,
                                                          float *work) {
    const size_t blk = (size_t)D * 16; /* values per (block, kv head) */
    float *p = work, *acc_all = p + PER * CHUNK, *m = acc_all + (size_t)nq * PER * D, *l = m + nq * PER;
    uint16_t *pb = (uint16_t *)(l + nq * PER), *qb = pb + PER * CHUNK;
    int cmin = start[0] / 16, cmax = 0;
    for (int r = 0; r < nq; r++) {
        cmin = start[r] / 16 < cmin ? start[r] / 16 : cmin;
        cmax = (n[r] + 15) / 16 > cmax ? (n[r] + 15) / 16 : cmax;
        for (int h = 0; h < PER; h++) m[r * PER + h] = -INFINITY, l[r * PER + h] = 0.f;
#if ZEN_BF16
        if (bf16) to_bf16(q + r * qs, PER * D, qb + (size_t)r * PER * D);
#endif
    }
    memset(acc_all, 0, sizeof(float) * (size_t)nq * PER * D);
    for (int cc = cmin; cc < cmax; cc += CHUNK / 16) {
        const int ce = cc + CHUNK / 16 < cmax ? cc + CHUNK / 16 : cmax;
        for (int r = 0; r < nq; r++) {
            const int c0 = start[r] / 16 > cc ? start[r] / 16 : cc, c1 = (n[r] + 15) / 16 < ce ? (n[r] + 15) / 16 : ce;
            if (c0 >= c1) continue;
            __m512 cm[8], s[8];
            for (int h = 0; h < PER; h++) cm[h] = _mm512_set1_ps(-INFINITY);
            for (int c = c0; c < c1; c++) { /* scores, and the chunk's max */
                const size_t bg = (size_t)table[c] * KV + g;
                if (r == 0 && c + 1 < c1) prefetch_block(kc, bf16, ((size_t)table[c + 1] * KV + g) * blk, (int)blk);
#if ZEN_BF16
                if (bf16) scores_bf16((const int32_t *)(qb + (size_t)r * PER * D), PER, D, (const uint16_t *)kc + bg * blk, s);
                else
#endif
                    scores_f32(q + r * qs, PER, D, (const float *)kc + bg * blk, s);
                const __mmask16 keep = span(c, start[r], n[r]);
                for (int h = 0; h < PER; h++) {
                    const __m512 v = _mm512_mask_blend_ps(keep, _mm512_set1_ps(-INFINITY), _mm512_mul_ps(s[h], _mm512_set1_ps(scale)));
                    _mm512_storeu_ps(p + h * CHUNK + (c - cc) * 16, v);
                    cm[h] = _mm512_max_ps(cm[h], v);
                }
            }
            float *acc = acc_all + (size_t)r * PER * D;
            for (int h = 0; h < PER; h++) { /* p = exp(s - new max); rescale what came before */
                const float old = m[r * PER + h], mc = _mm512_reduce_max_ps(cm[h]), mx = mc > old ? mc : old;
                const float alpha = expf(old - mx);
                m[r * PER + h] = mx;
                for (int i = 0; i < D; i += 16)
                    _mm512_storeu_ps(acc + h * D + i, _mm512_mul_ps(_mm512_loadu_ps(acc + h * D + i), _mm512_set1_ps(alpha)));
                __m512 sum = _mm512_setzero_ps();
                for (int c = c0; c < c1; c++) {
                    float *ph = p + h * CHUNK + (c - cc) * 16;
                    const __m512 e = _mm512_maskz_mov_ps(span(c, start[r], n[r]), exp16(_mm512_sub_ps(_mm512_loadu_ps(ph), _mm512_set1_ps(mx))));
                    _mm512_storeu_ps(ph, e);
                    sum = _mm512_add_ps(sum, e);
                }
                l[r * PER + h] = l[r * PER + h] * alpha + _mm512_reduce_add_ps(sum);
#if ZEN_BF16
                if (bf16) to_bf16(p + h * CHUNK + (c0 - cc) * 16, (c1 - c0) * 16, pb + h * CHUNK + (c0 - cc) * 16);
#endif
            }
            for (int i0 = 0; i0 < D; i0 += 32) { /* values, 32 dimensions at a time */
                __m512 a[16];
                for (int h = 0; h < PER; h++) {
                    a[2 * h] = _mm512_loadu_ps(acc + h * D + i0);
                    a[2 * h + 1] = _mm512_loadu_ps(acc + h * D + i0 + 16);
                }
                for (int c = c0; c < c1; c++) {
                    const __mmask16 keep = span(c, start[r], n[r]);
                    const int t0 = __builtin_ctz(keep), t1 = 32 - __builtin_clz(keep);
                    const size_t bg = (size_t)table[c] * KV + g;
                    if (r == 0 && i0 == 0 && c + 1 < c1) prefetch_block(vc, bf16, ((size_t)table[c + 1] * KV + g) * blk, (int)blk);
#if ZEN_BF16
                    if (bf16) { /* a pair of tokens per op; a pair's token outside the span is masked out,
                                 * since its never-written value could be NaN */
                        const uint16_t *vb = (const uint16_t *)vc + bg * blk + (size_t)i0 * 2;
                        const int32_t *pp = (const int32_t *)(pb + (c - cc) * 16);
                        for (int u = t0 / 2; u <= (t1 - 1) / 2; u++) {
                            const __mmask32 k = (2 * u < t0 ? 0xAAAAAAAAu : 0xFFFFFFFFu) & (2 * u + 1 >= t1 ? 0x55555555u : 0xFFFFFFFFu);
                            const __m512bh v0 = (__m512bh)_mm512_maskz_loadu_epi16(k, vb + (size_t)u * D * 2);
                            const __m512bh v1 = (__m512bh)_mm512_maskz_loadu_epi16(k, vb + (size_t)u * D * 2 + 32);
                            for (int h = 0; h < PER; h++) {
                                const __m512bh w = (__m512bh)_mm512_set1_epi32(pp[h * CHUNK / 2 + u]);
                                a[2 * h] = _mm512_dpbf16_ps(a[2 * h], v0, w);
                                a[2 * h + 1] = _mm512_dpbf16_ps(a[2 * h + 1], v1, w);
                            }
                        }
                        continue;
                    }
#endif
                    const float *vf = (const float *)vc + bg * blk + i0, *pc = p + (c - cc) * 16;
                    for (int t = t0; t < t1; t++) {
                        const __m512 v0 = _mm512_loadu_ps(vf + (size_t)t * D), v1 = _mm512_loadu_ps(vf + (size_t)t * D + 16);
                        for (int h = 0; h < PER; h++) {
                            const __m512 w = _mm512_set1_ps(pc[h * CHUNK + t]);
                            a[2 * h] = _mm512_fmadd_ps(w, v0, a[2 * h]);
                            a[2 * h + 1] = _mm512_fmadd_ps(w, v1, a[2 * h + 1]);
                        }
                    }
                }
                for (int h = 0; h < PER; h++) {
                    _mm512_storeu_ps(acc + h * D + i0, a[2 * h]);
                    _mm512_storeu_ps(acc + h * D + i0 + 16, a[2 * h + 1]);
                }
            }
        }
    }
    for (int r = 0; r < nq; r++)
        for (int h = 0; h < PER; h++) {
            const __m512 inv = _mm512_set1_ps(1.f / l[r * PER + h]);
            for (int i = 0; i < D; i += 16)
                _mm512_storeu_ps(o + r * os + h * D + i, _mm512_mul_ps(_mm512_loadu_ps(acc_all + ((size_t)r * PER + h) * D + i), inv));
        }
}
#endif

/* A block of the cache as float32: its keys [D, bs] (a row per dimension), or its values [bs, D] */
static void keys_f32(const void *kc, int bf16, size_t bg, int D, int bs, float *kb) {
    for (int i = 0; i < D; i++)
#pragma omp simd
        for (int t = 0; t < bs; t++) kb[i * bs + t] = get(kc, bf16, k_at(bg, D, bs, bf16 ? 2 : 1, i, t));
}

static void values_f32(const void *vc, int bf16, size_t bg, int D, int bs, float *vb) {
    for (int t = 0; t < bs; t++)
#pragma omp simd
        for (int i = 0; i < D; i++) vb[t * D + i] = get(vc, bf16, v_at(bg, D, bs, bf16 ? 2 : 1, t, i));
}

/* Any block size, head count and CPU, in plain C the compiler vectorises: float32 math throughout.
 * ZEN_ENOMEM when its scratch memory cannot be allocated. */
static int attend_any(const float *q, int per, int D, const void *kc, const void *vc, int bf16, int bs,
                      const int64_t *table, int KV, int g, int start, int n, float scale, float *o) {
    float *p = malloc(sizeof(float) * (size_t)per * n), *buf = malloc(sizeof(float) * (size_t)D * bs);
    if (!p || !buf) {
        free(p); free(buf);
        return ZEN_ENOMEM;
    }
    for (int c = start / bs; c * bs < n; c++) { /* scores, a block of keys at a time */
        const int t0 = start > c * bs ? start - c * bs : 0, t1 = n - c * bs < bs ? n - c * bs : bs;
        keys_f32(kc, bf16, (size_t)table[c] * KV + g, D, bs, buf);
        for (int h = 0; h < per; h++) {
            float *ph = p + (size_t)h * n + c * bs;
            for (int j = t0; j < t1; j++) ph[j] = 0.f;
            for (int i = 0; i < D; i++) {
                const float qi = q[h * D + i], *ki = buf + (size_t)i * bs;
#pragma omp simd
                for (int j = t0; j < t1; j++) ph[j] += qi * ki[j];
            }
            for (int j = t0; j < t1; j++) ph[j] *= scale;
        }
    }
    float inv[per];
    for (int h = 0; h < per; h++) { /* softmax; the 1 / sum is applied to the output */
        float *ph = p + (size_t)h * n, mx = -INFINITY, sum = 0.f;
        for (int j = start; j < n; j++) mx = ph[j] > mx ? ph[j] : mx;
        exp_sub(ph + start, n - start, mx);
        for (int j = start; j < n; j++) sum += ph[j];
        inv[h] = 1.f / sum;
        for (int i = 0; i < D; i++) o[h * D + i] = 0.f;
    }
    for (int c = start / bs; c * bs < n; c++) { /* the weighted sum of values */
        const int t0 = start > c * bs ? start - c * bs : 0, t1 = n - c * bs < bs ? n - c * bs : bs;
        values_f32(vc, bf16, (size_t)table[c] * KV + g, D, bs, buf);
        for (int h = 0; h < per; h++)
            for (int j = t0; j < t1; j++) {
                const float w = p[(size_t)h * n + c * bs + j], *vj = buf + (size_t)j * D;
#pragma omp simd
                for (int i = 0; i < D; i++) o[h * D + i] += w * vj[i];
            }
    }
    for (int h = 0; h < per; h++)
        for (int i = 0; i < D; i++) o[h * D + i] *= inv[h];
    free(p); free(buf);
    return ZEN_OK;
}

/* Rope on the new tokens' q and k, their k and v written to the paged cache, and each query's attention
 * over its row's context (its last `window` keys when window > 0). ZEN_ERANGE, before anything is read
 * or written, when a block id is not in [0, blocks) or a context length not in [T, nb * bs];
 * ZEN_ENOMEM when a thread's scratch memory cannot be allocated (the output is then incomplete). */
int zen_attention(float *qkv, int B, int T, int H, int KV, int D, const float *cos, const float *sin,
                  void *kc, void *vc, int kv_bf16, int bs, int blocks, const int64_t *tables, int nb,
                  const int64_t *ctx, int window, float scale, float *out) {
    const int W = (H + 2 * KV) * D, per = H / KV, P = kv_bf16 ? 2 : 1;
    for (int b = 0; b < B; b++) {
        if (ctx[b] < T || ctx[b] > (int64_t)nb * bs) return ZEN_ERANGE;
        for (int c = 0; c < nb; c++)
            if (tables[(size_t)b * nb + c] < 0 || tables[(size_t)b * nb + c] >= blocks) return ZEN_ERANGE;
    }
    for (int b = 0; b < B; b++) /* rotate and store the new tokens' k, v */
        for (int t = 0; t < T; t++) {
            const size_t r = (size_t)b * T + t;
            float *row = qkv + r * W;
            for (int h = 0; h < H + KV; h++) rope(row + h * D, cos + r * D, sin + r * D, D);
            const int64_t pos = ctx[b] - T + t, blk = tables[(size_t)b * nb + pos / bs], off = pos % bs;
            for (int g = 0; g < KV; g++)
                for (int i = 0; i < D; i++) {
                    put(kc, kv_bf16, k_at((size_t)blk * KV + g, D, bs, P, i, (int)off), row[(H + g) * D + i]);
                    put(vc, kv_bf16, v_at((size_t)blk * KV + g, D, bs, P, (int)off, i), row[(H + KV + g) * D + i]);
                }
        }
    const int tiles = (T + QT - 1) / QT;
    int failed = 0;
#pragma omp parallel for schedule(dynamic, 1) collapse(3)
    for (int b = 0; b < B; b++)
        for (int tile = 0; tile < tiles; tile++)
            for (int g = 0; g < KV; g++) {
                const int t0 = tile * QT, nq = T - t0 < QT ? T - t0 : QT;
                int start[QT], n[QT];
                for (int r = 0; r < nq; r++) {
                    n[r] = (int)(ctx[b] - T + t0 + r + 1);
                    start[r] = window > 0 && n[r] > window ? n[r] - window : 0;
                }
                const int64_t *table = tables + (size_t)b * nb;
                const float *q = qkv + ((size_t)b * T + t0) * W + (size_t)g * per * D;
                float *o = out + ((size_t)b * T + t0) * H * D + (size_t)g * per * D;
#if ZEN_VNNI
                if (bs == 16 && D % 32 == 0 && per <= 8 && (ZEN_BF16 || !kv_bf16)) {
                    float *work = malloc(sizeof(float) * ((size_t)per * CHUNK * 3 / 2 + (size_t)nq * per * (D * 3 / 2 + 2)));
                    if (!work) {
#pragma omp atomic write
                        failed = 1;
                        continue;
                    }
                    switch (per) {
#define PER_CASE(k) case k: attend16(q, W, nq, k, D, kc, vc, kv_bf16, table, KV, g, start, n, scale, o, (size_t)H * D, work); break;
                    PER_CASE(1) PER_CASE(2) PER_CASE(3) PER_CASE(4) PER_CASE(5) PER_CASE(6) PER_CASE(7) PER_CASE(8)
#undef PER_CASE
                    }
                    free(work);
                    continue;
                }
#endif
                for (int r = 0; r < nq; r++)
                    if (attend_any(q + (size_t)r * W, per, D, kc, vc, kv_bf16, bs, table, KV, g, start[r], n[r], scale,
                                   o + (size_t)r * H * D) != ZEN_OK) {
#pragma omp atomic write
                        failed = 1;
                    }
            }
    return failed ? ZEN_ENOMEM : ZEN_OK;
}

