/* Row-wise kernels: RMSNorm and argmax (greedy sampling); and which instruction sets this build has. */
#include "common.h"

/* which code paths this build runs: the matmul's and, for a bfloat16 cache, the attention's */
const char *zen_isa(void) { return ZEN_VNNI ? (ZEN_BF16 ? "avx512-vnni+bf16" : "avx512-vnni") : ZEN_AVX2 ? "avx2" : "plain C"; }

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
