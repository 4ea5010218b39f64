/* A counter-based Gaussian generator, prototyped to measure what a generator of our own
   would cost against torch's randn (research/gaussian_generator.py). Not used by the package.

   Entry i of gauss_fill(out, n, key) depends on (key, i) alone. Pairs of normals by Box-Muller:
   two 32-bit hashes of the pair's counter (two multiply-xorshift rounds, keyed), u = (w1 >> 8 + 1)
   2^-24 in (0, 1], r = sqrt(-2 ln u) from a float32 log polynomial (near-minimax, degree 6 in
   the mantissa, relative error 4.6e-7), the angle from w2 as a quadrant and y in [-pi/4, pi/4]
   with sin (degree 2 in y^2) and cos (degree 1) polynomials. A block of 16 pairs writes its 32
   numbers as out[32b + l] = r cos, out[32b + 16 + l] = r sin. Only IEEE mul, add, sub and sqrt,
   compiled with -ffp-contract=off: the AVX-512 path and the plain-C gauss_fill_ref give the
   same bits (checked by the benchmark). Eight blocks are kept in flight in the AVX-512 loop:
   one at a time, the loop waits on its own ~100-cycle dependency chain. */
#include <stdint.h>
#include <string.h>
#ifdef __AVX512F__
#include <immintrin.h>
#endif

#define LOGDEG 6
#define SINDEG 2
#define COSDEG 1
#define U 8
/* highest degree first */
static const float LOGC[7] = {-1.003461704e-01f, 1.633564681e-01f, -1.732599586e-01f, 1.988827735e-01f, -2.496146560e-01f, 3.333526254e-01f, -5.000058413e-01f};
static const float COSC[2] = {-1.365244971e-03f, 4.166127741e-02f};
static const float SINC[3] = {-1.949563593e-04f, 8.331978694e-03f, -1.666665077e-01f};
static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}
static inline uint32_t h32(uint32_t x, uint32_t kb) {
    x ^= x >> 16; x *= 0x7feb352du; x ^= kb;
    x ^= x >> 15; x *= 0x846ca68bu; x ^= x >> 16;
    return x;
}
static inline float asf(uint32_t u) { float f; memcpy(&f, &u, 4); return f; }
static inline uint32_t asu(float f) { uint32_t u; memcpy(&u, &f, 4); return u; }
/* returns -2 ln(u) for u = (k+1) 2^-24 given ki = k+1 as integer */
static inline float m2ln_(uint32_t ki) {
    int32_t v = (int32_t)(asu((float)(int32_t)ki) - (0x3f3504f3u + (24u << 23)));
    float e = (float)(v >> 23);
    float f = asf(((uint32_t)v & 0x7fffffu) + 0x3f3504f3u) - 1.0f;
    float p = -2.0f * LOGC[0];
    for (int i = 1; i <= LOGDEG; i++) p = p * f + -2.0f * LOGC[i];
    p = p * f + -2.0f;
    return e * (-2.0f * 0.6931472f) + f * p;
}
static inline void sc_(float y, float* s, float* c) {
    float y2 = y * y;
    float ps = SINC[0], pc = COSC[0];
    for (int i = 1; i <= SINDEG; i++) ps = ps * y2 + SINC[i];
    for (int i = 1; i <= COSDEG; i++) pc = pc * y2 + COSC[i];
    *s = y + (y * y2) * ps;
    *c = (1.0f - 0.5f * y2) + (y2 * y2) * pc;
}
typedef struct { uint32_t ka1, kb1, ka2, kb2; } keys_t;
static keys_t mkkeys(uint64_t key, uint32_t hi) {
    uint64_t a = mix64(key ^ ((uint64_t)hi << 32) ^ 0x243F6A8885A308D3ULL), b = mix64(a ^ 0x13198A2E03707344ULL);
    keys_t k = { (uint32_t)a, (uint32_t)(a >> 32), (uint32_t)b, (uint32_t)(b >> 32) };
    return k;
}
static void block16(uint32_t j0, keys_t k, float* restrict o) {
    for (int l = 0; l < 16; l++) {
        uint32_t j = j0 + (uint32_t)l;
        uint32_t w1 = h32(j + k.ka1, k.kb1), w2 = h32(j + k.ka2, k.kb2);
        float r = __builtin_sqrtf(m2ln_((w1 >> 8) + 1u));
        float y = (float)(int32_t)(w2 << 2) * 3.6572863e-10f;
        float s, c; sc_(y, &s, &c);
        uint32_t odd = (w2 >> 30) & 1u, sg = w2 & 0x80000000u;
        float a0 = odd ? -s : c, a1 = odd ? c : s;
        o[l] = r * asf(asu(a0) ^ sg); o[16 + l] = r * asf(asu(a1) ^ sg);
    }
}
static void ref_range(float* out, int64_t b0, int64_t n, uint64_t key) {  /* blocks from b0 on, plain C */
    int64_t nbl = n / 32;
    for (int64_t bb = b0; bb < nbl; bb++) { uint64_t j0 = (uint64_t)bb * 16; block16((uint32_t)j0, mkkeys(key, (uint32_t)(j0 >> 32)), out + 32 * bb); }
    if (n % 32) {
        uint64_t j0 = (uint64_t)nbl * 16; float tmp[32];
        block16((uint32_t)j0, mkkeys(key, (uint32_t)(j0 >> 32)), tmp);
        memcpy(out + 32 * nbl, tmp, (size_t)(n % 32) * 4);
    }
}
void gauss_fill_ref(float* restrict out, int64_t n, uint64_t key) { ref_range(out, 0, n, key); }
#ifdef __AVX512F__
#define FOR for (int u = 0; u < U; u++)
void gauss_fill(float* restrict out, int64_t n, uint64_t key) {
    keys_t k = mkkeys(key, 0);
    const __m512i lane = _mm512_setr_epi32(0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15), STEP = _mm512_set1_epi32(16 * U);
    const __m512i M1 = _mm512_set1_epi32(0x7feb352d), M2 = _mm512_set1_epi32((int)0x846ca68bu);
    const __m512i KB1 = _mm512_set1_epi32((int)(k.kb1 ^ (k.kb1 >> 15))), KB2 = _mm512_set1_epi32((int)(k.kb2 ^ (k.kb2 >> 15)));
    const __m512i ONE = _mm512_set1_epi32(1), OFS = _mm512_set1_epi32((int)(0x3f3504f3u + (24u << 23))),
                  MM = _mm512_set1_epi32(0x7fffff), MOFS = _mm512_set1_epi32(0x3f3504f3), SG = _mm512_set1_epi32((int)0x80000000u),
                  B30 = _mm512_set1_epi32(1 << 30);
    __m512 LC[LOGDEG + 1];
    for (int i = 0; i <= LOGDEG; i++) LC[i] = _mm512_set1_ps(-2.0f * LOGC[i]);
    const __m512 M2F = _mm512_set1_ps(-2.0f), L2 = _mm512_set1_ps(-2.0f * 0.6931472f), ONEF = _mm512_set1_ps(1.0f),
                 HALF = _mm512_set1_ps(0.5f), YS = _mm512_set1_ps(3.6572863e-10f);
    __m512 SC[SINDEG + 1], CC[COSDEG + 1];
    for (int i = 0; i <= SINDEG; i++) SC[i] = _mm512_set1_ps(SINC[i]);
    for (int i = 0; i <= COSDEG; i++) CC[i] = _mm512_set1_ps(COSC[i]);
    int64_t nb = (n < ((int64_t)1 << 33) ? n / 2 : 0) / (16 * U);
    __m512i X1[U], X2[U];
    FOR { X1[u] = _mm512_add_epi32(lane, _mm512_set1_epi32((int)(16 * u + k.ka1))); X2[u] = _mm512_add_epi32(lane, _mm512_set1_epi32((int)(16 * u + k.ka2))); }
    for (int64_t b = 0; b < nb; b++) {
        __m512i t[U], w[U], v[U];
        FOR t[u] = _mm512_xor_si512(X1[u], _mm512_srli_epi32(X1[u], 16));
        FOR w[u] = _mm512_xor_si512(X2[u], _mm512_srli_epi32(X2[u], 16));
        FOR { X1[u] = _mm512_add_epi32(X1[u], STEP); X2[u] = _mm512_add_epi32(X2[u], STEP); }
        FOR t[u] = _mm512_mullo_epi32(t[u], M1);
        FOR w[u] = _mm512_mullo_epi32(w[u], M1);
        FOR t[u] = _mm512_ternarylogic_epi32(t[u], _mm512_srli_epi32(t[u], 15), KB1, 0x96);
        FOR w[u] = _mm512_ternarylogic_epi32(w[u], _mm512_srli_epi32(w[u], 15), KB2, 0x96);
        FOR t[u] = _mm512_mullo_epi32(t[u], M2);
        FOR w[u] = _mm512_mullo_epi32(w[u], M2);
        FOR t[u] = _mm512_xor_si512(t[u], _mm512_srli_epi32(t[u], 16));
        FOR w[u] = _mm512_xor_si512(w[u], _mm512_srli_epi32(w[u], 16));
        FOR v[u] = _mm512_sub_epi32(_mm512_castps_si512(_mm512_cvtepi32_ps(_mm512_add_epi32(_mm512_srli_epi32(t[u], 8), ONE))), OFS);
        __m512 f[U], e[U], p[U], r[U];
        FOR f[u] = _mm512_sub_ps(_mm512_castsi512_ps(_mm512_add_epi32(_mm512_and_si512(v[u], MM), MOFS)), ONEF);
        FOR e[u] = _mm512_cvtepi32_ps(_mm512_srai_epi32(v[u], 23));
        FOR p[u] = LC[0];
        for (int i = 1; i <= LOGDEG; i++) FOR p[u] = _mm512_add_ps(_mm512_mul_ps(p[u], f[u]), LC[i]);
        FOR p[u] = _mm512_add_ps(_mm512_mul_ps(p[u], f[u]), M2F);
        FOR r[u] = _mm512_sqrt_ps(_mm512_add_ps(_mm512_mul_ps(e[u], L2), _mm512_mul_ps(f[u], p[u])));
        __m512 y[U], y2[U], ps[U], pc[U], s[U], c[U];
        FOR y[u] = _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_slli_epi32(w[u], 2)), YS);
        FOR y2[u] = _mm512_mul_ps(y[u], y[u]);
        FOR { ps[u] = SC[0]; pc[u] = CC[0]; }
        for (int i = 1; i <= SINDEG; i++) FOR ps[u] = _mm512_add_ps(_mm512_mul_ps(ps[u], y2[u]), SC[i]);
        for (int i = 1; i <= COSDEG; i++) FOR pc[u] = _mm512_add_ps(_mm512_mul_ps(pc[u], y2[u]), CC[i]);
        FOR s[u] = _mm512_add_ps(y[u], _mm512_mul_ps(_mm512_mul_ps(y[u], y2[u]), ps[u]));
        FOR c[u] = _mm512_add_ps(_mm512_sub_ps(ONEF, _mm512_mul_ps(HALF, y2[u])), _mm512_mul_ps(_mm512_mul_ps(y2[u], y2[u]), pc[u]));
        FOR {
            __mmask16 odd = _mm512_test_epi32_mask(w[u], B30);
            __m512 a0 = _mm512_mask_blend_ps(odd, c[u], s[u]), a1 = _mm512_mask_blend_ps(odd, s[u], c[u]);
            __m512i s0 = _mm512_ternarylogic_epi32(w[u], _mm512_slli_epi32(w[u], 1), SG, 0x28);
            __m512i s1 = _mm512_and_si512(w[u], SG);
            float* o = out + 32 * (b * U + u);
            _mm512_storeu_ps(o, _mm512_mul_ps(r[u], _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a0), s0))));
            _mm512_storeu_ps(o + 16, _mm512_mul_ps(r[u], _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(a1), s1))));
        }
    }
    ref_range(out, nb * U, n, key);
}
#else
void gauss_fill(float* restrict out, int64_t n, uint64_t key) { ref_range(out, 0, n, key); }
#endif
