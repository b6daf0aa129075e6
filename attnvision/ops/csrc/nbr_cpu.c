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
 * Each output row is owned by one thread, so nbr_agg_t needs no atomics. The innermost loop runs along x over
 * contiguous rows (strided by s in the padded image), which the compiler vectorises; the rows a thread touches
 * stay in L1/L2, so nothing k^2-expanded is ever written to memory.
 */
#include <stdint.h>
#include <string.h>
#include <omp.h>

#define DEFINE_KERNELS(T, SUFFIX)                                                                                  \
void nbr_dot_##SUFFIX(const T *q, const T *kp, T *out, int64_t N, int64_t D, int64_t Ho, int64_t Wo, int64_t Hp,  \
                      int64_t Wp, int64_t kh, int64_t kw, int64_t s, int64_t dil, int threads) {                  \
    const int64_t K = kh * kw;                                                                                     \
    _Pragma("omp parallel for collapse(2) schedule(static) num_threads(threads)")                                  \
    for (int64_t n = 0; n < N; n++)                                                                                \
        for (int64_t y = 0; y < Ho; y++)                                                                           \
            for (int64_t o = 0; o < K; o++) {                                                                      \
                const int64_t oy = o / kw, ox = o % kw;                                                            \
                T *orow = out + ((n * K + o) * Ho + y) * Wo;                                                       \
                memset(orow, 0, sizeof(T) * Wo);                                                                   \
                for (int64_t d = 0; d < D; d++) {                                                                  \
                    const T *qrow = q + ((n * D + d) * Ho + y) * Wo;                                               \
                    const T *krow = kp + ((n * D + d) * Hp + y * s + oy * dil) * Wp + ox * dil;                    \
                    if (s == 1)                                                                                    \
                        for (int64_t x = 0; x < Wo; x++) orow[x] += qrow[x] * krow[x];                             \
                    else                                                                                           \
                        for (int64_t x = 0; x < Wo; x++) orow[x] += qrow[x] * krow[x * s];                         \
                }                                                                                                  \
            }                                                                                                      \
}                                                                                                                  \
                                                                                                                   \
void nbr_agg_##SUFFIX(const T *w, const T *vp, T *out, int64_t N, int64_t D, int64_t Ho, int64_t Wo, int64_t Hp,  \
                      int64_t Wp, int64_t kh, int64_t kw, int64_t s, int64_t dil, int threads) {                  \
    const int64_t K = kh * kw;                                                                                     \
    _Pragma("omp parallel for collapse(2) schedule(static) num_threads(threads)")                                  \
    for (int64_t n = 0; n < N; n++)                                                                                \
        for (int64_t y = 0; y < Ho; y++)                                                                           \
            for (int64_t d = 0; d < D; d++) {                                                                      \
                T *orow = out + ((n * D + d) * Ho + y) * Wo;                                                       \
                memset(orow, 0, sizeof(T) * Wo);                                                                   \
                for (int64_t o = 0; o < K; o++) {                                                                  \
                    const int64_t oy = o / kw, ox = o % kw;                                                        \
                    const T *wrow = w + ((n * K + o) * Ho + y) * Wo;                                               \
                    const T *vrow = vp + ((n * D + d) * Hp + y * s + oy * dil) * Wp + ox * dil;                    \
                    if (s == 1)                                                                                    \
                        for (int64_t x = 0; x < Wo; x++) orow[x] += wrow[x] * vrow[x];                             \
                    else                                                                                           \
                        for (int64_t x = 0; x < Wo; x++) orow[x] += wrow[x] * vrow[x * s];                         \
                }                                                                                                  \
            }                                                                                                      \
}                                                                                                                  \
                                                                                                                   \
void nbr_agg_t_##SUFFIX(const T *w, const T *u, T *out, int64_t N, int64_t D, int64_t Ho, int64_t Wo, int64_t Hp, \
                        int64_t Wp, int64_t kh, int64_t kw, int64_t s, int64_t dil, int threads) {                \
    const int64_t K = kh * kw;                                                                                     \
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
                        if (s == 1)                                                                                \
                            for (int64_t x = 0; x < Wo; x++) dst[x] += wrow[x] * urow[x];                          \
                        else                                                                                       \
                            for (int64_t x = 0; x < Wo; x++) dst[x * s] += wrow[x] * urow[x];                      \
                    }                                                                                              \
                }                                                                                                  \
            }                                                                                                      \
}

DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)
