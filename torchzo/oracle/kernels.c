/* The oracle's native kernels, for torchzo.oracle.kernels: the passes of a Rademacher query
 * over packed signs, the Gaussian stream (further down), the largest magnitude of a tensor.
 *
 * A Rademacher direction is a packed sign stream: entry j is bit (j & 7) of byte (j >> 3), set meaning -1.
 * The kernels give the bits of the torch ops they replace, because every product they form is
 * +-alpha, exact: base + alpha * u and g + c * u round once, fused multiply-add or not, and a
 * sign flip (what the kernels do instead of multiplying by -1) is exact too.
 *
 * Whole bytes go a vector of 8 entries at a time: with AVX-512 a byte (two, for float) is the
 * mask that picks -v or +v; elsewhere (GCC/Clang vector extensions, lowered to whatever the
 * variant's target has) a byte indexes a table of 8 sign-bit masks, XORed into v. The ragged
 * head and tail of a stream, and short streams, go one entry at a time.
 *
 * One library holds every variant (x86: AVX-512, AVX2 and plain; elsewhere plain), each
 * function compiled for its instruction set through a target attribute, and picks the best one
 * the CPU runs when it is loaded, so that no build of it can stop on an illegal instruction.
 * The variants compute the same bits; zo_select() switches between them (for the tests).
 */
#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__FAST_MATH__)
#error "kernels.c promises torch's bits: compile it without -ffast-math"
#endif

#define EXPORT __attribute__((visibility("default")))
#define SIGNED(bits, j, v) ((((bits)[(j) >> 3] >> ((j) & 7)) & 1) ? -(v) : (v))
/* Terms of one accumulation at most (kernels.GROUP). */
#define MAX_TERMS 8
#define INLINE static inline __attribute__((always_inline))

#if defined(__x86_64__) || defined(__i386__)
#define ZO_X86 1
#include <immintrin.h>
#define TARGET_avx2 __attribute__((target("avx2,fma")))
#define TARGET_avx512 __attribute__((target("avx2,fma,avx512f")))
#endif
#define TARGET_plain

/* SplitMix64's output function (Steele, Lea and Flood, 2014). */
static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* words[i] = mix64(key + (i + 1) * golden) for i < n: a Rademacher direction's sign bits, a
 * pure function of the key and the word's index (directions.py gives the same in torch ops). */
#define DEFINE_SIGN_BITS(ISA)                                                                  \
    static TARGET_##ISA void sign_bits_##ISA(uint64_t *words, int64_t n, uint64_t key) {       \
        const uint64_t golden = 0x9e3779b97f4a7c15ULL;                                         \
        uint64_t state = key;                                                                  \
        for (int64_t i = 0; i < n; ++i) {                                                      \
            state += golden;                                                                   \
            words[i] = mix64(state);                                                           \
        }                                                                                      \
    }

/* The whole-byte part of a query for one float type: bytes [0, nb) of the streams (already
 * offset), entries [0, 8 nb) of out, base and g. Two versions of each: PERTURB writes
 * out = base + alpha u; ACCUMULATE adds the m terms c[q] u_q to g in order (from +0 with
 * fresh), m fixed at compile time through the always-inline body, so that the terms' loop
 * unrolls and g's rows are loaded and stored once for all of them. */
#if defined(ZO_X86)
/* float: 16 entries (two bytes) a vector; a trailing odd byte is left to the caller. */
TARGET_avx512 INLINE void perturb_f32_avx512(float *o, const float *x, const uint8_t *bits,
                                             float alpha, int64_t nb) {
    const __m512 pos = _mm512_set1_ps(alpha), neg = _mm512_set1_ps(-alpha);
    for (int64_t i = 0; i + 2 <= nb; i += 2) {
        uint16_t k;
        memcpy(&k, bits + i, 2);
        _mm512_storeu_ps(o + 8 * i, _mm512_add_ps(_mm512_loadu_ps(x + 8 * i),
                                                  _mm512_mask_blend_ps((__mmask16)k, pos, neg)));
    }
}
TARGET_avx512 INLINE void accumulate_f32_avx512(float *g, const uint8_t *const *t,
                                                const float *c, int m, int fresh, int64_t nb) {
    __m512 pos[MAX_TERMS], neg[MAX_TERMS];
    for (int q = 0; q < m; ++q) {
        pos[q] = _mm512_set1_ps(c[q]);
        neg[q] = _mm512_set1_ps(-c[q]);
    }
    for (int64_t i = 0; i + 2 <= nb; i += 2) {
        __m512 y = fresh ? _mm512_setzero_ps() : _mm512_loadu_ps(g + 8 * i);
        for (int q = 0; q < m; ++q) {
            uint16_t k;
            memcpy(&k, t[q] + i, 2);
            y = _mm512_add_ps(y, _mm512_mask_blend_ps((__mmask16)k, pos[q], neg[q]));
        }
        _mm512_storeu_ps(g + 8 * i, y);
    }
}
TARGET_avx512 INLINE void perturb_f64_avx512(double *o, const double *x, const uint8_t *bits,
                                             double alpha, int64_t nb) {
    const __m512d pos = _mm512_set1_pd(alpha), neg = _mm512_set1_pd(-alpha);
    for (int64_t i = 0; i < nb; ++i)
        _mm512_storeu_pd(o + 8 * i, _mm512_add_pd(_mm512_loadu_pd(x + 8 * i),
                                                  _mm512_mask_blend_pd(bits[i], pos, neg)));
}
TARGET_avx512 INLINE void accumulate_f64_avx512(double *g, const uint8_t *const *t,
                                                const double *c, int m, int fresh, int64_t nb) {
    __m512d pos[MAX_TERMS], neg[MAX_TERMS];
    for (int q = 0; q < m; ++q) {
        pos[q] = _mm512_set1_pd(c[q]);
        neg[q] = _mm512_set1_pd(-c[q]);
    }
    for (int64_t i = 0; i < nb; ++i) {
        __m512d y = fresh ? _mm512_setzero_pd() : _mm512_loadu_pd(g + 8 * i);
        for (int q = 0; q < m; ++q)
            y = _mm512_add_pd(y, _mm512_mask_blend_pd(t[q][i], pos[q], neg[q]));
        _mm512_storeu_pd(g + 8 * i, y);
    }
}
#endif

typedef float row_f32 __attribute__((vector_size(8 * sizeof(float))));
typedef uint32_t bits_f32 __attribute__((vector_size(8 * sizeof(float))));
typedef double row_f64 __attribute__((vector_size(8 * sizeof(double))));
typedef uint64_t bits_f64 __attribute__((vector_size(8 * sizeof(double))));

#define SIGN_TABLE(T, U, SUFFIX, ISA)                                                          \
    /* table[b]: the sign-bit masks of byte b's 8 entries; v[q]: 8 copies of x[q]'s bits. */   \
    static TARGET_##ISA void fill_##SUFFIX##_##ISA(bits_##SUFFIX *table, bits_##SUFFIX *v,     \
                                                   const T *x, int m) {                        \
        const U sign = (U)1 << (8 * sizeof(U) - 1);                                            \
        for (int b = 0; b < 256; ++b)                                                          \
            for (int k = 0; k < 8; ++k) table[b][k] = ((b >> k) & 1) ? sign : 0;               \
        for (int q = 0; q < m; ++q) {                                                          \
            U u;                                                                               \
            memcpy(&u, x + q, sizeof u);                                                       \
            for (int k = 0; k < 8; ++k) v[q][k] = u;                                           \
        }                                                                                      \
    }                                                                                          \
    TARGET_##ISA INLINE void perturb_##SUFFIX##_##ISA(T *o, const T *x, const uint8_t *bits,   \
                                                      T alpha, int64_t nb) {                   \
        bits_##SUFFIX table[256], a[1];                                                        \
        fill_##SUFFIX##_##ISA(table, a, &alpha, 1);                                            \
        for (int64_t i = 0; i < nb; ++i) {                                                     \
            row_##SUFFIX y, u;                                                                 \
            const bits_##SUFFIX s = a[0] ^ table[bits[i]];                                     \
            memcpy(&u, &s, sizeof u);                                                          \
            memcpy(&y, x + 8 * i, sizeof y);                                                   \
            y += u;                                                                            \
            memcpy(o + 8 * i, &y, sizeof y);                                                   \
        }                                                                                      \
    }                                                                                          \
    TARGET_##ISA INLINE void accumulate_##SUFFIX##_##ISA(T *g, const uint8_t *const *t,        \
                                                         const T *c, int m, int fresh,         \
                                                         int64_t nb) {                         \
        bits_##SUFFIX table[256], cs[MAX_TERMS];                                               \
        fill_##SUFFIX##_##ISA(table, cs, c, m);                                                \
        for (int64_t i = 0; i < nb; ++i) {                                                     \
            row_##SUFFIX y = {0}, u;                                                           \
            if (!fresh) memcpy(&y, g + 8 * i, sizeof y);                                       \
            for (int q = 0; q < m; ++q) {                                                      \
                const bits_##SUFFIX s = cs[q] ^ table[t[q][i]];                                \
                memcpy(&u, &s, sizeof u);                                                      \
                y += u;                                                                        \
            }                                                                                  \
            memcpy(g + 8 * i, &y, sizeof y);                                                   \
        }                                                                                      \
    }

/* STEP: whole bytes a vector of the variant takes; VEC_MIN: whole bytes from which its vectors
 * pay (the sign table costs a fill, so fewer go one entry at a time). */
#define DEFINE_QUERY(T, SUFFIX, ISA, STEP, VEC_MIN)                                            \
    static TARGET_##ISA void accumulate_any_##SUFFIX##_##ISA(                                  \
        T *g, const uint8_t *const *t, const T *c, int m, int fresh, int64_t nb) {             \
        switch (m) { /* one unrolled loop per number of terms */                               \
        case 1: accumulate_##SUFFIX##_##ISA(g, t, c, 1, fresh, nb); break;                     \
        case 2: accumulate_##SUFFIX##_##ISA(g, t, c, 2, fresh, nb); break;                     \
        case 3: accumulate_##SUFFIX##_##ISA(g, t, c, 3, fresh, nb); break;                     \
        case 4: accumulate_##SUFFIX##_##ISA(g, t, c, 4, fresh, nb); break;                     \
        case 5: accumulate_##SUFFIX##_##ISA(g, t, c, 5, fresh, nb); break;                     \
        case 6: accumulate_##SUFFIX##_##ISA(g, t, c, 6, fresh, nb); break;                     \
        case 7: accumulate_##SUFFIX##_##ISA(g, t, c, 7, fresh, nb); break;                     \
        default: accumulate_##SUFFIX##_##ISA(g, t, c, MAX_TERMS, fresh, nb); break;            \
        }                                                                                      \
    }                                                                                          \
                                                                                               \
    /* Entries offset to offset + n of the passes of queries: out = base + alpha * u, where    \
     * out is not NULL; and g += c[0] u_0, then c[1] u_1, ... in order, for the m terms (at    \
     * most MAX_TERMS; with init, g starts from +0, its contents unread). g is read and written \
     * once for all the terms. */                                                              \
    static TARGET_##ISA void sign_query_##SUFFIX##_##ISA(                                      \
        T *restrict out, const T *restrict base, const uint8_t *bits, double alpha_in,         \
        T *restrict g, const uint8_t *const *terms, const double *c_in, int m, int init,       \
        int64_t offset, int64_t n) {                                                           \
        const T alpha = (T)alpha_in;                                                           \
        T c[MAX_TERMS];                                                                        \
        for (int q = 0; q < m; ++q) c[q] = (T)c_in[q];                                         \
        if (g && init && m == 0)                                                               \
            for (int64_t j = 0; j < n; ++j) g[j] = 0;                                          \
        const int64_t head = n < ((8 - (offset & 7)) & 7) ? n : ((8 - (offset & 7)) & 7);      \
        /* whole bytes for the vectors, a multiple of STEP */                                  \
        const int64_t whole = (n - head) >> 3;                                                 \
        const int64_t vec = whole >= (VEC_MIN) ? whole - whole % (STEP) : 0;                   \
        for (int64_t j = 0; j < n; ++j) {                                                      \
            if (j == head && vec) j += 8 * vec; /* the vectors' entries: below */              \
            if (j >= n) break;                                                                 \
            if (out) out[j] = base[j] + SIGNED(bits, offset + j, alpha);                       \
            if (m) {                                                                           \
                T x = init ? 0 : g[j];                                                         \
                for (int q = 0; q < m; ++q) x += SIGNED(terms[q], offset + j, c[q]);           \
                g[j] = x;                                                                      \
            }                                                                                  \
        }                                                                                      \
        if (!vec) return;                                                                      \
        const int64_t first = (offset + head) >> 3;                                            \
        if (out) perturb_##SUFFIX##_##ISA(out + head, base + head, bits + first, alpha, vec);  \
        if (m) {                                                                               \
            const uint8_t *t[MAX_TERMS];                                                       \
            for (int q = 0; q < m; ++q) t[q] = terms[q] + first;                               \
            accumulate_any_##SUFFIX##_##ISA(g + head, t, c, m, init, vec);                     \
        }                                                                                      \
    }

/* ---- Gaussian directions: a counter-based stream (torchzo/oracle/directions/counter.py
 * defines it in torch ops and says how it works; the two give the same bits). Entry i of a
 * direction depends on its key and i alone, so that any piece can be drawn by itself. Only
 * IEEE float multiply, add, subtract and square root, each rounded once (-ffp-contract=off,
 * and -fno-math-errno so that sqrtf is the instruction). */
typedef struct { uint32_t ka1, kb1, ka2, kb2; } gauss_keys;

static gauss_keys gauss_keys_for(uint64_t key, uint32_t high) {
    const uint64_t a = mix64(key ^ ((uint64_t)high << 32) ^ 0x243F6A8885A308D3ULL);
    const uint64_t b = mix64(a ^ 0x13198A2E03707344ULL);
    gauss_keys k = {(uint32_t)a, (uint32_t)(a >> 32), (uint32_t)b, (uint32_t)(b >> 32)};
    return k;
}

INLINE uint32_t gauss_hash(uint32_t x, uint32_t kb) {
    x ^= x >> 16;
    x *= 0x7feb352du;
    x ^= kb;
    x ^= x >> 15;
    x *= 0x846ca68bu;
    return x ^ (x >> 16);
}

INLINE float as_float(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
INLINE uint32_t as_bits(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }

/* Highest degree first: -2 ln's polynomial in the mantissa (times -2 below), sine's and
 * cosine's in y^2. */
static const float GAUSS_LOG[7] = {-1.003461704e-01f, 1.633564681e-01f, -1.732599586e-01f,
                                   1.988827735e-01f, -2.496146560e-01f, 3.333526254e-01f,
                                   -5.000058413e-01f};
static const float GAUSS_SIN[3] = {-1.949563593e-04f, 8.331978694e-03f, -1.666665077e-01f};
static const float GAUSS_COS[2] = {-1.365244971e-03f, 4.166127741e-02f};

/* The pair of normals of counter j: the cosine's in *c, the sine's in *s. */
INLINE void gauss_pair(uint32_t j, gauss_keys k, float *c, float *s) {
    const uint32_t w1 = gauss_hash(j + k.ka1, k.kb1), w2 = gauss_hash(j + k.ka2, k.kb2);
    const int32_t v = (int32_t)(as_bits((float)(int32_t)((w1 >> 8) + 1u))
                                - (0x3f3504f3u + (24u << 23)));
    const float e = (float)(v >> 23);
    const float f = as_float(((uint32_t)v & 0x7fffffu) + 0x3f3504f3u) - 1.0f;
    float p = -2.0f * GAUSS_LOG[0];
    for (int i = 1; i < 7; ++i) p = p * f + -2.0f * GAUSS_LOG[i];
    p = p * f + -2.0f;
    const float r = __builtin_sqrtf(e * (-2.0f * 0.6931472f) + f * p);
    const float y = (float)(int32_t)(w2 << 2) * 3.6572863e-10f;
    const float y2 = y * y;
    float ps = GAUSS_SIN[0], pc = GAUSS_COS[0];
    for (int i = 1; i < 3; ++i) ps = ps * y2 + GAUSS_SIN[i];
    pc = pc * y2 + GAUSS_COS[1];
    const float sn = y + (y * y2) * ps;
    const float cs = (1.0f - 0.5f * y2) + (y2 * y2) * pc;
    /* The quadrant: odd ones swap the two and negate the sine; bit 31 negates both. Selected
     * by masks rather than branches, so that every target vectorises it. */
    const uint32_t odd = 0u - ((w2 >> 30) & 1u), sign = w2 & 0x80000000u;
    const uint32_t sb = as_bits(sn), cb = as_bits(cs);
    *c = r * as_float((((sb ^ 0x80000000u) & odd) | (cb & ~odd)) ^ sign);
    *s = r * as_float(((cb & odd) | (sb & ~odd)) ^ sign);
}

/* The entries of BLOCKS blocks of 32 from block j0 / 16 on (pairs j0 to j0 + 16 BLOCKS - 1),
 * each block its 16 cosines, then its 16 sines. Several blocks a call keep several vectors'
 * independent chains in flight (one alone waits on its own latency). */
#define GAUSS_BLOCKS 4
INLINE void gauss_blocks(uint32_t j0, gauss_keys k, float *restrict o) {
    float c[16 * GAUSS_BLOCKS], s[16 * GAUSS_BLOCKS];
    for (int l = 0; l < 16 * GAUSS_BLOCKS; ++l) gauss_pair(j0 + (uint32_t)l, k, c + l, s + l);
    for (int b = 0; b < GAUSS_BLOCKS; ++b) {
        memcpy(o + 32 * b, c + 16 * b, 16 * sizeof(float));
        memcpy(o + 32 * b + 16, s + 16 * b, 16 * sizeof(float));
    }
}

/* out[0..n) = entries start to start + n of the direction of key: GAUSS_BLOCKS blocks at a
 * time, the ragged ends through a buffer. The pair counter's high 32 bits pick the keys. */
#define DEFINE_GAUSS(ISA)                                                                      \
    static TARGET_##ISA void gauss_fill_any_##ISA(float *out, int64_t start, int64_t n,      \
                                                  uint64_t key) {                              \
        const int64_t span = 32 * GAUSS_BLOCKS, end = start + n;                               \
        int64_t b = start / span;                                                              \
        uint32_t high = (uint32_t)(((uint64_t)b * span / 2) >> 32);                            \
        gauss_keys k = gauss_keys_for(key, high);                                              \
        float tmp[32 * GAUSS_BLOCKS];                                                          \
        while (start < end) {                                                                  \
            const uint64_t j0 = (uint64_t)b * span / 2;                                        \
            if ((uint32_t)(j0 >> 32) != high) {                                                \
                high = (uint32_t)(j0 >> 32);                                                   \
                k = gauss_keys_for(key, high);                                                 \
            }                                                                                  \
            const int64_t skip = start - span * b;                                             \
            const int64_t take = end - start < span - skip ? end - start : span - skip;        \
            if (take == span) {                                                                \
                gauss_blocks((uint32_t)j0, k, out);                                            \
            } else {                                                                           \
                gauss_blocks((uint32_t)j0, k, tmp);                                            \
                memcpy(out, tmp + skip, (size_t)take * sizeof(float));                         \
            }                                                                                  \
            out += take;                                                                       \
            start += take;                                                                     \
            ++b;                                                                               \
        }                                                                                      \
    }

/* The largest magnitude among x[0..n) as IEEE bits, the sign cleared: the bit patterns of
 * non-negative floats sort as their values, and NaN's above infinity's, so that one read pass,
 * integer compares only, gives max |x| exactly and whether every entry is finite. (For the
 * step guard's checks: torch's aminmax costs several passes' time.) */
#define DEFINE_ABS_MAX(U, SUFFIX, MAGNITUDE, ISA)                                              \
    static TARGET_##ISA U abs_max_##SUFFIX##_##ISA(const U *x, int64_t n) {                    \
        U best = 0;                                                                            \
        for (int64_t i = 0; i < n; ++i) {                                                      \
            const U v = x[i] & (MAGNITUDE);                                                    \
            best = v > best ? v : best;                                                        \
        }                                                                                      \
        return best;                                                                           \
    }

#define DEFINE_VARIANT(ISA, F32_STEP, F64_STEP, VEC_MIN)                                       \
    DEFINE_SIGN_BITS(ISA)                                                                      \
    DEFINE_GAUSS(ISA)                                                                          \
    DEFINE_QUERY(float, f32, ISA, F32_STEP, VEC_MIN)                                           \
    DEFINE_QUERY(double, f64, ISA, F64_STEP, VEC_MIN)                                          \
    DEFINE_ABS_MAX(uint32_t, f32, 0x7fffffffu, ISA)                                            \
    DEFINE_ABS_MAX(uint64_t, f64, 0x7fffffffffffffffull, ISA)

SIGN_TABLE(float, uint32_t, f32, plain)
SIGN_TABLE(double, uint64_t, f64, plain)
DEFINE_VARIANT(plain, 1, 1, 64)
static int supports_plain(void) { return 1; }
#if defined(ZO_X86)
SIGN_TABLE(float, uint32_t, f32, avx2)
SIGN_TABLE(double, uint64_t, f64, avx2)
DEFINE_VARIANT(avx2, 1, 1, 64)
DEFINE_VARIANT(avx512, 2, 1, 1)
/* __builtin_cpu_supports also asks whether the OS saves the registers (XGETBV). */
static int supports_avx2(void) {
    return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
}
static int supports_avx512(void) {
    return supports_avx2() && __builtin_cpu_supports("avx512f");
}
#endif

#if defined(ZO_X86)
/* AVX-512: GAUSS_FAST blocks of 32 entries in flight at once (one alone waits on its own
 * chains of ~100 cycles), written with intrinsics, the same operations in the same order as
 * gauss_pair: groups of 32 GAUSS_FAST entries from entry start (a multiple of that) on, all
 * under the keys k (within one segment of 2^33 entries). */
#define GAUSS_FAST 8
#define FOR_FAST for (int u = 0; u < GAUSS_FAST; ++u)
TARGET_avx512 static void gauss_groups_avx512(float *out, int64_t start, int64_t groups,
                                              gauss_keys k) {
    const uint32_t j0 = (uint32_t)((uint64_t)start / 2);
    const __m512i lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    const __m512i step = _mm512_set1_epi32(16 * GAUSS_FAST);
    const __m512i m1 = _mm512_set1_epi32(0x7feb352d), m2 = _mm512_set1_epi32((int)0x846ca68bu);
    /* x ^= kb; x ^= x >> 15 is x ^ (x >> 15) ^ (kb ^ (kb >> 15)): one ternary-logic XOR */
    const __m512i kb1 = _mm512_set1_epi32((int)(k.kb1 ^ (k.kb1 >> 15)));
    const __m512i kb2 = _mm512_set1_epi32((int)(k.kb2 ^ (k.kb2 >> 15)));
    const __m512i one = _mm512_set1_epi32(1), mant = _mm512_set1_epi32(0x7fffff);
    const __m512i ofs = _mm512_set1_epi32((int)(0x3f3504f3u + (24u << 23)));
    const __m512i mofs = _mm512_set1_epi32(0x3f3504f3);
    const __m512i sgn = _mm512_set1_epi32((int)0x80000000u), bit30 = _mm512_set1_epi32(1 << 30);
    __m512 lc[7], sc[3], cc[2];
    for (int i = 0; i < 7; ++i) lc[i] = _mm512_set1_ps(-2.0f * GAUSS_LOG[i]);
    for (int i = 0; i < 3; ++i) sc[i] = _mm512_set1_ps(GAUSS_SIN[i]);
    for (int i = 0; i < 2; ++i) cc[i] = _mm512_set1_ps(GAUSS_COS[i]);
    const __m512 m2f = _mm512_set1_ps(-2.0f), l2 = _mm512_set1_ps(-2.0f * 0.6931472f);
    const __m512 onef = _mm512_set1_ps(1.0f), half = _mm512_set1_ps(0.5f);
    const __m512 ys = _mm512_set1_ps(3.6572863e-10f);
    __m512i x1[GAUSS_FAST], x2[GAUSS_FAST];
    FOR_FAST {
        x1[u] = _mm512_add_epi32(lane, _mm512_set1_epi32((int)(j0 + 16u * u + k.ka1)));
        x2[u] = _mm512_add_epi32(lane, _mm512_set1_epi32((int)(j0 + 16u * u + k.ka2)));
    }
    for (int64_t g = 0; g < groups; ++g) {
        __m512i t[GAUSS_FAST], w[GAUSS_FAST], v[GAUSS_FAST];
        FOR_FAST t[u] = _mm512_xor_si512(x1[u], _mm512_srli_epi32(x1[u], 16));
        FOR_FAST w[u] = _mm512_xor_si512(x2[u], _mm512_srli_epi32(x2[u], 16));
        FOR_FAST {
            x1[u] = _mm512_add_epi32(x1[u], step);
            x2[u] = _mm512_add_epi32(x2[u], step);
        }
        FOR_FAST t[u] = _mm512_mullo_epi32(t[u], m1);
        FOR_FAST w[u] = _mm512_mullo_epi32(w[u], m1);
        FOR_FAST t[u] = _mm512_ternarylogic_epi32(t[u], _mm512_srli_epi32(t[u], 15), kb1, 0x96);
        FOR_FAST w[u] = _mm512_ternarylogic_epi32(w[u], _mm512_srli_epi32(w[u], 15), kb2, 0x96);
        FOR_FAST t[u] = _mm512_mullo_epi32(t[u], m2);
        FOR_FAST w[u] = _mm512_mullo_epi32(w[u], m2);
        FOR_FAST t[u] = _mm512_xor_si512(t[u], _mm512_srli_epi32(t[u], 16));
        FOR_FAST w[u] = _mm512_xor_si512(w[u], _mm512_srli_epi32(w[u], 16));
        FOR_FAST v[u] = _mm512_sub_epi32(_mm512_castps_si512(_mm512_cvtepi32_ps(
                            _mm512_add_epi32(_mm512_srli_epi32(t[u], 8), one))), ofs);
        __m512 f[GAUSS_FAST], e[GAUSS_FAST], p[GAUSS_FAST], r[GAUSS_FAST];
        FOR_FAST f[u] = _mm512_sub_ps(_mm512_castsi512_ps(
                            _mm512_add_epi32(_mm512_and_si512(v[u], mant), mofs)), onef);
        FOR_FAST e[u] = _mm512_cvtepi32_ps(_mm512_srai_epi32(v[u], 23));
        FOR_FAST p[u] = lc[0];
        for (int i = 1; i < 7; ++i)
            FOR_FAST p[u] = _mm512_add_ps(_mm512_mul_ps(p[u], f[u]), lc[i]);
        FOR_FAST p[u] = _mm512_add_ps(_mm512_mul_ps(p[u], f[u]), m2f);
        FOR_FAST r[u] = _mm512_sqrt_ps(_mm512_add_ps(_mm512_mul_ps(e[u], l2),
                                                     _mm512_mul_ps(f[u], p[u])));
        __m512 y[GAUSS_FAST], y2[GAUSS_FAST], ps[GAUSS_FAST], pc[GAUSS_FAST];
        FOR_FAST y[u] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_slli_epi32(w[u], 2)), ys);
        FOR_FAST y2[u] = _mm512_mul_ps(y[u], y[u]);
        FOR_FAST {
            ps[u] = sc[0];
            pc[u] = cc[0];
        }
        for (int i = 1; i < 3; ++i)
            FOR_FAST ps[u] = _mm512_add_ps(_mm512_mul_ps(ps[u], y2[u]), sc[i]);
        FOR_FAST pc[u] = _mm512_add_ps(_mm512_mul_ps(pc[u], y2[u]), cc[1]);
        FOR_FAST {
            const __m512 sn =
                _mm512_add_ps(y[u], _mm512_mul_ps(_mm512_mul_ps(y[u], y2[u]), ps[u]));
            const __m512 cs = _mm512_add_ps(_mm512_sub_ps(onef, _mm512_mul_ps(half, y2[u])),
                                            _mm512_mul_ps(_mm512_mul_ps(y2[u], y2[u]), pc[u]));
            const __mmask16 odd = _mm512_test_epi32_mask(w[u], bit30);
            const __m512 a0 = _mm512_mask_blend_ps(odd, cs, sn);
            const __m512 a1 = _mm512_mask_blend_ps(odd, sn, cs);
            /* the cosine's sign: bit 31 xor bit 30 (the odd quadrant's -sin); the sine's: 31 */
            const __m512i s0 = _mm512_ternarylogic_epi32(w[u], _mm512_slli_epi32(w[u], 1), sgn,
                                                         0x28);
            const __m512i s1 = _mm512_and_si512(w[u], sgn);
            float *o = out + 32 * (g * GAUSS_FAST + u);
            _mm512_storeu_ps(o, _mm512_mul_ps(r[u], _mm512_castsi512_ps(
                                    _mm512_xor_si512(_mm512_castps_si512(a0), s0))));
            _mm512_storeu_ps(o + 16, _mm512_mul_ps(r[u], _mm512_castsi512_ps(
                                         _mm512_xor_si512(_mm512_castps_si512(a1), s1))));
        }
    }
}

/* gauss_fill for AVX-512: the fast groups where whole ones fit, the generic loop around them. */
TARGET_avx512 static void gauss_fill_avx512(float *out, int64_t start, int64_t n, uint64_t key) {
    const int64_t group = 32 * GAUSS_FAST, segment = (int64_t)1 << 33;
    int64_t head = (group - start % group) % group;
    head = head < n ? head : n;
    gauss_fill_any_avx512(out, start, head, key);
    out += head, start += head, n -= head;
    while (n >= group) {
        const int64_t left = (start / segment + 1) * segment - start;
        const int64_t groups = (n < left ? n : left) / group;
        gauss_groups_avx512(out, start, groups,
                            gauss_keys_for(key, (uint32_t)(((uint64_t)start / 2) >> 32)));
        out += groups * group, start += groups * group, n -= groups * group;
    }
    gauss_fill_any_avx512(out, start, n, key);
}
#define gauss_fill_avx2 gauss_fill_any_avx2
#endif
#define gauss_fill_plain gauss_fill_any_plain


/* out = alpha * u + (init ? 0 : out) for u entries start to start + n of the direction of key,
 * drawn a tile at a time into the L1 cache, so that the direction never reaches memory. One
 * rounding, a fused multiply-add (as torch's add_ with alpha rounds where the CPU has FMA:
 * zero_ then add_ for init), so that in-place moves and rebuilt estimates have the bits of
 * drawing the direction and adding it with torch. Tiles end at multiples of GAUSS_TILE entries
 * of the stream, which keeps the fast groups whole. */
#define GAUSS_TILE 2048
#define DEFINE_GAUSS_AXPY(ISA)                                                                 \
    static TARGET_##ISA void gauss_axpy_##ISA(float *out, int64_t start, int64_t n,            \
                                              uint64_t key, float alpha, int init) {           \
        float tile[GAUSS_TILE];                                                                \
        while (n > 0) {                                                                        \
            const int64_t edge = (start / GAUSS_TILE + 1) * GAUSS_TILE - start;                \
            const int64_t m = edge < n ? edge : n;                                             \
            gauss_fill_##ISA(tile, start, m, key);                                             \
            if (init)                                                                          \
                for (int64_t j = 0; j < m; ++j) out[j] = fmaf(alpha, tile[j], 0.0f);           \
            else                                                                               \
                for (int64_t j = 0; j < m; ++j) out[j] = fmaf(alpha, tile[j], out[j]);         \
            out += m, start += m, n -= m;                                                      \
        }                                                                                      \
    }

DEFINE_GAUSS_AXPY(plain)
#if defined(ZO_X86)
DEFINE_GAUSS_AXPY(avx2)
DEFINE_GAUSS_AXPY(avx512)
#endif

typedef struct {
    const char *name;
    int (*supported)(void);
    void (*sign_bits)(uint64_t *, int64_t, uint64_t);
    void (*query_f32)(float *restrict, const float *restrict, const uint8_t *, double,
                      float *restrict, const uint8_t *const *, const double *, int, int,
                      int64_t, int64_t);
    void (*query_f64)(double *restrict, const double *restrict, const uint8_t *, double,
                      double *restrict, const uint8_t *const *, const double *, int, int,
                      int64_t, int64_t);
    uint32_t (*abs_max_f32)(const uint32_t *, int64_t);
    uint64_t (*abs_max_f64)(const uint64_t *, int64_t);
    void (*gauss_fill)(float *, int64_t, int64_t, uint64_t);
    void (*gauss_axpy)(float *, int64_t, int64_t, uint64_t, float, int);
} variant_t;

#define VARIANT(ISA)                                                                           \
    {#ISA, supports_##ISA, sign_bits_##ISA, sign_query_f32_##ISA, sign_query_f64_##ISA,        \
     abs_max_f32_##ISA, abs_max_f64_##ISA, gauss_fill_##ISA, gauss_axpy_##ISA}
/* Best last. */
static const variant_t VARIANTS[] = {
    VARIANT(plain),
#if defined(ZO_X86)
    VARIANT(avx2),
    VARIANT(avx512),
#endif
};
#define N_VARIANTS ((int)(sizeof VARIANTS / sizeof VARIANTS[0]))
static const variant_t *active = VARIANTS;

/* The name of variant v (0: plain, then better ones), NULL past the last. */
EXPORT const char *zo_variant_name(int v) {
    return v >= 0 && v < N_VARIANTS ? VARIANTS[v].name : NULL;
}

/* Whether this CPU (and OS) runs variant v. */
EXPORT int zo_variant_supported(int v) {
#if defined(ZO_X86)
    __builtin_cpu_init(); /* may run before libgcc's own constructor */
#endif
    return v >= 0 && v < N_VARIANTS && VARIANTS[v].supported();
}

/* Use variant v from now on (v < 0: the best this CPU runs); returns v, or -1 (and changes
 * nothing) for a variant this CPU cannot run. */
EXPORT int zo_select(int v) {
    if (v < 0)
        for (v = N_VARIANTS - 1; v > 0 && !zo_variant_supported(v);) --v;
    if (!zo_variant_supported(v)) return -1;
    active = VARIANTS + v;
    return v;
}

/* The variant in use. */
EXPORT int zo_variant(void) { return (int)(active - VARIANTS); }

__attribute__((constructor)) static void choose_variant(void) { zo_select(-1); }

EXPORT void zo_sign_bits(uint64_t *words, int64_t n, uint64_t key) {
    active->sign_bits(words, n, key);
}

EXPORT void zo_sign_query_f32(float *restrict out, const float *restrict base,
                              const uint8_t *bits, double alpha, float *restrict g,
                              const uint8_t *const *terms, const double *c, int m, int init,
                              int64_t offset, int64_t n) {
    active->query_f32(out, base, bits, alpha, g, terms, c, m, init, offset, n);
}

EXPORT void zo_sign_query_f64(double *restrict out, const double *restrict base,
                              const uint8_t *bits, double alpha, double *restrict g,
                              const uint8_t *const *terms, const double *c, int m, int init,
                              int64_t offset, int64_t n) {
    active->query_f64(out, base, bits, alpha, g, terms, c, m, init, offset, n);
}

EXPORT uint32_t zo_abs_max_f32(const uint32_t *x, int64_t n) { return active->abs_max_f32(x, n); }

EXPORT uint64_t zo_abs_max_f64(const uint64_t *x, int64_t n) { return active->abs_max_f64(x, n); }

EXPORT void zo_gauss_fill(float *out, int64_t start, int64_t n, uint64_t key) {
    active->gauss_fill(out, start, n, key);
}

EXPORT void zo_gauss_axpy(float *out, int64_t start, int64_t n, uint64_t key, float alpha,
                          int init) {
    active->gauss_axpy(out, start, n, key, alpha, init);
}
