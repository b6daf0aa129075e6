/* CPU kernels of attnvision's neighbourhood ops (the fast path of attnvision.ops on CPU).
 *
 * All tensors are contiguous. N = batch x groups, D channels, K = kh*kw offsets, o = oy*kw + ox. kp / vp / the
 * output of nbr_agg_t are padded images (Hp x Wp); the rest live on the output grid (Ho x Wo). The neighbour of
 * output pixel (y, x) at offset o is padded pixel (y*s + oy*dil, x*s + ox*dil).
 *
 *   nbr_dot  : out[n,o,y,x]   = sum_d q[n,d,y,x] * kp[n,d,nbr(y,x,o)]
 *   nbr_agg  : out[n,d,y,x]   = sum_o w[n,o,y,x] * vp[n,d,nbr(y,x,o)]
 *   nbr_agg_t: out[n,d,py,px] = sum_{(o,y,x): nbr(y,x,o) = (py,px)} w[n,o,y,x] * u[n,d,y,x]
 *
 * Each output row is owned by one thread, so nbr_agg_t needs no atomics. For stride 1 the innermost work is on
 * explicit vectors of one register (simd.h) along x (GCC vector extensions; unaligned loads of the shifted neighbour rows). In
 * nbr_dot and nbr_agg a row's last vector overlaps the one before it (the shared lanes are computed twice, alike),
 * so only rows narrower than a vector and strided footprints take their scalar loop; nbr_agg_t scalar-loops a row's
 * tail (an overlapping vector there would add into lanes stored just before, which stalls store forwarding). The
 * rows a thread touches stay in L1/L2.
 */
#include <stdint.h>
#include <string.h>

#include "simd.h"

#define TILE 8 /* channels per register tile (nbr_agg_tg) */

/* shift[o]: offset o's neighbour relative to the window's top-left corner, in a padded image Wp pixels wide. */
static inline void fill_shifts(int64_t *shift, int64_t kh, int64_t kw, int64_t dil, int64_t Wp) {
    for (int64_t o = 0; o < kh * kw; o++) shift[o] = (o / kw) * dil * Wp + (o % kw) * dil;
}

#define DEFINE_KERNELS(T, SUFFIX)                                                                                  \
typedef T vec_##SUFFIX __attribute__((vector_size(VBYTES), aligned(sizeof(T)))); /* unaligned, one register */    \
enum { VL_##SUFFIX = VBYTES / sizeof(T) };                                                                         \
                                                                                                                   \
void nbr_dot_##SUFFIX(const T *restrict q, const T *restrict kp, T *restrict out, int64_t N, int64_t D,            \
                      int64_t Ho, int64_t Wo, int64_t Hp, int64_t Wp, int64_t kh, int64_t kw, int64_t s,           \
                      int64_t dil, int threads) {                                                                  \
    typedef vec_##SUFFIX V;                                                                                        \
    const int64_t K = kh * kw, VL = VL_##SUFFIX, nvec = s == 1 && Wo >= VL_##SUFFIX ? Wo : 0;                     \
    _Pragma("omp parallel for collapse(2) schedule(static) num_threads(threads)")                                  \
    for (int64_t n = 0; n < N; n++)                                                                                \
        for (int64_t y = 0; y < Ho; y++)                                                                           \
            for (int64_t o = 0; o < K; o++) {                                                                      \
                const int64_t oy = o / kw, ox = o % kw;                                                            \
                T *orow = out + ((n * K + o) * Ho + y) * Wo;                                                       \
                const T *qrow = q + (n * D * Ho + y) * Wo;                                                         \
                const T *krow = kp + (n * D * Hp + y * s + oy * dil) * Wp + ox * dil;                              \
                for (int64_t x0 = 0; x0 < nvec; x0 += VL) {                                                        \
                    const int64_t x = x0 + VL > Wo ? Wo - VL : x0; /* the last overlaps the one before */          \
                    V acc = {0};                                                                                   \
                    for (int64_t d = 0; d < D; d++)                                                                \
                        acc += *(const V *)(qrow + d * Ho * Wo + x) * *(const V *)(krow + d * Hp * Wp + x);        \
                    *(V *)(orow + x) = acc;                                                                        \
                }                                                                                                  \
                for (int64_t x = nvec; x < Wo; x++) {                                                              \
                    T acc = 0;                                                                                     \
                    for (int64_t d = 0; d < D; d++) acc += qrow[d * Ho * Wo + x] * krow[d * Hp * Wp + x * s];      \
                    orow[x] = acc;                                                                                 \
                }                                                                                                  \
            }                                                                                                      \
}                                                                                                                  \
                                                                                                                   \
void nbr_agg_##SUFFIX(const T *restrict w, const T *restrict vp, T *restrict out, int64_t N, int64_t D,            \
                      int64_t Ho, int64_t Wo, int64_t Hp, int64_t Wp, int64_t kh, int64_t kw, int64_t s,           \
                      int64_t dil, int threads) {                                                                  \
    typedef vec_##SUFFIX V;                                                                                        \
    const int64_t K = kh * kw, VL = VL_##SUFFIX, nvec = s == 1 && Wo >= VL_##SUFFIX ? Wo : 0;                     \
    int64_t shift[K];                                                                                              \
    fill_shifts(shift, kh, kw, dil, Wp);                                                                           \
    _Pragma("omp parallel for collapse(2) schedule(static) num_threads(threads)")                                  \
    for (int64_t n = 0; n < N; n++)                                                                                \
        for (int64_t y = 0; y < Ho; y++)                                                                           \
            for (int64_t d = 0; d < D; d++) {                                                                      \
                T *orow = out + ((n * D + d) * Ho + y) * Wo;                                                       \
                const T *wrow = w + (n * K * Ho + y) * Wo;                                                         \
                const T *vrow = vp + ((n * D + d) * Hp + y * s) * Wp;                                              \
                for (int64_t x0 = 0; x0 < nvec; x0 += VL) {                                                        \
                    const int64_t x = x0 + VL > Wo ? Wo - VL : x0; /* the last overlaps the one before */          \
                    V acc = {0};                                                                                   \
                    for (int64_t o = 0; o < K; o++)                                                                \
                        acc += *(const V *)(wrow + o * Ho * Wo + x) *                                              \
                               *(const V *)(vrow + shift[o] + x);                                                  \
                    *(V *)(orow + x) = acc;                                                                        \
                }                                                                                                  \
                for (int64_t x = nvec; x < Wo; x++) {                                                              \
                    T acc = 0;                                                                                     \
                    for (int64_t o = 0; o < K; o++)                                                                \
                        acc += wrow[o * Ho * Wo + x] * vrow[shift[o] + x * s];                                     \
                    orow[x] = acc;                                                                                 \
                }                                                                                                  \
            }                                                                                                      \
}                                                                                                                  \
                                                                                                                   \
void nbr_agg_t_##SUFFIX(const T *restrict w, const T *restrict u, T *restrict out, int64_t N, int64_t D,           \
                        int64_t Ho, int64_t Wo, int64_t Hp, int64_t Wp, int64_t kh, int64_t kw, int64_t s,         \
                        int64_t dil, int threads) {                                                                \
    typedef vec_##SUFFIX V;                                                                                        \
    const int64_t K = kh * kw, VL = VL_##SUFFIX, nvec = s == 1 ? Wo / VL_##SUFFIX * VL_##SUFFIX : 0;               \
    _Pragma("omp parallel for collapse(2) schedule(static) num_threads(threads)")                                  \
    for (int64_t n = 0; n < N; n++)                                                                                \
        for (int64_t py = 0; py < Hp; py++)                                                                        \
            for (int64_t d = 0; d < D; d++) {                                                                      \
                T *orow = out + ((n * D + d) * Hp + py) * Wp;                                                      \
                memset(orow, 0, sizeof(T) * Wp);                                                                   \
                for (int64_t oy = 0; oy < kh; oy++) {                                                              \
                    const int64_t ys = py - oy * dil; /* = y * s for the output row y that reaches py */           \
                    if (ys < 0 || ys % s || ys / s >= Ho) continue;                                                \
                    const int64_t y = ys / s;                                                                      \
                    const T *urow = u + ((n * D + d) * Ho + y) * Wo;                                               \
                    for (int64_t ox = 0; ox < kw; ox++) {                                                          \
                        const T *wrow = w + ((n * K + oy * kw + ox) * Ho + y) * Wo;                                \
                        T *dst = orow + ox * dil;                                                                  \
                        for (int64_t x = 0; x < nvec; x += VL)                                                     \
                            *(V *)(dst + x) += *(const V *)(wrow + x) * *(const V *)(urow + x);                    \
                        for (int64_t x = nvec; x < Wo; x++) dst[x * s] += wrow[x] * urow[x];                       \
                    }                                                                                              \
                }                                                                                                  \
            }                                                                                                      \
}                                                                                                                  \
                                                                                                                   \
/* nbr_agg_t for stride 1 as a gather: out[n,d,F] = sum_o wf[n,o,F - shift[o]] * uf[n,d,F - shift[o]] over the      \
 * flat padded image, F = py*Wp + px, with wf [N,K,L] and uf [N,D,L] the output grid laid out flat in Wp-wide rows \
 * behind ``front`` zeros (junk columns and the rows past Ho zero, L = front + Hp*Wp), so that every read is in   \
 * bounds and every output vector is written once: no scatter into overlapping vectors, no scalar row tails. TILE  \
 * channels share each loaded weight vector. */                                                                    \
void nbr_agg_tg_##SUFFIX(const T *restrict wf, const T *restrict uf, T *restrict out, int64_t N, int64_t D,        \
                         int64_t Ho, int64_t Wo, int64_t Hp, int64_t Wp, int64_t kh, int64_t kw, int64_t s,        \
                         int64_t dil, int threads) {                                                               \
    typedef vec_##SUFFIX V;                                                                                        \
    const int64_t K = kh * kw, VL = VL_##SUFFIX, P = Hp * Wp, front = (kh - 1) * dil * Wp + (kw - 1) * dil;        \
    const int64_t L = front + P, nvec = P >= VL ? P : 0;                                                           \
    int64_t shift[K];                                                                                              \
    fill_shifts(shift, kh, kw, dil, Wp);                                                                           \
    _Pragma("omp parallel for collapse(2) schedule(static) num_threads(threads)")                                  \
    for (int64_t n = 0; n < N; n++)                                                                                \
        for (int64_t d0 = 0; d0 < D; d0 += TILE) {                                                                 \
            const int64_t nt = D - d0 < TILE ? D - d0 : TILE;                                                      \
            const T *wn = wf + n * K * L + front, *un = uf + (n * D + d0) * L + front;                             \
            T *on = out + (n * D + d0) * P;                                                                        \
            for (int64_t f0 = 0; f0 < nvec; f0 += VL) {                                                            \
                const int64_t f = f0 + VL > P ? P - VL : f0; /* the last vector overlaps the one before */         \
                V acc[TILE] = {{0}};                                                                               \
                for (int64_t o = 0; o < K; o++) {                                                                  \
                    const V wv = *(const V *)(wn + o * L + f - shift[o]);                                          \
                    _Pragma("GCC unroll 8")                                                                        \
                    for (int64_t t = 0; t < TILE; t++)                                                             \
                        if (t < nt) acc[t] += wv * *(const V *)(un + t * L + f - shift[o]);                        \
                }                                                                                                  \
                for (int64_t t = 0; t < nt; t++) *(V *)(on + t * P + f) = acc[t];                                  \
            }                                                                                                      \
            for (int64_t f = nvec; f < P; f++)                                                                     \
                for (int64_t t = 0; t < nt; t++) {                                                                 \
                    T acc = 0;                                                                                     \
                    for (int64_t o = 0; o < K; o++) acc += wn[o * L + f - shift[o]] * un[t * L + f - shift[o]];    \
                    on[t * P + f] = acc;                                                                           \
                }                                                                                                  \
        }                                                                                                          \
}

DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)
