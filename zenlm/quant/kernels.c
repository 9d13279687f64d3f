/* zenlm's CPU kernels, built once per machine by native.py: weight-only quantized linears, attention
 * over the paged KV cache, RMSNorm.
 *
 * A weight [N, K] is stored as unsigned integers q (4 or 8 bits) in groups of 32 along K, each
 * group with an fp16 scale d and an fp16 offset m per row: w = d * q + m. Rows are interleaved in
 * tiles of 16 so that one 512-bit register holds the same 4 inputs of 16 rows: for tile t and
 * group g the block holds, for each quad of inputs k = g*32 + 4*qd + j, the bytes (qd, row, j).
 * 4 bits: 64-byte octet o holds quad 2o in its low nibbles and quad 2o+1 in its high ones.
 * d and m are [tiles, groups, 16]. Activations are quantized to int8 per group of 32 on the fly,
 * so a group's dot is d * dx * sum(q * xq) + m * dx * sum(xq); the integer sums run on
 * AVX512-VNNI (vpdpbusd) where the CPU has it, in plain C elsewhere. Threads: OpenMP.
 */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VNNI__)
#include <immintrin.h>
#define ZEN_VNNI 1
#else
#define ZEN_VNNI 0
#endif
#if !ZEN_VNNI && defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#include <immintrin.h>
#define ZEN_AVX2 1 /* the matmul on 256-bit integer multiply-adds (most laptops and desktops) */
#else
#define ZEN_AVX2 0
#endif
#if ZEN_VNNI && defined(__AVX512BF16__)
#define ZEN_BF16 1 /* bfloat16 dot products: the attention over a bfloat16 cache */
#else
#define ZEN_BF16 0
#endif

#define QT 16     /* attention: query rows per task (a prefill chunk's), sharing each chunk of keys */
#define CHUNK 256 /* attention: keys per chunk (16 blocks) */
#define G 32   /* group size along K */
#define R 16   /* rows per tile */
#define MT 8   /* activation rows per pass over a tile */

static inline float clampf(float x, float lo, float hi) { return x < lo ? lo : x > hi ? hi : x; }

typedef _Float16 f16;

static inline float bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

static inline uint16_t f32_to_bf16(float f) { /* round to nearest even */
    uint32_t u;
    memcpy(&u, &f, 4);
    if ((u & 0x7fffffff) > 0x7f800000) return (uint16_t)((u >> 16) | 0x40); /* NaN */
    u += 0x7fff + ((u >> 16) & 1);
    return (uint16_t)(u >> 16);
}

/* which code paths this build runs: the matmul's and, for a bfloat16 cache, the attention's */
const char *zen_isa(void) { return ZEN_VNNI ? (ZEN_BF16 ? "avx512-vnni+bf16" : "avx512-vnni") : ZEN_AVX2 ? "avx2" : "plain C"; }

static inline size_t block_bytes(int bits) { return (size_t)R * G * bits / 8; }

/* byte offset of (row r, input kk in 0..31) inside a tile-group block, and its nibble (4 bits) */
static inline size_t byte_of(int bits, int r, int kk, int *high) {
    int qd = kk / 4, j = kk % 4;
    if (bits == 8) { *high = 0; return (size_t)qd * 64 + r * 4 + j; }
    *high = qd & 1;
    return (size_t)(qd / 2) * 64 + r * 4 + j;
}

#if ZEN_VNNI
static inline __m512 exp16(__m512 x);
#endif

/* One activation row -> int8 per group of 32: xq, its scales dx [K/32], dx * sum(xq) per group.
 * glu: the row is [gate (K), up (K)] and the input is silu(gate) * up (SwiGLU's down projection). */
static void quantize_row(const void *x, int bf16, int K, int glu, int8_t *xq, float *dx, float *sx) {
    float buf[G];
    for (int g = 0; g < K / G; g++) {
        for (int i = 0; i < G; i++) {
            buf[i] = bf16 ? bf16_to_f32(((const uint16_t *)x)[g * G + i]) : ((const float *)x)[g * G + i];
        }
        if (glu) {
            float up[G];
            for (int i = 0; i < G; i++)
                up[i] = bf16 ? bf16_to_f32(((const uint16_t *)x)[K + g * G + i]) : ((const float *)x)[K + g * G + i];
#if ZEN_VNNI
            for (int i = 0; i < G; i += 16) {
                const __m512 v = _mm512_loadu_ps(buf + i);
                const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), v));
                _mm512_storeu_ps(buf + i, _mm512_mul_ps(_mm512_div_ps(v, _mm512_add_ps(e, _mm512_set1_ps(1.f))),
                                                        _mm512_loadu_ps(up + i)));
            }
#else
            for (int i = 0; i < G; i++) buf[i] = buf[i] / (1.f + expf(-buf[i])) * up[i];
#endif
        }
        float amax = 0.f;
        for (int i = 0; i < G; i++) amax = fabsf(buf[i]) > amax ? fabsf(buf[i]) : amax;
        float inv = amax > 0.f ? 127.f / amax : 0.f;
        int sum = 0;
        for (int i = 0; i < G; i++) {
            int q = (int)lrintf(buf[i] * inv);
            xq[g * G + i] = (int8_t)q;
            sum += q;
        }
        dx[g] = amax / 127.f;
        sx[g] = dx[g] * (float)sum;
    }
}

typedef struct {
    const int8_t *xq;
    const float *dx, *sx;
    int K, ng;
} Act;

#if ZEN_VNNI
/* acc[i][r] = row r of the tile . activation row m0 + i, for i < MC (a constant per call site) */
static inline __attribute__((always_inline)) void tile_vnni(const uint8_t *qt, const f16 *dt, const f16 *mt,
                                                           int bits, const Act *a, int m0, const int MC,
                                                           __m512 *acc) {
    const __m512i lo4 = _mm512_set1_epi8(0x0F);
    for (int i = 0; i < MC; i++) acc[i] = _mm512_setzero_ps();
    const size_t bb = block_bytes(bits), ahead = bb * a->ng; /* prefetch the next tile's weights */
    for (int g = 0; g < a->ng; g++) {
        const uint8_t *blk = qt + g * bb;
        if (MC > 2) /* compute-bound: fetch ahead; one row streams fine on its own */
            for (size_t o = 0; o < bb; o += 64) _mm_prefetch((const char *)blk + ahead + o, _MM_HINT_T0);
        __m512i w[8];
        if (bits == 4) {
            for (int o = 0; o < 4; o++) {
                __m512i v = _mm512_loadu_si512(blk + o * 64);
                w[2 * o] = _mm512_and_si512(v, lo4);
                w[2 * o + 1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);
            }
        } else {
            for (int q = 0; q < 8; q++) w[q] = _mm512_loadu_si512(blk + q * 64);
        }
        __m512 dv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(dt + g * R)));
        __m512 mv = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(mt + g * R)));
#pragma GCC unroll 8
        for (int i = 0; i < MC; i++) {
            const size_t row = (size_t)(m0 + i);
            const int32_t *x = (const int32_t *)(a->xq + row * a->K + g * G);
            __m512i s0 = _mm512_setzero_si512();
            for (int q = 0; q < 8; q++) s0 = _mm512_dpbusd_epi32(s0, w[q], _mm512_set1_epi32(x[q]));
            __m512 dot = _mm512_cvtepi32_ps(s0);
            acc[i] = _mm512_fmadd_ps(dot, _mm512_mul_ps(dv, _mm512_set1_ps(a->dx[row * a->ng + g])), acc[i]);
            acc[i] = _mm512_fmadd_ps(mv, _mm512_set1_ps(a->sx[row * a->ng + g]), acc[i]);
        }
    }
}

static void store_row(__m512 v, const float *bias, int n0, int nr, void *y, int y_bf16) {
    __mmask16 k = (__mmask16)(nr == 16 ? 0xFFFF : (1u << nr) - 1);
    if (bias) v = _mm512_add_ps(v, _mm512_maskz_loadu_ps(k, bias + n0));
    if (!y_bf16) { _mm512_mask_storeu_ps((float *)y + n0, k, v); return; }
    __m512i u = _mm512_castps_si512(v); /* round to nearest even, then keep the high half */
    u = _mm512_add_epi32(u, _mm512_add_epi32(_mm512_set1_epi32(0x7fff),
                                              _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))));
    _mm256_mask_storeu_epi16((uint16_t *)y + n0, k, _mm512_cvtepi32_epi16(_mm512_srli_epi32(u, 16)));
}
#endif

#if ZEN_AVX2
/* The same tile product in 256-bit registers, 8 rows (half h of the tile) at a time: u8 x s8 pairs
 * summed to int16 (vpmaddubsw), then to int32 (vpmaddwd). With 4-bit weights the eight int16 sums
 * of a group stay below 8 * 2 * 15 * 127 < 2^15; an 8-bit weight is split into its two nibbles. */
static inline __m256i dot_nibbles(const __m256i *w, const int32_t *x) {
    __m256i s16 = _mm256_maddubs_epi16(w[0], _mm256_set1_epi32(x[0]));
    for (int q = 1; q < 8; q++) s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(w[q], _mm256_set1_epi32(x[q])));
    return _mm256_madd_epi16(s16, _mm256_set1_epi16(1));
}

static inline __attribute__((always_inline)) void tile_avx2(const uint8_t *qt, const f16 *dt, const f16 *mt,
                                                           int bits, const Act *a, int m0, const int MC,
                                                           __m256 *acc /* [MC][2] */) {
    const __m256i lo4 = _mm256_set1_epi8(0x0F);
    for (int i = 0; i < 2 * MC; i++) acc[i] = _mm256_setzero_ps();
    const size_t bb = block_bytes(bits);
    for (int g = 0; g < a->ng; g++) {
        const uint8_t *blk = qt + g * bb;
        for (int h = 0; h < 2; h++) {
            __m256i w[8], hi[8];
            for (int o = 0; o < (bits == 4 ? 4 : 8); o++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(blk + o * 64 + h * 32));
                if (bits == 4) {
                    w[2 * o] = _mm256_and_si256(v, lo4);
                    w[2 * o + 1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), lo4);
                } else {
                    w[o] = _mm256_and_si256(v, lo4);
                    hi[o] = _mm256_and_si256(_mm256_srli_epi16(v, 4), lo4);
                }
            }
            const __m256 dv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(dt + g * R + 8 * h)));
            const __m256 mv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(mt + g * R + 8 * h)));
            for (int i = 0; i < MC; i++) {
                const size_t row = (size_t)(m0 + i);
                const int32_t *x = (const int32_t *)(a->xq + row * a->K + g * G);
                __m256i s = dot_nibbles(w, x);
                if (bits == 8) s = _mm256_add_epi32(s, _mm256_slli_epi32(dot_nibbles(hi, x), 4));
                __m256 *c = acc + 2 * i + h;
                *c = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_mul_ps(dv, _mm256_set1_ps(a->dx[row * a->ng + g])), *c);
                *c = _mm256_fmadd_ps(mv, _mm256_set1_ps(a->sx[row * a->ng + g]), *c);
            }
        }
    }
}
#endif

/* row r of the tile's result (plus bias) into y, float32 or bfloat16 */
static inline void store_one(float v, const float *bias, int n, void *y, int y_bf16) {
    if (bias) v += bias[n];
    if (y_bf16) ((uint16_t *)y)[n] = f32_to_bf16(v);
    else ((float *)y)[n] = v;
}

static inline int q_at(const uint8_t *blk, int bits, int r, int kk) {
    int high;
    uint8_t b = blk[byte_of(bits, r, kk, &high)];
    return bits == 8 ? b : high ? b >> 4 : b & 15;
}

/* y[M, N] = x[M, K] @ W^T + bias; x and y are float32 or bfloat16 (flags). K % 32 == 0. With glu,
 * x is [M, 2K] and the input is silu(x[:, :K]) * x[:, K:]. */
void zen_linear(const void *x, int x_bf16, int M, int K, int glu, const uint8_t *qs, const f16 *d, const f16 *mn,
                int bits, int N, const float *bias, void *y, int y_bf16) {
    const int ng = K / G, tiles = (N + R - 1) / R;
    int8_t *xq = malloc((size_t)M * K);
    float *dx = malloc(sizeof(float) * (size_t)M * ng), *sx = malloc(sizeof(float) * (size_t)M * ng);
    const size_t xs = (size_t)K * (glu ? 2 : 1) * (x_bf16 ? 2 : 4), tb = block_bytes(bits) * ng;
    const Act a = {xq, dx, sx, K, ng};
    (void)a; /* unused by the plain path */
#pragma omp parallel
    {
#pragma omp for schedule(static)
    for (int m = 0; m < M; m++)
        quantize_row((const char *)x + m * xs, x_bf16, K, glu, xq + (size_t)m * K, dx + (size_t)m * ng, sx + (size_t)m * ng);
#pragma omp for schedule(static)
    for (int t = 0; t < tiles; t++) {
        const uint8_t *qt = qs + t * tb;
        const f16 *dt = d + (size_t)t * ng * R, *mt = mn + (size_t)t * ng * R;
        const int n0 = t * R, nr = N - n0 < R ? N - n0 : R;
        for (int m0 = 0; m0 < M; m0 += MT) {
            const int mc = M - m0 < MT ? M - m0 : MT;
#if ZEN_VNNI
            __m512 acc[MT];
            switch (mc) {
            case 1: tile_vnni(qt, dt, mt, bits, &a, m0, 1, acc); break;
            case 2: tile_vnni(qt, dt, mt, bits, &a, m0, 2, acc); break;
            case 3: tile_vnni(qt, dt, mt, bits, &a, m0, 3, acc); break;
            case 4: tile_vnni(qt, dt, mt, bits, &a, m0, 4, acc); break;
            case 5: tile_vnni(qt, dt, mt, bits, &a, m0, 5, acc); break;
            case 6: tile_vnni(qt, dt, mt, bits, &a, m0, 6, acc); break;
            case 7: tile_vnni(qt, dt, mt, bits, &a, m0, 7, acc); break;
            default: tile_vnni(qt, dt, mt, bits, &a, m0, 8, acc); break;
            }
            for (int i = 0; i < mc; i++) {
                size_t at = (size_t)(m0 + i) * N;
                store_row(acc[i], bias, n0, nr, y_bf16 ? (void *)((uint16_t *)y + at) : (void *)((float *)y + at), y_bf16);
            }
#elif ZEN_AVX2
            __m256 acc[2 * 4];
            for (int i0 = 0; i0 < mc; i0 += 4) { /* four rows at a time: 256-bit registers are fewer */
                const int mc4 = mc - i0 < 4 ? mc - i0 : 4;
                switch (mc4) {
                case 1: tile_avx2(qt, dt, mt, bits, &a, m0 + i0, 1, acc); break;
                case 2: tile_avx2(qt, dt, mt, bits, &a, m0 + i0, 2, acc); break;
                case 3: tile_avx2(qt, dt, mt, bits, &a, m0 + i0, 3, acc); break;
                default: tile_avx2(qt, dt, mt, bits, &a, m0 + i0, 4, acc); break;
                }
                for (int i = 0; i < mc4; i++) {
                    float v[16];
                    _mm256_storeu_ps(v, acc[2 * i]);
                    _mm256_storeu_ps(v + 8, acc[2 * i + 1]);
                    const size_t at = (size_t)(m0 + i0 + i) * N;
                    for (int r = 0; r < nr; r++)
                        store_one(v[r], bias, n0 + r, y_bf16 ? (void *)((uint16_t *)y + at) : (void *)((float *)y + at), y_bf16);
                }
            }
#else
            for (int i = 0; i < mc; i++) {
                const size_t row = (size_t)(m0 + i);
                for (int r = 0; r < nr; r++) {
                    float v = 0.f;
                    for (int g = 0; g < ng; g++) {
                        const uint8_t *blk = qt + g * block_bytes(bits);
                        int dot = 0;
                        for (int kk = 0; kk < G; kk++) dot += q_at(blk, bits, r, kk) * xq[row * K + g * G + kk];
                        v += (float)dt[g * R + r] * dx[row * ng + g] * (float)dot + (float)mt[g * R + r] * sx[row * ng + g];
                    }
                    store_one(v, bias, n0 + r, y_bf16 ? (void *)((uint16_t *)y + row * N) : (void *)((float *)y + row * N), y_bf16);
                }
            }
#endif
        }
    }
    }
    free(xq); free(dx); free(sx);
}

/* Float32 weights [N, K] -> tiled q, d, m (zero rows pad N up to whole tiles). Per group: the
 * min..max range on 2^bits - 1 steps; for 4 bits also a few shrunken ranges, keeping the one with
 * the least squared error. */
void zen_quantize(const float *w, int N, int K, int bits, uint8_t *qs, f16 *d, f16 *mn) {
    const int ng = K / G, levels = (1 << bits) - 1, tiles = (N + R - 1) / R;
#pragma omp parallel for schedule(static)
    for (int t = 0; t < tiles; t++) {
        for (int r = 0; r < R; r++) {
            const int n = t * R + r;
            for (int g = 0; g < ng; g++) {
                float v[G] = {0};
                if (n < N) memcpy(v, w + (size_t)n * K + g * G, sizeof v);
                float lo = v[0], hi = v[0];
                for (int j = 1; j < G; j++) { lo = v[j] < lo ? v[j] : lo; hi = v[j] > hi ? v[j] : hi; }
                float best_err = INFINITY, bd = 0.f, bm = lo;
                const int tries = bits == 4 ? 12 : 1;
                for (int s = 0; s < tries; s++) {
                    float shrink = 1.f - 0.02f * s;
                    float sd = (float)(f16)((hi - lo) * shrink / levels), sm = (float)(f16)(lo * shrink), err = 0.f;
                    float inv = sd > 0.f ? 1.f / sd : 0.f;
#if ZEN_VNNI
                    for (int h = 0; h < G; h += 16) {
                        __m512 x = _mm512_loadu_ps(v + h);
                        __m512 qf = _mm512_roundscale_ps(_mm512_mul_ps(_mm512_sub_ps(x, _mm512_set1_ps(sm)), _mm512_set1_ps(inv)),
                                                         _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
                        qf = _mm512_min_ps(_mm512_max_ps(qf, _mm512_setzero_ps()), _mm512_set1_ps((float)levels));
                        __m512 e = _mm512_sub_ps(_mm512_fmadd_ps(_mm512_set1_ps(sd), qf, _mm512_set1_ps(sm)), x);
                        err += _mm512_reduce_add_ps(_mm512_mul_ps(e, e));
                    }
#else
                    for (int j = 0; j < G; j++) {
                        float qf = clampf(__builtin_roundevenf((v[j] - sm) * inv), 0.f, (float)levels);
                        float e = sd * qf + sm - v[j];
                        err += e * e;
                    }
#endif
                    if (err < best_err) { best_err = err; bd = sd; bm = sm; }
                }
                float inv = bd > 0.f ? 1.f / bd : 0.f;
                uint8_t best[G];
#pragma omp simd
                for (int j = 0; j < G; j++)
                    best[j] = (uint8_t)clampf(__builtin_roundevenf((v[j] - bm) * inv), 0.f, (float)levels);
                size_t at = ((size_t)t * ng + g) * R + r;
                d[at] = (f16)bd;
                mn[at] = (f16)bm;
                uint8_t *blk = qs + ((size_t)t * ng + g) * block_bytes(bits) + r * 4;
                uint32_t word[8]; /* word qd: the 4 bytes of quad qd */
                memcpy(word, best, sizeof word);
                for (int qd = 0; qd < 8; qd++)
                    if (bits == 8) memcpy(blk + qd * 64, &word[qd], 4);
                    else if (qd % 2 == 0) {
                        uint32_t both = word[qd] | word[qd + 1] << 4;
                        memcpy(blk + qd / 2 * 64, &both, 4);
                    }
            }
        }
    }
}

/* Rows of a quantized [N, K] weight -> float32 [rows, K] (an embedding lookup). */
void zen_dequant_rows(const uint8_t *qs, const f16 *d, const f16 *mn, int bits, int K,
                      const int64_t *rows, int nrows, float *out) {
    const int ng = K / G;
    const size_t bb = block_bytes(bits);
    for (int i = 0; i < nrows; i++) {
        const int64_t t = rows[i] / R, r = rows[i] % R;
        for (int g = 0; g < ng; g++) {
            const uint8_t *blk = qs + ((size_t)t * ng + g) * bb;
            size_t at = ((size_t)t * ng + g) * R + r;
            for (int kk = 0; kk < G; kk++)
                out[(size_t)i * K + g * G + kk] = (float)d[at] * q_at(blk, bits, (int)r, kk) + (float)mn[at];
        }
    }
}

/* ---- attention over the paged KV cache -----------------------------------------------------------
 * B rows of T new tokens each (a decode batch: T = 1; a prefill chunk: B = 1). Row b's tokens sit
 * at positions ctx[b] - T .. ctx[b] - 1: rotate their q and k (cos/sin [B, T, D], rotate-half
 * convention), write k and v into the cache, then let each query attend to the keys at or before
 * its position (the last `window` only, when window > 0). Every query row is computed on its own,
 * so a result never depends on how tokens were batched or chunked. qkv [B, T, (H + 2 KV) * D]
 * float32 is rotated in place; out is [B, T, H * D]. The cache is paged in blocks of bs tokens,
 * float32 or bfloat16, with P = 1 (float32) or 2 (bfloat16) values interleaved so that one 512-bit
 * load feeds a vector op: K [blocks, KV, D/P, bs, P] (transposed in the block: the scores of a
 * block's 16 keys are one op per P dimensions), V [blocks, KV, bs/P, D, P] (P tokens side by
 * side); tables [B, nb] list each row's
 * blocks. Threads: one task per (row, token, kv head); a group's query heads share every load. */
#if ZEN_VNNI
static inline __m512 exp16(__m512 x) { /* 2^t = 2^round(t) * 2^f, f in [-0.5, 0.5]: a degree-6 polynomial */
    __m512 t = _mm512_max_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.4426950409f)), _mm512_set1_ps(-126.f));
    __m512 r = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), f = _mm512_sub_ps(t, r);
    __m512 y = _mm512_set1_ps(1.5403530e-4f);
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(1.3333558e-3f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(9.6181291e-3f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(5.5504109e-2f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(2.4022650e-1f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(6.9314718e-1f));
    y = _mm512_fmadd_ps(y, f, _mm512_set1_ps(1.f));
    return _mm512_scalef_ps(y, r);
}
#endif

static void exp_sub(float *x, int n, float mx) { /* x = exp(x - mx) */
    int j = 0;
#if ZEN_VNNI
    for (; j + 16 <= n; j += 16) _mm512_storeu_ps(x + j, exp16(_mm512_sub_ps(_mm512_loadu_ps(x + j), _mm512_set1_ps(mx))));
#endif
    for (; j < n; j++) x[j] = expf(x[j] - mx);
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

/* Any block size, head count and CPU, in plain C the compiler vectorises: float32 math throughout. */
static void attend_any(const float *q, int per, int D, const void *kc, const void *vc, int bf16, int bs,
                       const int64_t *table, int KV, int g, int start, int n, float scale, float *o) {
    float *p = malloc(sizeof(float) * (size_t)per * n), *buf = malloc(sizeof(float) * (size_t)D * bs);
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
}

void zen_attention(float *qkv, int B, int T, int H, int KV, int D, const float *cos, const float *sin,
                   void *kc, void *vc, int kv_bf16, int bs, const int64_t *tables, int nb, const int64_t *ctx,
                   int window, float scale, float *out) {
    const int W = (H + 2 * KV) * D, per = H / KV, P = kv_bf16 ? 2 : 1;
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
                    attend_any(q + (size_t)r * W, per, D, kc, vc, kv_bf16, bs, table, KV, g, start[r], n[r], scale,
                               o + (size_t)r * H * D);
            }
}

/* out[r] = x[r] / sqrt(mean(x[r]^2) + eps) * w, for float32 rows [rows, dim] */
void zen_rmsnorm(const float *x, const float *w, float eps, int rows, int dim, float *out) {
#pragma omp parallel for schedule(static) if (rows > 4)
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * dim;
        float ss = 0.f;
#pragma omp simd reduction(+ : ss)
        for (int i = 0; i < dim; i++) ss += xr[i] * xr[i];
        const float inv = 1.f / sqrtf(ss / dim + eps);
#pragma omp simd
        for (int i = 0; i < dim; i++) out[(size_t)r * dim + i] = xr[i] * inv * w[i];
    }
}

/* out[r] = the index of the first largest value of row r of x [rows, n] float32, or of its first NaN
 * (torch.argmax's answer; greedy sampling) */
void zen_argmax(const float *x, int rows, int n, int64_t *out) {
#pragma omp parallel for schedule(static) if (rows > 1)
    for (int r = 0; r < rows; r++) {
        const float *xr = x + (size_t)r * n;
        float best = -INFINITY;
        int j = 0, nan = 0;
#if ZEN_VNNI
        __m512 m = _mm512_set1_ps(-INFINITY);
        __mmask16 unordered = 0;
        for (; j + 16 <= n; j += 16) {
            const __m512 v = _mm512_loadu_ps(xr + j);
            unordered |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
            m = _mm512_max_ps(m, v);
        }
        best = _mm512_reduce_max_ps(m);
        nan = unordered != 0;
#endif
        for (; j < n; j++) {
            nan |= xr[j] != xr[j];
            best = xr[j] > best ? xr[j] : best;
        }
        int at = 0;
        while (at < n - 1 && !(nan ? xr[at] != xr[at] : xr[at] == best)) at++;
        out[r] = at;
    }
}
