/* What every kernel file shares: the instruction sets this build targets (ZEN_VNNI: AVX-512 with
 * VNNI, ZEN_BF16: plus AVX512-BF16, ZEN_AVX2: AVX2 with FMA and F16C; none of them: plain C), the
 * number formats (fp16, bfloat16), the error codes and a vector exp. */
#ifndef ZEN_COMMON_H
#define ZEN_COMMON_H
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

typedef _Float16 f16;

/* What an entry point that can fail returns (the Python wrappers in ops.py turn them into exceptions) */
enum { ZEN_OK = 0, ZEN_ENOMEM = 1, ZEN_ERANGE = 2 };

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

/* exp(x) in plain arithmetic the compiler can vectorise (no libm call): 2^t = 2^round(t) * 2^f with
 * f in [-0.5, 0.5] on a degree-6 polynomial; |t| is clamped to 126, so it never overflows. */
static inline float exp_poly(float x) {
    float t = x * 1.4426950409f;
    t = t < -126.f ? -126.f : t > 126.f ? 126.f : t;
    const float r = __builtin_roundevenf(t), f = t - r;
    float y = 1.5403530e-4f;
    y = y * f + 1.3333558e-3f;
    y = y * f + 9.6181291e-3f;
    y = y * f + 5.5504109e-2f;
    y = y * f + 2.4022650e-1f;
    y = y * f + 6.9314718e-1f;
    y = y * f + 1.f;
    const uint32_t e = (uint32_t)((int32_t)r + 127) << 23; /* 2^r as a float's bits */
    float scale;
    memcpy(&scale, &e, 4);
    return y * scale;
}

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
#endif
