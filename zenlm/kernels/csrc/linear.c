/* Weight-only quantized linears: y = x @ W^T + bias with W in 4, 5 or 8 bits, and the quantizer.
 *
 * A weight [N, K] is stored as unsigned integers q (4, 5 or 8 bits) in groups of 32 along K, each
 * group with an fp16 scale d and an fp16 offset m per row: w = d * q + m. Rows are interleaved in
 * tiles of 16 so that one 512-bit register holds the same 4 inputs of 16 rows: for tile t and
 * group g the block holds, for each quad of inputs k = g*32 + 4*qd + j, the bytes (qd, row, j).
 * 4 bits: 64-byte octet o holds quad 2o in its low nibbles and quad 2o+1 in its high ones.
 * 5 bits: the low four bits as the 4-bit block (256 bytes), then one 64-bit mask per quad qd whose bit
 * row * 4 + j is the fifth bit of (qd, row, j): one AVX-512 byte mask, added in as 16 (GGUF's Q5_0/Q5_1/Q5_K).
 * d and m are [tiles, groups, 16]. Activations are quantized to int8 per group of 32 on the fly,
 * so a group's dot is d * dx * sum(q * xq) + m * dx * sum(xq); the integer sums run on
 * AVX512-VNNI (vpdpbusd) or AVX2 (vpmaddubsw, vpmaddwd) where the CPU has it, in plain C elsewhere.
 * Threads: OpenMP.
 */
#include "common.h"

#define G 32   /* group size along K */
#define R 16   /* rows per tile */
#define MT 8   /* activation rows per pass over a tile */

static inline float clampf(float x, float lo, float hi) { return x < lo ? lo : x > hi ? hi : x; }

static inline size_t block_bytes(int bits) { return (size_t)R * G * bits / 8; }

/* the fifth bits of quad qd in a 5-bit block: bit row * 4 + j */
static inline uint64_t fifth_bits(const uint8_t *blk, int qd) {
    uint64_t m;
    memcpy(&m, blk + R * G / 2 + qd * 8, 8);
    return m;
}

/* byte offset of (row r, input kk in 0..31) inside a tile-group block, and its nibble (4 bits) */
static inline size_t byte_of(int bits, int r, int kk, int *high) {
    int qd = kk / 4, j = kk % 4;
    if (bits == 8) { *high = 0; return (size_t)qd * 64 + r * 4 + j; }
    *high = qd & 1; /* 4 bits, and the low four of 5 bits */
    return (size_t)(qd / 2) * 64 + r * 4 + j;
}

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
#pragma omp simd
            for (int i = 0; i < G; i++) buf[i] = buf[i] / (1.f + exp_poly(-buf[i])) * up[i];
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
        if (bits != 8) {
            for (int o = 0; o < 4; o++) {
                __m512i v = _mm512_loadu_si512(blk + o * 64);
                w[2 * o] = _mm512_and_si512(v, lo4);
                w[2 * o + 1] = _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4);
            }
            if (bits == 5)
                for (int q = 0; q < 8; q++)
                    w[q] = _mm512_mask_add_epi8(w[q], (__mmask64)fifth_bits(blk, q), w[q], _mm512_set1_epi8(16));
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
/* 32 bits -> 32 bytes, byte i = bit i (0 or 1) */
static inline __m256i bytes_of_bits(uint32_t b) {
    const __m256i spread = _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                            2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ULL);
    const __m256i v = _mm256_and_si256(_mm256_shuffle_epi8(_mm256_set1_epi32((int)b), spread), bit);
    return _mm256_and_si256(_mm256_cmpeq_epi8(v, bit), _mm256_set1_epi8(1));
}

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
            for (int o = 0; o < (bits == 8 ? 8 : 4); o++) {
                const __m256i v = _mm256_loadu_si256((const __m256i *)(blk + o * 64 + h * 32));
                if (bits != 8) {
                    w[2 * o] = _mm256_and_si256(v, lo4);
                    w[2 * o + 1] = _mm256_and_si256(_mm256_srli_epi16(v, 4), lo4);
                } else {
                    w[o] = _mm256_and_si256(v, lo4);
                    hi[o] = _mm256_and_si256(_mm256_srli_epi16(v, 4), lo4);
                }
            }
            if (bits == 5) /* the fifth bits, as bytes of 0 or 1 weighing 16 */
                for (int q = 0; q < 8; q++) hi[q] = bytes_of_bits((uint32_t)(fifth_bits(blk, q) >> (32 * h)));
            const __m256 dv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(dt + g * R + 8 * h)));
            const __m256 mv = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(mt + g * R + 8 * h)));
            for (int i = 0; i < MC; i++) {
                const size_t row = (size_t)(m0 + i);
                const int32_t *x = (const int32_t *)(a->xq + row * a->K + g * G);
                __m256i s = dot_nibbles(w, x);
                if (bits != 4) s = _mm256_add_epi32(s, _mm256_slli_epi32(dot_nibbles(hi, x), 4));
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
    if (bits == 8) return b;
    const int q = high ? b >> 4 : b & 15;
    return bits == 4 ? q : q | (int)(fifth_bits(blk, kk / 4) >> (r * 4 + kk % 4) & 1) << 4;
}

/* y[M, N] = x[M, K] @ W^T + bias; x and y are float32 or bfloat16 (flags). K % 32 == 0. With glu,
 * x is [M, 2K] and the input is silu(x[:, :K]) * x[:, K:]. ZEN_ENOMEM when the quantized activations
 * do not fit in memory (y untouched). */
int zen_linear(const void *x, int x_bf16, int M, int K, int glu, const uint8_t *qs, const f16 *d, const f16 *mn,
               int bits, int N, const float *bias, void *y, int y_bf16) {
    const int ng = K / G, tiles = (N + R - 1) / R;
    int8_t *xq = malloc((size_t)M * K);
    float *dx = malloc(sizeof(float) * (size_t)M * ng), *sx = malloc(sizeof(float) * (size_t)M * ng);
    if (!xq || !dx || !sx) {
        free(xq); free(dx); free(sx);
        return ZEN_ENOMEM;
    }
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
    return ZEN_OK;
}

/* Float32 weights [N, K] -> tiled q, d, m (zero rows pad N up to whole tiles). Per group: the
 * min..max range on 2^bits - 1 steps; for 4 and 5 bits also a few shrunken ranges, keeping the one with
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
                const int tries = bits == 8 ? 1 : 12;
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
                        uint32_t both = (word[qd] & 0x0F0F0F0Fu) | (word[qd + 1] & 0x0F0F0F0Fu) << 4;
                        memcpy(blk + qd / 2 * 64, &both, 4);
                    }
                if (bits == 5) /* row r's fifth bits: 4 bits of each quad's mask (blk is at row r's bytes) */
                    for (int qd = 0; qd < 8; qd++) {
                        uint8_t *mb = blk - r * 4 + R * G / 2 + qd * 8 + r / 2, shift = (uint8_t)(r % 2 * 4), four = 0;
                        for (int j = 0; j < 4; j++) four |= (uint8_t)((best[qd * 4 + j] >> 4 & 1) << j);
                        *mb = (uint8_t)((*mb & ~(15 << shift)) | four << shift);
                    }
            }
        }
    }
}

/* Rows of a quantized [N, K] weight -> float32 [rows, K] (an embedding lookup); ZEN_ERANGE, with out
 * untouched, when a row is not in [0, N). */
int zen_dequant_rows(const uint8_t *qs, const f16 *d, const f16 *mn, int bits, int K, int N,
                     const int64_t *rows, int nrows, float *out) {
    const int ng = K / G;
    const size_t bb = block_bytes(bits);
    for (int i = 0; i < nrows; i++)
        if (rows[i] < 0 || rows[i] >= N) return ZEN_ERANGE;
    for (int i = 0; i < nrows; i++) {
        const int64_t t = rows[i] / R, r = rows[i] % R;
        for (int g = 0; g < ng; g++) {
            const uint8_t *blk = qs + ((size_t)t * ng + g) * bb;
            size_t at = ((size_t)t * ng + g) * R + r;
            for (int kk = 0; kk < G; kk++)
                out[(size_t)i * K + g * G + kk] = (float)d[at] * q_at(blk, bits, (int)r, kk) + (float)mn[at];
        }
    }
    return ZEN_OK;
}

