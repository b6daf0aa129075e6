/* Fused local attention on CPU (the kernel behind attnvision::nbr_attention):
 *
 *   y[c] = sum_o p_o (v[c, nbr(o)] + rv[c, o]),
 *   p = softmax_o(q·(k[nbr(o)] + rq[:, o]) + k[nbr(o)]·rk[:, o] + bias[o])
 *
 * or, with ``apart``, y[c] = sum_o p_o v[c, nbr(o)] and y[Dv + c] = sum_o p_o rv[c, o] side by side (Axial-DeepLab
 * batch-normalises the two separately in training).
 *
 * per output pixel, over the live offsets o of a kh x kw footprint (see nbr_cpu.c for the layout and nbr()). q
 * [N,D,Ho,Wo], kp [N,D,Hp,Wp], vp [N,Dv,Hp,Wp]; rq, rk [G,D,K], rv [G,Dv,K] and bias [G,K] may be NULL; plane n
 * belongs to group n % G. The window of output pixel (y, x) starts at image pixel (y*s - win_top, x*s - win_left);
 * kp and vp are the images padded by pad_top / pad_left (and whatever bottom / right padding fills Hp x Wp).
 * mask_h > 0 drops neighbours outside the mask_h x mask_w image: offsets with no lane inside are skipped outright,
 * so a global axial window (K = 2L - 1) costs the L x L pairs of the dense form, and the padding only needs to hold
 * the lanes of a block that overhang the image (XB - 1 columns, no rows) instead of the window's reach. The forward
 * keeps y and one log-sum-exp per pixel; the backward recomputes the weights (as FlashAttention does), so neither
 * pass stores anything K-sized.
 *
 * Work is on blocks of XB pixels along x (one float register, simd.h) whose logits sit on the stack. Full stride-1 blocks run on explicit
 * vectors with register tiles: OT offsets share each loaded query (logits, dp) and CT channels share each loaded
 * weight (aggregation, dq), so every accumulator has its own dependency chain. The last block of a row overlaps
 * the one before it instead of falling back to scalar lanes (the backward zeroes the overlapped lanes' weights).
 * Strided footprints and rows narrower than XB would take the scalar path; fused.py lays them out at stride 1
 * instead (its _Phases: the strided image as its stride x stride phase images, whose neighbours sit at the shifts
 * of an explicit table, and narrow rows as one long row). The code is in attention_impl.h, instantiated for float
 * and double.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "simd.h"

#define XB (VBYTES / 4) /* pixels per block: one float register */
#define OT 8            /* offsets per register tile */
#define CT 8            /* channels per register tile */
#define CAT_(a, b) a##_##b
#define CAT(a, b) CAT_(a, b)
#define INLINE static inline __attribute__((always_inline))

typedef struct {
    int64_t N, G, D, Dv, Ho, Wo, Hp, Wp, kh, kw, K, s, dil, mask_h, mask_w, win_top, win_left, pad_top, pad_left;
    int64_t apart; /* 1: y holds sum_o p_o v[c, nbr(o)] and sum_o p_o rv[c, o] as 2 Dv channels, not their sum */
} geom;

/* Where the window of output pixel (y, x0) starts in kp / vp: image row y*s - win_top, column x0*s - win_left,
 * shifted by the memory padding. With a mask the padding may be smaller than the window's reach (see above), so
 * this can point before a row whose dead offsets are never read. */
static inline int64_t window_origin(const geom *g, int64_t y, int64_t x0) {
    return (y * g->s - g->win_top + g->pad_top) * g->Wp + x0 * g->s - g->win_left + g->pad_left;
}

/* The offsets of the block (y, x0 .. x0 + nx - 1) with at least one lane inside the image (every offset without a
 * mask) into live[], their neighbour's position relative to the block's first one into shift[], and edge[] = 1
 * where some lanes fall outside. Returns how many. A block whose whole window lies inside the image takes the
 * shared ``all`` list (every offset, no edges) instead of building its own. */
typedef struct {
    int64_t *live, *shift;
    char *edge;
} offsets;

static int64_t live_offsets(const geom *g, int64_t y, int64_t x0, int64_t nx, const offsets *all, offsets *own,
                            offsets *out) {
    const int64_t top = y * g->s - g->win_top, left = x0 * g->s - g->win_left;
    const int64_t bottom = top + (g->kh - 1) * g->dil, right = left + (nx - 1) * g->s + (g->kw - 1) * g->dil;
    if (g->mask_h <= 0 || (top >= 0 && left >= 0 && bottom < g->mask_h && right < g->mask_w)) {
        *out = *all;
        return g->K;
    }
    *out = *own;
    int64_t nl = 0;
    for (int64_t oy = 0; oy < g->kh; oy++) {
        const int64_t py = top + oy * g->dil;
        if (py < 0 || py >= g->mask_h) continue;
        for (int64_t ox = 0; ox < g->kw; ox++) {
            const int64_t first = left + ox * g->dil, last = first + (nx - 1) * g->s;
            if (last < 0 || first >= g->mask_w) continue;
            own->edge[nl] = first < 0 || last >= g->mask_w;
            own->shift[nl] = oy * g->dil * g->Wp + ox * g->dil;
            own->live[nl++] = oy * g->kw + ox;
        }
    }
    return nl;
}

/* Every offset; its neighbour's position is shifts[o] from the window origin when the caller gives a table (a layout
 * of its own, such as fused.py's phase images of a strided window), else the footprint's (oy·Wp + ox)·dil. */
static void all_offsets(const geom *g, offsets *all, const int64_t *shifts) {
    for (int64_t o = 0; o < g->K; o++) {
        all->live[o] = o;
        all->shift[o] = shifts ? shifts[o] : (o / g->kw) * g->dil * g->Wp + (o % g->kw) * g->dil;
        all->edge[o] = 0;
    }
}

/* In-place exp of XB float lanes. libm's expf is scalar and took half the kernel's time: 2^(x log2 e) = 2^n P(f),
 * n = round(t) through the 1.5*2^23 trick, |f| <= 1/2, Cephes' degree-6 polynomial for 2^f (relative error ~1e-7),
 * and lanes below -87 (masked, -inf) set to exactly 0. Double (tests) keeps libm. */
typedef float vxf __attribute__((vector_size(XB * 4), aligned(4)));
typedef int32_t vxi __attribute__((vector_size(XB * 4), aligned(4)));

static inline void exp_block_f32(float *lanes) {
    const vxf x = *(vxf *)lanes, lo = (vxf){0} - 87.0f;
    const vxi dead = x < lo;
    const vxf xc = (vxf)(((vxi)x & ~dead) | ((vxi)lo & dead));
    const vxf t = xc * 1.44269504088896341f;
    const vxf n = (t + 12582912.0f) - 12582912.0f;
    const vxf f = t - n;
    vxf p = (vxf){0} + 1.535336188319500e-4f;
    p = p * f + 1.339887440266574e-3f;
    p = p * f + 9.618437357674640e-3f;
    p = p * f + 5.550332471162809e-2f;
    p = p * f + 2.402264791363012e-1f;
    p = p * f + 6.931472028550421e-1f;
    p = p * f + 1.0f;
    const vxi bits = (vxi)p + (__builtin_convertvector(n, vxi) << 23);
    *(vxf *)lanes = (vxf)(bits & ~dead);
}

static inline void exp_block_f64(double *lanes) {
    for (int i = 0; i < XB; i++) lanes[i] = exp(lanes[i]);
}

/* log of XB float lanes >= 1 (softmax denominators): x = 2^e m, m in [1, 2), log m = 2 atanh((m - 1) / (m + 1)) by
 * its odd series to t^11 (relative error < 1e-7 for t <= 1/3). */
static inline vxf log_block_f32(vxf x) {
    const vxi bits = (vxi)x;
    const vxf e = __builtin_convertvector((bits >> 23) - 127, vxf);
    const vxf m = (vxf)((bits & 0x7fffff) | 0x3f800000);
    const vxf t = (m - 1.0f) / (m + 1.0f), t2 = t * t;
    vxf p = (vxf){0} + 1.0f / 11;
    p = p * t2 + 1.0f / 9;
    p = p * t2 + 1.0f / 7;
    p = p * t2 + 1.0f / 5;
    p = p * t2 + 1.0f / 3;
    p = p * t2 + 1.0f;
    return e * 0.693147180559945309f + 2.0f * t * p;
}

typedef double vxd __attribute__((vector_size(XB * 8), aligned(8)));

static inline vxd log_block_f64(vxd x) {
    for (int i = 0; i < XB; i++) x[i] = log(x[i]);
    return x;
}

#define T float
#define SUF f32
#define EXP expf
#define LOG logf
#include "attention_impl.h"
#undef T
#undef SUF
#undef EXP
#undef LOG

#define T double
#define SUF f64
#define EXP exp
#define LOG log
#include "attention_impl.h"

int vector_bytes(void) { return VBYTES; }
