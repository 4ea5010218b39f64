/* The passes of a Rademacher query over packed signs, for torchzo.oracle.kernels.
 *
 * A direction is a packed sign stream: entry j is bit (j & 7) of byte (j >> 3), set meaning -1.
 * The kernels give the bits of the torch ops they replace, because every product they form is
 * +-alpha, exact: base + alpha * u and g + c * u round once, fused multiply-add or not.
 *
 * Whole bytes are looked up in tables of their 8 signed values (one row per byte value), so
 * that a byte's entries cost a load and a vector add (GCC/Clang vector extensions, lowered to
 * whatever the target has); the ragged head and tail of a stream, and short streams, go one
 * entry at a time.
 */
#include <stdint.h>
#include <string.h>

#define SIGNED(bits, j, v) ((((bits)[(j) >> 3] >> ((j) & 7)) & 1) ? -(v) : (v))
/* Whole bytes from which filling the tables pays. */
#define TABLE_MIN 64
/* Bytes per chunk of a multi-term accumulation: 4096 entries of g kept in cache meanwhile. */
#define CHUNK 512
/* Terms of one accumulation at most (kernels.GROUP). */
#define MAX_TERMS 8

/* SplitMix64's output function (Steele, Lea and Flood, 2014). */
static inline uint64_t mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* words[i] = mix64(key + (i + 1) * golden) for i < n: a Rademacher direction's sign bits, a
 * pure function of the key and the word's index (directions.py gives the same in torch ops). */
void zo_sign_bits(uint64_t *words, int64_t n, uint64_t key) {
    const uint64_t golden = 0x9e3779b97f4a7c15ULL;
    uint64_t state = key;
    for (int64_t i = 0; i < n; ++i) {
        state += golden;
        words[i] = mix64(state);
    }
}

#define DEFINE_KERNELS(T, SUFFIX)                                                              \
    typedef T row_##SUFFIX __attribute__((vector_size(8 * sizeof(T))));                        \
                                                                                               \
    static void fill_table_##SUFFIX(T v, row_##SUFFIX *table) {                                \
        for (int b = 0; b < 256; ++b)                                                          \
            for (int k = 0; k < 8; ++k) table[b][k] = ((b >> k) & 1) ? -v : v;                 \
    }                                                                                          \
                                                                                               \
    /* Entries offset to offset + n of the passes of queries: out = base + alpha * u, where    \
     * out is not NULL; and g += c[0] u_0, then c[1] u_1, ... in order, for the m terms (at    \
     * most MAX_TERMS; with init, g starts from +0, its contents unread). The terms are added \
     * chunk by chunk of g, so that g is read and written once for all of them. */            \
    void zo_sign_query_##SUFFIX(T *restrict out, const T *restrict base, const uint8_t *bits,  \
                                double alpha_in, T *restrict g, const uint8_t *const *terms,   \
                                const double *c_in, int m, int init, int64_t offset,           \
                                int64_t n) {                                                   \
        const T alpha = (T)alpha_in;                                                           \
        T c[MAX_TERMS];                                                                        \
        for (int q = 0; q < m; ++q) c[q] = (T)c_in[q];                                         \
        if (g && init && m == 0)                                                               \
            for (int64_t j = 0; j < n; ++j) g[j] = 0;                                          \
        const int64_t head = n < ((8 - (offset & 7)) & 7) ? n : ((8 - (offset & 7)) & 7);      \
        const int64_t whole = (n - head) >> 3;                                                 \
        const int64_t tabled = whole >= TABLE_MIN ? whole : 0;                                 \
        for (int64_t j = 0; j < n; ++j) {                                                      \
            if (j == head && tabled) j += 8 * tabled; /* the whole bytes: below */             \
            if (j >= n) break;                                                                 \
            if (out) out[j] = base[j] + SIGNED(bits, offset + j, alpha);                       \
            if (m) {                                                                           \
                T x = init ? 0 : g[j];                                                         \
                for (int q = 0; q < m; ++q) x += SIGNED(terms[q], offset + j, c[q]);           \
                g[j] = x;                                                                      \
            }                                                                                  \
        }                                                                                      \
        if (!tabled) return;                                                                   \
        row_##SUFFIX ta[256], tc[MAX_TERMS][256];                                              \
        if (out) fill_table_##SUFFIX(alpha, ta);                                               \
        for (int q = 0; q < m; ++q) fill_table_##SUFFIX(c[q], tc[q]);                          \
        const int64_t first = (offset + head) >> 3;                                            \
        T *o = out ? out + head : NULL, *acc = m ? g + head : NULL;                            \
        const T *x0 = out ? base + head : NULL;                                                \
        for (int64_t lo = 0; lo < tabled; lo += CHUNK) {                                       \
            const int64_t hi = lo + CHUNK < tabled ? lo + CHUNK : tabled;                      \
            if (out) {                                                                         \
                for (int64_t i = lo; i < hi; ++i) {                                            \
                    row_##SUFFIX x;                                                            \
                    memcpy(&x, x0 + 8 * i, sizeof x);                                          \
                    x += ta[bits[first + i]];                                                  \
                    memcpy(o + 8 * i, &x, sizeof x);                                           \
                }                                                                              \
            }                                                                                  \
            /* Up to four terms per sweep of the chunk: g's rows are loaded and stored once   \
             * for all of them (each entry still gets its terms one add at a time, in order). */ \
            for (int q = 0; q < m; q += 4) {                                                   \
                const int r = m - q < 4 ? m - q : 4;                                           \
                const uint8_t *t0 = terms[q] + first, *t1 = r > 1 ? terms[q + 1] + first : t0;  \
                const uint8_t *t2 = r > 2 ? terms[q + 2] + first : t0;                         \
                const uint8_t *t3 = r > 3 ? terms[q + 3] + first : t0;                         \
                const row_##SUFFIX *c0 = tc[q], *c1 = tc[q + (r > 1)], *c2 = tc[q + 2 * (r > 2)], \
                                   *c3 = tc[q + 3 * (r > 3)];                                  \
                const int fresh = init && q == 0;                                              \
                for (int64_t i = lo; i < hi; ++i) {                                            \
                    row_##SUFFIX y = {0};                                                      \
                    if (!fresh) memcpy(&y, acc + 8 * i, sizeof y);                             \
                    y += c0[t0[i]];                                                            \
                    if (r > 1) y += c1[t1[i]];                                                 \
                    if (r > 2) y += c2[t2[i]];                                                 \
                    if (r > 3) y += c3[t3[i]];                                                 \
                    memcpy(acc + 8 * i, &y, sizeof y);                                         \
                }                                                                              \
            }                                                                                  \
        }                                                                                      \
    }

DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)
