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
 * explicit 64-byte vectors along x (GCC vector extensions; unaligned loads of the shifted neighbour rows), with a
 * scalar loop for the row's tail and for strided footprints. The rows a thread touches stay in L1/L2, so nothing
 * k^2-expanded is ever written to memory.
 */
#include <stdint.h>
#include <string.h>
#include <omp.h>

/* shift[o]: offset o's neighbour relative to the window's top-left corner, in a padded image Wp pixels wide. */
static inline void fill_shifts(int64_t *shift, int64_t kh, int64_t kw, int64_t dil, int64_t Wp) {
    for (int64_t o = 0; o < kh * kw; o++) shift[o] = (o / kw) * dil * Wp + (o % kw) * dil;
}

#define DEFINE_KERNELS(T, SUFFIX)                                                                                  \
typedef T vec_##SUFFIX __attribute__((vector_size(64), aligned(sizeof(T)))); /* unaligned 64-byte vector */        \
enum { VL_##SUFFIX = 64 / sizeof(T) };                                                                             \
                                                                                                                   \
void nbr_dot_##SUFFIX(const T *restrict q, const T *restrict kp, T *restrict out, int64_t N, int64_t D,            \
                      int64_t Ho, int64_t Wo, int64_t Hp, int64_t Wp, int64_t kh, int64_t kw, int64_t s,           \
                      int64_t dil, int threads) {                                                                  \
    typedef vec_##SUFFIX V;                                                                                        \
    const int64_t K = kh * kw, VL = VL_##SUFFIX, nvec = s == 1 ? Wo / VL_##SUFFIX * VL_##SUFFIX : 0;               \
    _Pragma("omp parallel for collapse(2) schedule(static) num_threads(threads)")                                  \
    for (int64_t n = 0; n < N; n++)                                                                                \
        for (int64_t y = 0; y < Ho; y++)                                                                           \
            for (int64_t o = 0; o < K; o++) {                                                                      \
                const int64_t oy = o / kw, ox = o % kw;                                                            \
                T *orow = out + ((n * K + o) * Ho + y) * Wo;                                                       \
                const T *qrow = q + (n * D * Ho + y) * Wo;                                                         \
                const T *krow = kp + (n * D * Hp + y * s + oy * dil) * Wp + ox * dil;                              \
                for (int64_t x = 0; x < nvec; x += VL) {                                                           \
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
    const int64_t K = kh * kw, VL = VL_##SUFFIX, nvec = s == 1 ? Wo / VL_##SUFFIX * VL_##SUFFIX : 0;               \
    int64_t shift[K];                                                                                              \
    fill_shifts(shift, kh, kw, dil, Wp);                                                                           \
    _Pragma("omp parallel for collapse(2) schedule(static) num_threads(threads)")                                  \
    for (int64_t n = 0; n < N; n++)                                                                                \
        for (int64_t y = 0; y < Ho; y++)                                                                           \
            for (int64_t d = 0; d < D; d++) {                                                                      \
                T *orow = out + ((n * D + d) * Ho + y) * Wo;                                                       \
                const T *wrow = w + (n * K * Ho + y) * Wo;                                                         \
                const T *vrow = vp + ((n * D + d) * Hp + y * s) * Wp;                                              \
                for (int64_t x = 0; x < nvec; x += VL) {                                                           \
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
}

DEFINE_KERNELS(float, f32)
DEFINE_KERNELS(double, f64)

/* Fused local attention (CPU only): y = softmax_o(q·(k[nbr] + rel[g,:,o]) + bias[g,o], masked) · v[nbr].
 *
 * q [N,D,Ho,Wo], kp [N,D,Hp,Wp], vp [N,Dv,Hp,Wp]; rel [G,D,K] and bias [G,K] may be NULL; n's group is n % G.
 * mask_h > 0 drops neighbours outside the mask_h x mask_w image (padded by pad_top/pad_left) from the softmax.
 * The forward keeps only y and the log-sum-exp per pixel (lse [N,Ho,Wo]); the backward recomputes the weights, so
 * neither pass stores anything K-sized. Work is on blocks of XB pixels along x whose K logits sit on the stack.
 */
#include <math.h>
#define XB 16

/* In-place exp of XB = 16 lanes. libm's expf is scalar and took half the kernel's time, so float uses explicit
 * 64-byte vectors: 2^(x log2 e) = 2^n * P(f), n = round(t) through the 1.5*2^23 trick, |f| <= 1/2, Cephes' degree-6
 * polynomial for 2^f (relative error ~1e-7), and lanes below -87 (masked, -inf) set to exactly 0. Double (tests)
 * keeps libm. */
typedef float v16f __attribute__((vector_size(64), aligned(4)));
typedef int32_t v16i __attribute__((vector_size(64), aligned(4)));

static inline void exp_block_f32(float *lanes) {
    const v16f x = *(v16f *)lanes, lo = (v16f){0} - 87.0f;
    const v16i dead = x < lo;
    const v16f xc = (v16f)(((v16i)x & ~dead) | ((v16i)lo & dead));
    const v16f t = xc * 1.44269504088896341f;
    const v16f n = (t + 12582912.0f) - 12582912.0f;
    const v16f f = t - n;
    v16f p = (v16f){0} + 1.535336188319500e-4f;
    p = p * f + 1.339887440266574e-3f;
    p = p * f + 9.618437357674640e-3f;
    p = p * f + 5.550332471162809e-2f;
    p = p * f + 2.402264791363012e-1f;
    p = p * f + 6.931472028550421e-1f;
    p = p * f + 1.0f;
    const v16i bits = (v16i)p + (__builtin_convertvector(n, v16i) << 23);
    *(v16f *)lanes = (v16f)(bits & ~dead);
}

static inline void exp_block_f64(double *lanes) {
    for (int i = 0; i < XB; i++) lanes[i] = exp(lanes[i]);
}

#define DEFINE_ATTENTION(T, SUFFIX, EXP, LOG) /* EXP: scalar exp for partial blocks */                             \
static inline __attribute__((always_inline)) void logits_block_##SUFFIX(const T *q, const T *kp, const T *rel,     \
        const T *bias, T *l, int64_t n,                                                                            \
        int64_t G, int64_t D, int64_t Ho, int64_t Wo, int64_t Hp, int64_t Wp, int64_t kh, int64_t kw, int64_t s,   \
        int64_t dil, int64_t mask_h, int64_t mask_w, int64_t pad_top, int64_t pad_left, int64_t y, int64_t x0,     \
        int64_t nx) {                                                                                              \
    const int64_t K = kh * kw, g = n % G;                                                                          \
    for (int64_t o = 0; o < K; o++) {                                                                              \
        const int64_t oy = o / kw, ox = o % kw, py = y * s + oy * dil;                                             \
        T *lo = l + o * XB;                                                                                        \
        for (int64_t i = 0; i < XB; i++) lo[i] = bias ? bias[g * K + o] : 0;                                       \
        for (int64_t d = 0; d < D; d++) {                                                                          \
            const T *qd = q + ((n * D + d) * Ho + y) * Wo + x0;                                                    \
            const T *kd = kp + ((n * D + d) * Hp + py) * Wp + ox * dil + x0 * s;                                   \
            const T r = rel ? rel[(g * D + d) * K + o] : 0;                                                        \
            if (s == 1)                                                                                            \
                for (int64_t i = 0; i < nx; i++) lo[i] += qd[i] * (kd[i] + r);                                     \
            else                                                                                                   \
                for (int64_t i = 0; i < nx; i++) lo[i] += qd[i] * (kd[i * s] + r);                                 \
        }                                                                                                          \
        if (mask_h > 0) {                                                                                          \
            const int row_ok = py - pad_top >= 0 && py - pad_top < mask_h;                                         \
            for (int64_t i = 0; i < nx; i++) {                                                                     \
                const int64_t px = (x0 + i) * s + ox * dil - pad_left;                                             \
                if (!row_ok || px < 0 || px >= mask_w) lo[i] = -INFINITY;                                          \
            }                                                                                                      \
        }                                                                                                          \
    }                                                                                                              \
}                                                                                                                  \
                                                                                                                   \
static inline __attribute__((always_inline)) void attend_block_##SUFFIX(const T *q, const T *kp, const T *vp,      \
        const T *rel, const T *bias, T *y_out, T *lse, T *l, int64_t n, int64_t G, int64_t D, int64_t Dv,          \
        int64_t Ho, int64_t Wo, int64_t Hp, int64_t Wp, int64_t kh, int64_t kw, int64_t s, int64_t dil,            \
        int64_t mask_h, int64_t mask_w, int64_t pad_top, int64_t pad_left, int64_t y, int64_t x0, int64_t nx) {    \
    const int64_t K = kh * kw;                                                                                     \
    logits_block_##SUFFIX(q, kp, rel, bias, l, n, G, D, Ho, Wo, Hp, Wp, kh, kw, s, dil, mask_h, mask_w, pad_top,   \
                          pad_left, y, x0, nx);                                                                    \
    T m[XB], sum[XB];                                                                                              \
    for (int64_t i = 0; i < XB; i++) { m[i] = -INFINITY; sum[i] = 0; }                                             \
    for (int64_t o = 0; o < K; o++)                                                                                \
        for (int64_t i = 0; i < nx; i++) m[i] = l[o * XB + i] > m[i] ? l[o * XB + i] : m[i];                       \
    for (int64_t o = 0; o < K; o++) {                                                                              \
        T *lo = l + o * XB;                                                                                        \
        for (int64_t i = 0; i < nx; i++) lo[i] -= m[i];                                                            \
        if (nx == XB) exp_block_##SUFFIX(lo);                                                                      \
        else for (int64_t i = 0; i < nx; i++) lo[i] = EXP(lo[i]);                                                  \
        for (int64_t i = 0; i < nx; i++) sum[i] += lo[i];                                                          \
    }                                                                                                              \
    for (int64_t i = 0; i < nx; i++) {                                                                             \
        lse[(n * Ho + y) * Wo + x0 + i] = m[i] + LOG(sum[i]);                                                      \
        sum[i] = 1 / sum[i];                                                                                       \
    }                                                                                                              \
    for (int64_t d = 0; d < Dv; d++) {                                                                             \
        T acc[XB] = {0};                                                                                           \
        const T *vrow = vp + ((n * Dv + d) * Hp + y * s) * Wp + x0 * s;                                            \
        for (int64_t o = 0; o < K; o++) {                                                                          \
            const T *vd = vrow + (o / kw) * dil * Wp + (o % kw) * dil, *po = l + o * XB;                           \
            for (int64_t i = 0; i < nx; i++) acc[i] += po[i] * vd[i * s];                                          \
        }                                                                                                          \
        T *yd = y_out + ((n * Dv + d) * Ho + y) * Wo + x0;                                                         \
        for (int64_t i = 0; i < nx; i++) yd[i] = acc[i] * sum[i];                                                  \
    }                                                                                                              \
}                                                                                                                  \
                                                                                                                   \
static inline void logits_full_##SUFFIX(const T *q, const T *kp, const T *rel, const T *bias, T *l,                \
        const int64_t *shift, int64_t n, int64_t G, int64_t D, int64_t Ho, int64_t Wo, int64_t Hp, int64_t Wp,     \
        int64_t K, int64_t kw, int64_t dil, int64_t mask_h, int64_t mask_w, int64_t pad_top, int64_t pad_left,     \
        int64_t y, int64_t x0) {                                                                                   \
    typedef T V __attribute__((vector_size(XB * sizeof(T)), aligned(sizeof(T)))); /* the XB lanes of a block */    \
    const int64_t g = n % G;                                                                                       \
    const T *qb = q + (n * D * Ho + y) * Wo + x0, *kb = kp + (n * D * Hp + y) * Wp + x0;                           \
    for (int64_t o = 0; o < K; o++) {                                                                              \
        V acc = (V){0} + (bias ? bias[g * K + o] : 0);                                                             \
        for (int64_t d = 0; d < D; d++)                                                                            \
            acc += *(const V *)(qb + d * Ho * Wo) *                                                                \
                   (*(const V *)(kb + d * Hp * Wp + shift[o]) + (rel ? rel[(g * D + d) * K + o] : 0));             \
        *(V *)(l + o * XB) = acc;                                                                                  \
        if (mask_h > 0) {                                                                                          \
            const int64_t py = y + (o / kw) * dil - pad_top, px = x0 + (o % kw) * dil - pad_left;                  \
            for (int64_t i = 0; i < XB; i++)                                                                       \
                if (py < 0 || py >= mask_h || px + i < 0 || px + i >= mask_w) l[o * XB + i] = -INFINITY;           \
        }                                                                                                          \
    }                                                                                                              \
}                                                                                                                  \
                                                                                                                   \
static inline void attend_full_##SUFFIX(const T *q, const T *kp, const T *vp, const T *rel, const T *bias,         \
        T *y_out, T *lse, T *l, const int64_t *shift, int64_t n, int64_t G, int64_t D, int64_t Dv, int64_t Ho,     \
        int64_t Wo, int64_t Hp, int64_t Wp, int64_t K, int64_t kw, int64_t dil, int64_t mask_h, int64_t mask_w,    \
        int64_t pad_top, int64_t pad_left, int64_t y, int64_t x0) {                                                \
    typedef T V __attribute__((vector_size(XB * sizeof(T)), aligned(sizeof(T)))); /* the XB lanes of a block */    \
    logits_full_##SUFFIX(q, kp, rel, bias, l, shift, n, G, D, Ho, Wo, Hp, Wp, K, kw, dil, mask_h, mask_w, pad_top, \
                         pad_left, y, x0);                                                                         \
    T m[XB], sum[XB];                                                                                              \
    for (int64_t i = 0; i < XB; i++) { m[i] = -INFINITY; sum[i] = 0; }                                             \
    for (int64_t o = 0; o < K; o++)                                                                                \
        for (int64_t i = 0; i < XB; i++) m[i] = l[o * XB + i] > m[i] ? l[o * XB + i] : m[i];                       \
    for (int64_t o = 0; o < K; o++) {                                                                              \
        T *lo = l + o * XB;                                                                                        \
        for (int64_t i = 0; i < XB; i++) lo[i] -= m[i];                                                            \
        exp_block_##SUFFIX(lo);                                                                                    \
        for (int64_t i = 0; i < XB; i++) sum[i] += lo[i];                                                          \
    }                                                                                                              \
    for (int64_t i = 0; i < XB; i++) { lse[(n * Ho + y) * Wo + x0 + i] = m[i] + LOG(sum[i]); sum[i] = 1 / sum[i]; } \
    const V inv = *(const V *)sum;                                                                                 \
    for (int64_t d = 0; d < Dv; d++) {                                                                             \
        const T *vb = vp + ((n * Dv + d) * Hp + y) * Wp + x0;                                                      \
        V acc = {0};                                                                                               \
        for (int64_t o = 0; o < K; o++) acc += *(const V *)(l + o * XB) * *(const V *)(vb + shift[o]);             \
        *(V *)(y_out + ((n * Dv + d) * Ho + y) * Wo + x0) = acc * inv;                                             \
    }                                                                                                              \
}                                                                                                                  \
                                                                                                                   \
void nbr_attention_fwd_##SUFFIX(const T *restrict q, const T *restrict kp, const T *restrict vp, const T *rel,     \
        const T *bias, T *restrict y_out, T *restrict lse, int64_t N, int64_t G, int64_t D, int64_t Dv, int64_t Ho, \
        int64_t Wo, int64_t Hp, int64_t Wp, int64_t kh, int64_t kw, int64_t s, int64_t dil, int64_t mask_h,        \
        int64_t mask_w, int64_t pad_top, int64_t pad_left, int threads) {                                          \
    const int64_t K = kh * kw;                                                                                     \
    int64_t shift[K];                                                                                              \
    fill_shifts(shift, kh, kw, dil, Wp);                                                                           \
    _Pragma("omp parallel for collapse(2) schedule(static) num_threads(threads)")                                  \
    for (int64_t n = 0; n < N; n++)                                                                                \
        for (int64_t y = 0; y < Ho; y++) {                                                                         \
            T l[K * XB];                                                                                           \
            for (int64_t x0 = 0; x0 < Wo; x0 += XB) {                                                              \
                const int64_t nx = Wo - x0 < XB ? Wo - x0 : XB;                                                    \
                if (nx == XB && s == 1) /* full stride-1 blocks: explicit vectors */                               \
                    attend_full_##SUFFIX(q, kp, vp, rel, bias, y_out, lse, l, shift, n, G, D, Dv, Ho, Wo, Hp, Wp,  \
                                         K, kw, dil, mask_h, mask_w, pad_top, pad_left, y, x0);                    \
                else                                                                                               \
                    attend_block_##SUFFIX(q, kp, vp, rel, bias, y_out, lse, l, n, G, D, Dv, Ho, Wo, Hp, Wp, kh, kw, \
                                          s, dil, mask_h, mask_w, pad_top, pad_left, y, x0, nx);                   \
            }                                                                                                      \
        }                                                                                                          \
}                                                                                                                  \
                                                                                                                   \
static inline __attribute__((always_inline)) void attend_block_bwd_##SUFFIX(const T *q, const T *kp,               \
        const T *vp, const T *rel, const T *bias, const T *y_out, const T *lse, const T *dy, T *dq, T *dkp, T *dvp, \
        T *drel_t, T *dbias_t, T *l, int64_t n, int64_t G, int64_t D, int64_t Dv, int64_t Ho, int64_t Wo,          \
        int64_t Hp, int64_t Wp, int64_t kh, int64_t kw, int64_t s, int64_t dil, int64_t mask_h, int64_t mask_w,    \
        int64_t pad_top, int64_t pad_left, int64_t y, int64_t x0, int64_t nx) {                                    \
    const int64_t K = kh * kw, g = n % G;                                                                          \
    logits_block_##SUFFIX(q, kp, rel, bias, l, n, G, D, Ho, Wo, Hp, Wp, kh, kw, s, dil, mask_h, mask_w, pad_top,   \
                          pad_left, y, x0, nx);                                                                    \
    T delta[XB] = {0};                                                                                             \
    for (int64_t d = 0; d < Dv; d++) {                                                                             \
        const T *dyd = dy + ((n * Dv + d) * Ho + y) * Wo + x0, *yd = y_out + ((n * Dv + d) * Ho + y) * Wo + x0;    \
        for (int64_t i = 0; i < nx; i++) delta[i] += dyd[i] * yd[i];                                               \
    }                                                                                                              \
    const T *lse_row = lse + (n * Ho + y) * Wo + x0;                                                               \
    for (int64_t o = 0; o < K; o++) {                                                                              \
        const int64_t off = (y * s + (o / kw) * dil) * Wp + (o % kw) * dil + x0 * s;                               \
        T *lo = l + o * XB, dp[XB] = {0};                                                                          \
        for (int64_t i = 0; i < nx; i++) lo[i] -= lse_row[i];                                                      \
        if (nx == XB) exp_block_##SUFFIX(lo);                                                                      \
        else for (int64_t i = 0; i < nx; i++) lo[i] = EXP(lo[i]);                                                  \
        for (int64_t d = 0; d < Dv; d++) {                                                                         \
            const T *dyd = dy + ((n * Dv + d) * Ho + y) * Wo + x0, *vd = vp + (n * Dv + d) * Hp * Wp + off;        \
            T *dvd = dvp + (n * Dv + d) * Hp * Wp + off;                                                           \
            for (int64_t i = 0; i < nx; i++) { dp[i] += dyd[i] * vd[i * s]; dvd[i * s] += lo[i] * dyd[i]; }        \
        }                                                                                                          \
        T dsum = 0; /* lo becomes ds = p * (dp - delta) */                                                         \
        for (int64_t i = 0; i < nx; i++) { lo[i] *= dp[i] - delta[i]; dsum += lo[i]; }                             \
        if (dbias_t) dbias_t[g * K + o] += dsum;                                                                   \
        for (int64_t d = 0; d < D; d++) {                                                                          \
            const T *qd = q + ((n * D + d) * Ho + y) * Wo + x0, *kd = kp + (n * D + d) * Hp * Wp + off;            \
            T *dqd = dq + ((n * D + d) * Ho + y) * Wo + x0, *dkd = dkp + (n * D + d) * Hp * Wp + off;              \
            const T r = rel ? rel[(g * D + d) * K + o] : 0;                                                        \
            T dr = 0;                                                                                              \
            for (int64_t i = 0; i < nx; i++) { dqd[i] += lo[i] * (kd[i * s] + r); dkd[i * s] += lo[i] * qd[i];     \
                                               dr += lo[i] * qd[i]; }                                              \
            if (drel_t) drel_t[(g * D + d) * K + o] += dr;                                                         \
        }                                                                                                          \
    }                                                                                                              \
}                                                                                                                  \
                                                                                                                   \
static inline void attend_full_bwd_##SUFFIX(const T *q, const T *kp, const T *vp, const T *rel, const T *bias,     \
        const T *y_out, const T *lse, const T *dy, T *dq, T *dkp, T *dvp, T *drel_t, T *dbias_t, T *l,             \
        const int64_t *shift, int64_t n, int64_t G, int64_t D, int64_t Dv, int64_t Ho, int64_t Wo, int64_t Hp,     \
        int64_t Wp, int64_t K, int64_t kw, int64_t dil, int64_t mask_h, int64_t mask_w, int64_t pad_top,           \
        int64_t pad_left, int64_t y, int64_t x0) {                                                                 \
    typedef T V __attribute__((vector_size(XB * sizeof(T)), aligned(sizeof(T))));                                  \
    const int64_t g = n % G, pix = y * Wo + x0, nbr = y * Wp + x0;                                                 \
    logits_full_##SUFFIX(q, kp, rel, bias, l, shift, n, G, D, Ho, Wo, Hp, Wp, K, kw, dil, mask_h, mask_w, pad_top, \
                         pad_left, y, x0);                                                                         \
    V delta = {0};                                                                                                 \
    for (int64_t d = 0; d < Dv; d++)                                                                               \
        delta += *(const V *)(dy + (n * Dv + d) * Ho * Wo + pix) * *(const V *)(y_out + (n * Dv + d) * Ho * Wo + pix); \
    const V lse_v = *(const V *)(lse + n * Ho * Wo + pix);                                                         \
    for (int64_t o = 0; o < K; o++) {                                                                              \
        T *lo = l + o * XB;                                                                                        \
        *(V *)lo -= lse_v;                                                                                         \
        exp_block_##SUFFIX(lo);                                                                                    \
        const V p = *(const V *)lo;                                                                                \
        V dp = {0};                                                                                                \
        for (int64_t d = 0; d < Dv; d++) {                                                                         \
            const V dyv = *(const V *)(dy + (n * Dv + d) * Ho * Wo + pix);                                         \
            const int64_t at = (n * Dv + d) * Hp * Wp + nbr + shift[o];                                            \
            dp += dyv * *(const V *)(vp + at);                                                                     \
            *(V *)(dvp + at) += p * dyv;                                                                           \
        }                                                                                                          \
        const V ds = p * (dp - delta);                                                                             \
        if (dbias_t) for (int64_t i = 0; i < XB; i++) dbias_t[g * K + o] += ds[i];                                 \
        for (int64_t d = 0; d < D; d++) {                                                                          \
            const V qv = *(const V *)(q + (n * D + d) * Ho * Wo + pix);                                            \
            const int64_t at = (n * D + d) * Hp * Wp + nbr + shift[o];                                             \
            const T r = rel ? rel[(g * D + d) * K + o] : 0;                                                        \
            *(V *)(dq + (n * D + d) * Ho * Wo + pix) += ds * (*(const V *)(kp + at) + r);                          \
            *(V *)(dkp + at) += ds * qv;                                                                           \
            if (drel_t) {                                                                                          \
                const V dr = ds * qv;                                                                              \
                for (int64_t i = 0; i < XB; i++) drel_t[(g * D + d) * K + o] += dr[i];                             \
            }                                                                                                      \
        }                                                                                                          \
    }                                                                                                              \
}                                                                                                                  \
                                                                                                                   \
/* dq, dkp, dvp must be zeroed; drel [threads,G,D,K] and dbias [threads,G,K] are zeroed per-thread partial sums. */ \
void nbr_attention_bwd_##SUFFIX(const T *restrict q, const T *restrict kp, const T *restrict vp, const T *rel,     \
        const T *bias, const T *restrict y_out, const T *restrict lse, const T *restrict dy, T *restrict dq,       \
        T *restrict dkp, T *restrict dvp, T *drel, T *dbias, int64_t N, int64_t G, int64_t D, int64_t Dv,          \
        int64_t Ho, int64_t Wo, int64_t Hp, int64_t Wp, int64_t kh, int64_t kw, int64_t s, int64_t dil,            \
        int64_t mask_h, int64_t mask_w, int64_t pad_top, int64_t pad_left, int threads) {                          \
    const int64_t K = kh * kw;                                                                                     \
    int64_t shift[K];                                                                                              \
    fill_shifts(shift, kh, kw, dil, Wp);                                                                           \
    /* one thread per plane n: the scatters into dkp[n] and dvp[n] never race */                                   \
    _Pragma("omp parallel for schedule(dynamic) num_threads(threads)")                                             \
    for (int64_t n = 0; n < N; n++) {                                                                              \
        const int t = omp_get_thread_num();                                                                        \
        T *drel_t = drel ? drel + t * G * D * K : 0, *dbias_t = dbias ? dbias + t * G * K : 0;                     \
        T l[K * XB];                                                                                               \
        for (int64_t y = 0; y < Ho; y++)                                                                           \
            for (int64_t x0 = 0; x0 < Wo; x0 += XB) {                                                              \
                const int64_t nx = Wo - x0 < XB ? Wo - x0 : XB;                                                    \
                if (nx == XB && s == 1) /* full stride-1 blocks: explicit vectors */                               \
                    attend_full_bwd_##SUFFIX(q, kp, vp, rel, bias, y_out, lse, dy, dq, dkp, dvp, drel_t, dbias_t,  \
                        l, shift, n, G, D, Dv, Ho, Wo, Hp, Wp, K, kw, dil, mask_h, mask_w, pad_top, pad_left, y,   \
                        x0);                                                                                       \
                else                                                                                               \
                    attend_block_bwd_##SUFFIX(q, kp, vp, rel, bias, y_out, lse, dy, dq, dkp, dvp, drel_t, dbias_t, \
                        l, n, G, D, Dv, Ho, Wo, Hp, Wp, kh, kw, s, dil, mask_h, mask_w, pad_top, pad_left, y, x0,  \
                        nx);                                                                                       \
            }                                                                                                      \
    }                                                                                                              \
}

DEFINE_ATTENTION(float, f32, expf, logf)
DEFINE_ATTENTION(double, f64, exp, log)
