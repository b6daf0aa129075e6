/* The fused local attention for one element type, included by attention_cpu.c with T, SUF, EXP and LOG defined. */
#define FN(name) CAT(name, SUF)
#define V FN(vec)
#define IV FN(ivec)
typedef T V __attribute__((vector_size(XB * sizeof(T)), aligned(sizeof(T)))); /* the XB lanes of a block */
typedef __typeof__((V){0} < (V){0}) IV;

typedef struct {
    const T *q, *kp, *vp, *rq, *rk, *rv, *bias; /* inputs; the four terms per group, or NULL */
    T *y, *lse;                                 /* forward outputs, read again by the backward */
    const int64_t *shifts;                      /* the offsets' neighbour shifts, or NULL (all_offsets) */
    const T *dy;                                /* backward: the output's gradient, */
    T *dq, *dkp, *dvp;                          /* the inputs' gradients (zeroed, accumulated into), */
    T *drq, *drk, *drv, *dbias;                 /* the terms' per-thread partial sums [threads][G][...] */
    geom g;
} FN(args);

typedef struct { /* one thread's scratch: a block's weights and their gradients, its live offsets */
    T *l, *ds;
    offsets all, own, cur; /* every offset; a border block's own live ones; the current block's (one of them) */
    T *tq, *tk, *tv, *tb;  /* a border block's live-ordered terms (live_term) */
    V *grq, *grk, *grv, *gbias; /* per-lane sums of the terms' gradients for the current plane */
} FN(scratch);

INLINE V FN(vmax)(V a, V b) {
    const IV m = a > b;
    return (V)(((IV)a & m) | ((IV)b & ~m));
}

/* l[t] = bias[t] + sum_c a_c · (b_c[nbr_t] + ra[c, t]) + b_c[nbr_t] · rb[c, t] for a tile of nt live offsets, whose
 * neighbours are sh[t] from the block's start and whose terms (live-ordered, see live_term) have channel strides
 * ras and rbs; a's channels lie as apart, b's bs. */
INLINE void FN(dot_tile)(T *l, const T *a, const T *b, const T *ra, int64_t ras, const T *rb, int64_t rbs,
                         const T *bias, const int64_t *sh, const int nt, int64_t C, int64_t as, int64_t bs,
                         const int has_ra, const int has_rb) {
    V acc[OT];
#pragma GCC unroll 8
    for (int t = 0; t < nt; t++) acc[t] = (V){0} + (bias ? bias[t] : 0);
    for (int64_t c = 0; c < C; c++) {
        const V av = *(const V *)(a + c * as);
        const T *bc = b + c * bs, *rac = has_ra ? ra + c * ras : 0, *rbc = has_rb ? rb + c * rbs : 0;
#pragma GCC unroll 8
        for (int t = 0; t < nt; t++) {
            const V bv = *(const V *)(bc + sh[t]);
            if (has_ra && has_rb) acc[t] += av * (bv + rac[t]) + bv * rbc[t];
            else if (has_ra) acc[t] += av * (bv + rac[t]);
            else if (has_rb) acc[t] += bv * (av + rbc[t]);
            else acc[t] += av * bv;
        }
    }
#pragma GCC unroll 8
    for (int t = 0; t < nt; t++) *(V *)(l + t * XB) = acc[t];
}

INLINE void FN(dots_with)(T *l, const T *a, const T *b, const T *ra, int64_t ras, const T *rb, int64_t rbs,
                          const T *bias, const int64_t *shift, int64_t nl, int64_t C, int64_t as, int64_t bs,
                          const int has_ra, const int has_rb) {
    int64_t j = 0;
    for (; j + OT <= nl; j += OT)
        FN(dot_tile)(l + j * XB, a, b, ra + j, ras, rb + j, rbs, bias ? bias + j : 0, shift + j, OT, C, as, bs,
                     has_ra, has_rb);
    for (; j < nl; j++)
        FN(dot_tile)(l + j * XB, a, b, ra + j, ras, rb + j, rbs, bias ? bias + j : 0, shift + j, 1, C, as, bs,
                     has_ra, has_rb);
}

/* The logits of a full block (a = q, b = k, ra = r^q, rb = r^k), or the backward's dp (a = dy, b = v, ra = r^v). */
static void FN(dots)(T *l, const T *a, const T *b, const T *ra, int64_t ras, const T *rb, int64_t rbs, const T *bias,
                     const int64_t *shift, int64_t nl, int64_t C, int64_t as, int64_t bs) {
    if (ra && rb) FN(dots_with)(l, a, b, ra, ras, rb, rbs, bias, shift, nl, C, as, bs, 1, 1);
    else if (ra) FN(dots_with)(l, a, b, ra, ras, rb, rbs, bias, shift, nl, C, as, bs, 1, 0);
    else if (rb) FN(dots_with)(l, a, b, ra, ras, rb, rbs, bias, shift, nl, C, as, bs, 0, 1);
    else FN(dots_with)(l, a, b, ra, ras, rb, rbs, bias, shift, nl, C, as, bs, 0, 0);
}

/* acc[t] = sum_j w_j (b_t[nbr_j] + rb[t, j]) for a tile of nt channels (b's bs apart, rb's rbs apart). */
INLINE void FN(agg_tile)(V *acc, const T *w, const T *b, const T *rb, int64_t rbs, const int64_t *shift, int64_t nl,
                         const int nt, int64_t bs, const int has_rb) {
#pragma GCC unroll 8
    for (int t = 0; t < nt; t++) acc[t] = (V){0};
    for (int64_t j = 0; j < nl; j++) {
        const V wv = *(const V *)(w + j * XB);
        const T *bj = b + shift[j];
#pragma GCC unroll 8
        for (int t = 0; t < nt; t++) {
            const V bv = *(const V *)(bj + t * bs);
            acc[t] += wv * (has_rb ? bv + rb[t * rbs + j] : bv);
        }
    }
}

/* out_c = inv * sum_j w_j (b_c[nbr_j] + rb[c, j]) for the C channels (forward's y), or out_c += the sum when inv is
 * NULL (backward's dq). */
static void FN(aggregate)(T *out, int64_t os, const V *inv, const T *w, const T *b, const T *rb, int64_t rbs,
                          const int64_t *shift, int64_t nl, int64_t C, int64_t bs) {
    V acc[CT];
    for (int64_t c0 = 0; c0 < C;) {
        const int nt = C - c0 >= CT ? CT : 1;
        const T *rc = rb ? rb + c0 * rbs : 0;
        if (nt == CT) {
            if (rc) FN(agg_tile)(acc, w, b + c0 * bs, rc, rbs, shift, nl, CT, bs, 1);
            else FN(agg_tile)(acc, w, b + c0 * bs, rc, rbs, shift, nl, CT, bs, 0);
        } else {
            if (rc) FN(agg_tile)(acc, w, b + c0 * bs, rc, rbs, shift, nl, 1, bs, 1);
            else FN(agg_tile)(acc, w, b + c0 * bs, rc, rbs, shift, nl, 1, bs, 0);
        }
        for (int t = 0; t < nt; t++) {
            V *dst = (V *)(out + (c0 + t) * os);
            if (inv) *dst = acc[t] * *inv;
            else *dst += acc[t];
        }
        c0 += nt;
    }
}

/* out_t = scale * sum_s x_s m[s * ms + t * mt] for the nt outputs (or out_t += the sum with ``add``): XB-lane
 * vectors x_s (xs apart) against a matrix of scalars, CT outputs per register tile. With r^v apart: the forward's
 * sums of the term (x = the weights, m = r^v, outputs = channels) and the backward's dp (x = their dy, outputs =
 * offsets). */
static void FN(lanes_by_matrix)(T *out, int64_t os, const T *x, int64_t xs, int64_t nx, const T *m, int64_t ms,
                                int64_t mt, int64_t nt, const V *scale, int add) {
    for (int64_t t0 = 0; t0 < nt; t0 += CT) {
        const int64_t tile = nt - t0 < CT ? nt - t0 : CT;
        V acc[CT] = {{0}};
        for (int64_t s = 0; s < nx; s++) {
            const V xv = *(const V *)(x + s * xs);
#pragma GCC unroll 8
            for (int64_t t = 0; t < CT; t++)
                if (t < tile) acc[t] += xv * m[s * ms + (t0 + t) * mt];
        }
        for (int64_t t = 0; t < tile; t++) {
            V *dst = (V *)(out + (t0 + t) * os);
            if (add) *dst += acc[t];
            else *dst = acc[t] * *scale;
        }
    }
}

/* term[c, live[j]] for the current block's nl live offsets, as a C x nl array whose channel stride goes to *cs: the
 * term itself when the block takes every offset, else a gathered copy in buf (NULL for an absent term). */
static const T *FN(live_term)(const T *term, int64_t C, int64_t K, const FN(scratch) *w, int64_t nl, T *buf,
                              int64_t *cs) {
    *cs = K;
    if (!term || nl == 0) return term;
    if (w->cur.live == w->all.live || w->cur.live[nl - 1] - w->cur.live[0] == nl - 1) /* a run of offsets */
        return term + w->cur.live[0];
    for (int64_t c = 0; c < C; c++)
        for (int64_t j = 0; j < nl; j++) buf[c * nl + j] = term[c * K + w->cur.live[j]];
    *cs = nl;
    return buf;
}

#define LIVE_TERMS(a, w, nl)                                                                                          \
    int64_t qcs, kcs, vcs, bcs;                                                                                       \
    const T *rq_l = FN(live_term)(rq, (a)->g.D, K, w, nl, (w)->tq, &qcs);                                             \
    const T *rk_l = FN(live_term)(rk, (a)->g.D, K, w, nl, (w)->tk, &kcs);                                             \
    const T *rv_l = FN(live_term)(rv, (a)->g.Dv, K, w, nl, (w)->tv, &vcs);                                            \
    const T *bias_l = FN(live_term)(bias, 1, K, w, nl, (w)->tb, &bcs)

/* -inf at the lanes of edge offsets whose neighbour lies outside the image (their rows are inside by liveness). */
static void FN(mask_edges)(T *l, const geom *g, const int64_t *live, const char *edge, int64_t nl, int64_t x0) {
    V lane;
    for (int64_t i = 0; i < XB; i++) lane[i] = (T)((x0 + i) * g->s - g->win_left); /* the lanes' column at ox = 0 */
    const V inf = (V){0} + INFINITY;
    for (int64_t j = 0; j < nl; j++) {
        if (!edge[j]) continue;
        const V px = lane + (T)(live[j] % g->kw * g->dil);
        const IV out = (px < 0) | (px >= (T)g->mask_w);
        *(V *)(l + j * XB) = (V)(((IV)*(const V *)(l + j * XB) & ~out) | ((IV)-inf & out));
    }
}

#define GROUP_TERMS(a, n)                                                                                             \
    const int64_t gi = (n) % (a)->g.G, K = (a)->g.K;                                                                  \
    const T *rq = (a)->rq ? (a)->rq + gi * (a)->g.D * K : 0, *rk = (a)->rk ? (a)->rk + gi * (a)->g.D * K : 0;         \
    const T *rv = (a)->rv ? (a)->rv + gi * (a)->g.Dv * K : 0, *bias = (a)->bias ? (a)->bias + gi * K : 0

/* A full stride-1 block of XB pixels starting at x0: y and lse. */
static void FN(forward_block)(const FN(args) *a, FN(scratch) *w, int64_t n, int64_t y, int64_t x0) {
    const geom *g = &a->g;
    GROUP_TERMS(a, n);
    const int64_t qs = g->Ho * g->Wo, ks = g->Hp * g->Wp, nl = live_offsets(g, y, x0, XB, &w->all, &w->own, &w->cur);
    const int64_t pix = y * g->Wo + x0, nbr = window_origin(g, y, x0);
    T *l = w->l;
    LIVE_TERMS(a, w, nl);
    FN(dots)(l, a->q + n * g->D * qs + pix, a->kp + n * g->D * ks + nbr, rq_l, qcs, rk_l, kcs, bias_l, w->cur.shift,
             nl, g->D, qs, ks);
    FN(mask_edges)(l, g, w->cur.live, w->cur.edge, nl, x0);
    V m = (V){0} - INFINITY, sum = {0};
    for (int64_t j = 0; j < nl; j++) m = FN(vmax)(m, *(const V *)(l + j * XB));
    for (int64_t j = 0; j < nl; j++) {
        *(V *)(l + j * XB) -= m;
        FN(exp_block)(l + j * XB);
        sum += *(const V *)(l + j * XB);
    }
    *(V *)(a->lse + n * qs + pix) = m + FN(log_block)(sum);
    const V inv = 1 / sum;
    T *yb = a->y + (n * g->Dv << g->apart) * qs + pix;
    FN(aggregate)(yb, qs, &inv, l, a->vp + n * g->Dv * ks + nbr, g->apart ? 0 : rv_l, vcs, w->cur.shift, nl, g->Dv,
                  ks);
    if (g->apart) FN(lanes_by_matrix)(yb + g->Dv * qs, qs, l, XB, nl, rv_l, 1, vcs, g->Dv, &inv, 0);
}

/* The same for nx <= XB pixels of any stride, one lane at a time. */
static void FN(forward_lanes)(const FN(args) *a, FN(scratch) *w, int64_t n, int64_t y, int64_t x0, int64_t nx) {
    const geom *g = &a->g;
    GROUP_TERMS(a, n);
    const int64_t s = g->s, qs = g->Ho * g->Wo, ks = g->Hp * g->Wp;
    const int64_t nl = live_offsets(g, y, x0, nx, &w->all, &w->own, &w->cur);
    const T *qb = a->q + n * g->D * qs + y * g->Wo + x0, *kb = a->kp + n * g->D * ks + window_origin(g, y, x0);
    const T *vb = a->vp + n * g->Dv * ks + window_origin(g, y, x0);
    T *l = w->l, m[XB], sum[XB];
    for (int64_t j = 0; j < nl; j++) {
        const int64_t o = w->cur.live[j];
        T *lj = l + j * XB;
        for (int64_t i = 0; i < nx; i++) lj[i] = bias ? bias[o] : 0;
        for (int64_t c = 0; c < g->D; c++) {
            const T r_q = rq ? rq[c * K + o] : 0, r_k = rk ? rk[c * K + o] : 0;
            const T *qc = qb + c * qs, *kc = kb + c * ks + w->cur.shift[j];
            for (int64_t i = 0; i < nx; i++) lj[i] += qc[i] * (kc[i * s] + r_q) + kc[i * s] * r_k;
        }
    }
    FN(mask_edges)(l, g, w->cur.live, w->cur.edge, nl, x0);
    for (int64_t i = 0; i < XB; i++) { m[i] = -INFINITY; sum[i] = 0; }
    for (int64_t j = 0; j < nl; j++)
        for (int64_t i = 0; i < nx; i++) m[i] = l[j * XB + i] > m[i] ? l[j * XB + i] : m[i];
    for (int64_t j = 0; j < nl; j++)
        for (int64_t i = 0; i < nx; i++) sum[i] += (l[j * XB + i] = EXP(l[j * XB + i] - m[i]));
    for (int64_t i = 0; i < nx; i++) a->lse[n * qs + y * g->Wo + x0 + i] = m[i] + LOG(sum[i]);
    for (int64_t c = 0; c < g->Dv << g->apart; c++) { /* with apart, channels Dv.. sum r^v alone */
        const int64_t cv = c % g->Dv, is_v = c < g->Dv, with_rv = rv && (g->apart ? !is_v : 1);
        T *yc = a->y + ((n * g->Dv << g->apart) + c) * qs + y * g->Wo + x0, acc[XB] = {0};
        for (int64_t j = 0; j < nl; j++) {
            const T r_v = with_rv ? rv[cv * K + w->cur.live[j]] : 0, *vc = vb + cv * ks + w->cur.shift[j];
            const T *p = l + j * XB;
            for (int64_t i = 0; i < nx; i++) acc[i] += p[i] * ((is_v ? vc[i * s] : 0) + r_v);
        }
        for (int64_t i = 0; i < nx; i++) yc[i] = acc[i] / sum[i];
    }
}

/* The backward of a full stride-1 block; lanes below ``skip`` belong to the block before it and contribute nothing. */
static void FN(backward_block)(const FN(args) *a, FN(scratch) *w, int64_t n, int64_t y, int64_t x0, int64_t skip) {
    const geom *g = &a->g;
    GROUP_TERMS(a, n);
    const int64_t qs = g->Ho * g->Wo, ks = g->Hp * g->Wp, nl = live_offsets(g, y, x0, XB, &w->all, &w->own, &w->cur);
    const int64_t pix = n * g->D * qs + y * g->Wo + x0, nbr = n * g->D * ks + window_origin(g, y, x0);
    const int64_t vpix = (n * g->Dv << g->apart) * qs + y * g->Wo + x0; /* y and dy: Dv channels, 2 Dv apart */
    const int64_t vnbr = n * g->Dv * ks + window_origin(g, y, x0);
    T *l = w->l, *ds = w->ds;
    LIVE_TERMS(a, w, nl);
    FN(dots)(l, a->q + pix, a->kp + nbr, rq_l, qcs, rk_l, kcs, bias_l, w->cur.shift, nl, g->D, qs, ks);
    FN(mask_edges)(l, g, w->cur.live, w->cur.edge, nl, x0);
    const V lse = *(const V *)(a->lse + n * qs + y * g->Wo + x0);
    for (int64_t j = 0; j < nl; j++) { /* l becomes the weights p */
        *(V *)(l + j * XB) -= lse;
        FN(exp_block)(l + j * XB);
        for (int64_t i = 0; i < skip; i++) l[j * XB + i] = 0;
    }
    V delta = {0};
    for (int64_t c = 0; c < g->Dv << g->apart; c++)
        delta += *(const V *)(a->dy + vpix + c * qs) * *(const V *)(a->y + vpix + c * qs);
    const T *rv_dp = g->apart ? 0 : rv_l; /* dp = dy·(v + r^v), or dy·v + dy'·r^v apart */
    FN(dots)(ds, a->dy + vpix, a->vp + vnbr, rv_dp, vcs, 0, 0, 0, w->cur.shift, nl, g->Dv, qs, ks);
    const T *dy_rv = a->dy + vpix + (g->apart ? g->Dv * qs : 0); /* the gradient that r^v's sums get */
    if (g->apart) FN(lanes_by_matrix)(ds, XB, dy_rv, qs, g->Dv, rv_l, vcs, 1, nl, 0, 1);
    for (int64_t j = 0; j < nl; j++) {
        const int64_t o = w->cur.live[j], sh = w->cur.shift[j];
        const V p = *(const V *)(l + j * XB), dsj = p * (*(const V *)(ds + j * XB) - delta);
        *(V *)(ds + j * XB) = dsj;
        if (w->gbias) w->gbias[o] += dsj;
        for (int64_t c = 0; c < g->Dv; c++) {
            const V pdy = p * *(const V *)(a->dy + vpix + c * qs);
            *(V *)(a->dvp + vnbr + c * ks + sh) += pdy;
            if (w->grv) w->grv[c * K + o] += g->apart ? p * *(const V *)(dy_rv + c * qs) : pdy;
        }
        for (int64_t c = 0; c < g->D; c++) {
            const V qc = *(const V *)(a->q + pix + c * qs);
            *(V *)(a->dkp + nbr + c * ks + sh) += dsj * (rk ? qc + rk[c * K + o] : qc);
            if (w->grq) w->grq[c * K + o] += dsj * qc;
            if (w->grk) w->grk[c * K + o] += dsj * *(const V *)(a->kp + nbr + c * ks + sh);
        }
    }
    FN(aggregate)(a->dq + pix, qs, 0, ds, a->kp + nbr, rq_l, qcs, w->cur.shift, nl, g->D, ks);
}

/* The backward of nx <= XB pixels of any stride, one lane at a time. */
static void FN(backward_lanes)(const FN(args) *a, FN(scratch) *w, int64_t n, int64_t y, int64_t x0, int64_t nx) {
    const geom *g = &a->g;
    GROUP_TERMS(a, n);
    const int64_t s = g->s, qs = g->Ho * g->Wo, ks = g->Hp * g->Wp;
    const int64_t nl = live_offsets(g, y, x0, nx, &w->all, &w->own, &w->cur);
    const int64_t pix = n * g->D * qs + y * g->Wo + x0, nbr = n * g->D * ks + window_origin(g, y, x0);
    const int64_t vpix = (n * g->Dv << g->apart) * qs + y * g->Wo + x0; /* y and dy: Dv channels, 2 Dv apart */
    const int64_t vnbr = n * g->Dv * ks + window_origin(g, y, x0);
    const int64_t rvpix = vpix + (g->apart ? g->Dv * qs : 0); /* the gradient that r^v's sums get */
    T *l = w->l, delta[XB] = {0}, dp[XB];
    for (int64_t j = 0; j < nl; j++) {
        const int64_t o = w->cur.live[j];
        for (int64_t i = 0; i < nx; i++) l[j * XB + i] = bias ? bias[o] : 0;
        for (int64_t c = 0; c < g->D; c++) {
            const T r_q = rq ? rq[c * K + o] : 0, r_k = rk ? rk[c * K + o] : 0;
            const T *qc = a->q + pix + c * qs, *kc = a->kp + nbr + c * ks + w->cur.shift[j];
            for (int64_t i = 0; i < nx; i++) l[j * XB + i] += qc[i] * (kc[i * s] + r_q) + kc[i * s] * r_k;
        }
    }
    FN(mask_edges)(l, g, w->cur.live, w->cur.edge, nl, x0);
    const T *lse = a->lse + n * qs + y * g->Wo + x0;
    for (int64_t c = 0; c < g->Dv << g->apart; c++)
        for (int64_t i = 0; i < nx; i++) delta[i] += a->dy[vpix + c * qs + i] * a->y[vpix + c * qs + i];
    for (int64_t j = 0; j < nl; j++) {
        const int64_t o = w->cur.live[j], sh = w->cur.shift[j];
        T *p = l + j * XB, *gb = w->gbias ? (T *)(w->gbias + o) : 0;
        for (int64_t i = 0; i < nx; i++) { p[i] = EXP(p[i] - lse[i]); dp[i] = 0; }
        for (int64_t c = 0; c < g->Dv; c++) {
            const T r_v = rv ? rv[c * K + o] : 0, *dyc = a->dy + vpix + c * qs, *vc = a->vp + vnbr + c * ks + sh;
            const T *dyr = a->dy + rvpix + c * qs; /* dyc unless apart */
            T *dvc = a->dvp + vnbr + c * ks + sh, *gv = w->grv ? (T *)(w->grv + c * K + o) : 0;
            for (int64_t i = 0; i < nx; i++) {
                dp[i] += dyc[i] * vc[i * s] + dyr[i] * r_v;
                dvc[i * s] += p[i] * dyc[i];
                if (gv) gv[i] += p[i] * dyr[i];
            }
        }
        for (int64_t i = 0; i < nx; i++) {
            dp[i] = p[i] * (dp[i] - delta[i]); /* dp becomes ds */
            if (gb) gb[i] += dp[i];
        }
        for (int64_t c = 0; c < g->D; c++) {
            const T r_q = rq ? rq[c * K + o] : 0, r_k = rk ? rk[c * K + o] : 0;
            const T *qc = a->q + pix + c * qs, *kc = a->kp + nbr + c * ks + sh;
            T *dqc = a->dq + pix + c * qs, *dkc = a->dkp + nbr + c * ks + sh;
            T *gq = w->grq ? (T *)(w->grq + c * K + o) : 0, *gk = w->grk ? (T *)(w->grk + c * K + o) : 0;
            for (int64_t i = 0; i < nx; i++) {
                dqc[i] += dp[i] * (kc[i * s] + r_q);
                dkc[i * s] += dp[i] * (qc[i] + r_k);
                if (gq) gq[i] += dp[i] * qc[i];
                if (gk) gk[i] += dp[i] * kc[i * s];
            }
        }
    }
}

static void FN(scratch_init)(FN(scratch) *w, const FN(args) *a, int grads) {
    const int64_t K = a->g.K, D = a->g.D, Dv = a->g.Dv;
    w->l = malloc(sizeof(T) * K * XB);
    w->ds = malloc(sizeof(T) * K * XB);
    for (int i = 0; i < 2; i++) {
        offsets *list = i ? &w->own : &w->all;
        list->live = malloc(sizeof(int64_t) * K);
        list->shift = malloc(sizeof(int64_t) * K);
        list->edge = malloc(K);
    }
    all_offsets(&a->g, &w->all, a->shifts);
    w->tq = malloc(sizeof(T) * D * K);
    w->tk = malloc(sizeof(T) * D * K);
    w->tv = malloc(sizeof(T) * Dv * K);
    w->tb = malloc(sizeof(T) * K);
    w->grq = grads && a->drq ? malloc(sizeof(V) * D * K) : 0;
    w->grk = grads && a->drk ? malloc(sizeof(V) * D * K) : 0;
    w->grv = grads && a->drv ? malloc(sizeof(V) * Dv * K) : 0;
    w->gbias = grads && a->dbias ? malloc(sizeof(V) * K) : 0;
}

static void FN(scratch_free)(FN(scratch) *w) {
    free(w->l); free(w->ds); free(w->tq); free(w->tk); free(w->tv); free(w->tb);
    for (int i = 0; i < 2; i++) {
        offsets *list = i ? &w->own : &w->all;
        free(list->live); free(list->shift); free(list->edge);
    }
    free(w->grq); free(w->grk); free(w->grv); free(w->gbias);
}

/* dst[i] += the sum of src[i]'s lanes, for i < count; then src is zeroed. */
static void FN(reduce_lanes)(T *dst, V *src, int64_t count) {
    if (!src) return;
    for (int64_t i = 0; i < count; i++) {
        T total = 0;
        for (int64_t lane = 0; lane < XB; lane++) total += src[i][lane];
        dst[i] += total;
        src[i] = (V){0};
    }
}

#define MAKE_ARGS(Y, LSE) /* the backward reads y and lse through the forward's (non-const) fields */                  \
    FN(args) a = {q, kp, vp, rq, rk, rv, bias, Y, LSE, shifts, 0, 0, 0, 0, 0, 0, 0, 0,                                \
                  {N, G, D, Dv, Ho, Wo, Hp, Wp, kh, kw, kh * kw, s, dil, mask_h, mask_w, win_top, win_left, pad_top,  \
                   pad_left, apart}}
#define GEOMETRY_PARAMS                                                                                               \
    int64_t N, int64_t G, int64_t D, int64_t Dv, int64_t Ho, int64_t Wo, int64_t Hp, int64_t Wp, int64_t kh,          \
    int64_t kw, int64_t s, int64_t dil, int64_t mask_h, int64_t mask_w, int64_t win_top, int64_t win_left,            \
    int64_t pad_top, int64_t pad_left, int64_t apart, int threads

void FN(nbr_attention_fwd)(const T *q, const T *kp, const T *vp, const T *rq, const T *rk, const T *rv, const T *bias,
                           T *y, T *lse, const int64_t *shifts, GEOMETRY_PARAMS) {
    MAKE_ARGS(y, lse);
    const int vec = s == 1 && Wo >= XB;
#pragma omp parallel num_threads(threads)
    {
        FN(scratch) w;
        FN(scratch_init)(&w, &a, 0);
#pragma omp for collapse(2) schedule(static)
        for (int64_t n = 0; n < N; n++)
            for (int64_t yy = 0; yy < Ho; yy++)
                for (int64_t x0 = 0; x0 < Wo; x0 += XB) {
                    if (vec) FN(forward_block)(&a, &w, n, yy, x0 + XB > Wo ? Wo - XB : x0);
                    else FN(forward_lanes)(&a, &w, n, yy, x0, Wo - x0 < XB ? Wo - x0 : XB);
                }
        FN(scratch_free)(&w);
    }
}

/* dq, dkp and dvp must be zeroed; drq, drk [threads,G,D,K], drv [threads,G,Dv,K] and dbias [threads,G,K] are zeroed
 * per-thread partial sums (or NULL). One thread per plane n, so the scatters into dkp[n] and dvp[n] never race. */
void FN(nbr_attention_bwd)(const T *q, const T *kp, const T *vp, const T *rq, const T *rk, const T *rv, const T *bias,
                           const T *y, const T *lse, const T *dy, T *dq, T *dkp, T *dvp, T *drq, T *drk, T *drv,
                           T *dbias, const int64_t *shifts, GEOMETRY_PARAMS) {
    MAKE_ARGS((T *)y, (T *)lse);
    a.dy = dy; a.dq = dq; a.dkp = dkp; a.dvp = dvp; a.drq = drq; a.drk = drk; a.drv = drv; a.dbias = dbias;
    const int vec = s == 1 && Wo >= XB;
    const int64_t K = kh * kw;
#pragma omp parallel num_threads(threads)
    {
        FN(scratch) w;
        FN(scratch_init)(&w, &a, 1);
        if (w.grq) memset(w.grq, 0, sizeof(V) * D * K);
        if (w.grk) memset(w.grk, 0, sizeof(V) * D * K);
        if (w.grv) memset(w.grv, 0, sizeof(V) * Dv * K);
        if (w.gbias) memset(w.gbias, 0, sizeof(V) * K);
        const int64_t t = omp_get_thread_num();
#pragma omp for schedule(dynamic)
        for (int64_t n = 0; n < N; n++) {
            for (int64_t yy = 0; yy < Ho; yy++)
                for (int64_t x0 = 0; x0 < Wo; x0 += XB) {
                    if (vec) {
                        const int64_t start = x0 + XB > Wo ? Wo - XB : x0;
                        FN(backward_block)(&a, &w, n, yy, start, x0 - start);
                    } else {
                        FN(backward_lanes)(&a, &w, n, yy, x0, Wo - x0 < XB ? Wo - x0 : XB);
                    }
                }
            const int64_t slot = t * G + n % G;
            if (drq) FN(reduce_lanes)(drq + slot * D * K, w.grq, D * K);
            if (drk) FN(reduce_lanes)(drk + slot * D * K, w.grk, D * K);
            if (drv) FN(reduce_lanes)(drv + slot * Dv * K, w.grv, Dv * K);
            if (dbias) FN(reduce_lanes)(dbias + slot * K, w.gbias, K);
        }
        FN(scratch_free)(&w);
    }
}

#undef MAKE_ARGS
#undef GEOMETRY_PARAMS
#undef GROUP_TERMS
#undef LIVE_TERMS
#undef FN
#undef V
#undef IV
