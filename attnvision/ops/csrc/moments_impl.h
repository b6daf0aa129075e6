/* dot_moments and dot_moments_bwd for one element type, included by moments_cpu.c with T and SUF defined. */
#define FN(name) CAT(name, SUF)
#define V FN(mvec)
#define VL ((int64_t)(VBYTES / sizeof(T)))
typedef T V __attribute__((vector_size(VBYTES), aligned(sizeof(T))));

/* Lanes of the vector at x that the vectors before it in the row did not cover (all of them but in the last). */
static inline V FN(fresh_lanes)(int64_t x, int64_t covered) {
    V m;
    for (int64_t i = 0; i < VL; i++) m[i] = x + i >= covered;
    return m;
}

void FN(dot_moments)(const T *restrict q, const T *restrict kp, T *restrict sums, int64_t N, int64_t D, int64_t Ho,
                     int64_t Wo, int64_t Hp, int64_t Wp, int64_t kh, int64_t kw, int64_t dil, int threads) {
    const int64_t nvec = Wo >= VL ? Wo : 0;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++) {
        V s1 = {0}, s2 = {0};
        T t1 = 0, t2 = 0;
        for (int64_t y = 0; y < Ho; y++)
            for (int64_t o = 0; o < kh * kw; o++) {
                const T *qrow = q + (n * D * Ho + y) * Wo;
                const T *krow = kp + (n * D * Hp + y + o / kw * dil) * Wp + o % kw * dil;
                for (int64_t x0 = 0; x0 < nvec; x0 += VL) {
                    const int64_t x = x0 + VL > Wo ? Wo - VL : x0;
                    V l = {0};
                    for (int64_t d = 0; d < D; d++)
                        l += *(const V *)(qrow + d * Ho * Wo + x) * *(const V *)(krow + d * Hp * Wp + x);
                    if (x != x0) l *= FN(fresh_lanes)(x, x0);
                    s1 += l;
                    s2 += l * l;
                }
                for (int64_t x = nvec; x < Wo; x++) {
                    T l = 0;
                    for (int64_t d = 0; d < D; d++) l += qrow[d * Ho * Wo + x] * krow[d * Hp * Wp + x];
                    t1 += l;
                    t2 += l * l;
                }
            }
        for (int64_t i = 0; i < VL; i++) { t1 += s1[i]; t2 += s2[i]; }
        sums[2 * n] = t1;
        sums[2 * n + 1] = t2;
    }
}

/* dq is written, dkp accumulated into (zeroed by the caller). */
void FN(dot_moments_bwd)(const T *restrict q, const T *restrict kp, const T *restrict coef, T *restrict dq,
                         T *restrict dkp, int64_t N, int64_t D, int64_t Ho, int64_t Wo, int64_t Hp, int64_t Wp,
                         int64_t kh, int64_t kw, int64_t dil, int threads) {
    const int64_t nvec = Wo >= VL ? Wo : 0;
#pragma omp parallel for schedule(static) num_threads(threads)
    for (int64_t n = 0; n < N; n++) {
        const T a = coef[2 * n], b = coef[2 * n + 1];
        for (int64_t y = 0; y < Ho; y++) {
            const T *qrow = q + (n * D * Ho + y) * Wo;
            T *dqrow = dq + (n * D * Ho + y) * Wo;
            for (int64_t x0 = 0; x0 < nvec; x0 += VL) {
                const int64_t x = x0 + VL > Wo ? Wo - VL : x0;
                const V fresh = FN(fresh_lanes)(x, x0);
                for (int64_t d = 0; d < D; d++) *(V *)(dqrow + d * Ho * Wo + x) = (V){0};
                for (int64_t o = 0; o < kh * kw; o++) {
                    const int64_t at = (n * D * Hp + y + o / kw * dil) * Wp + o % kw * dil + x;
                    V l = {0};
                    for (int64_t d = 0; d < D; d++)
                        l += *(const V *)(qrow + d * Ho * Wo + x) * *(const V *)(kp + at + d * Hp * Wp);
                    const V w = a + b * l;
                    for (int64_t d = 0; d < D; d++) {
                        *(V *)(dqrow + d * Ho * Wo + x) += w * *(const V *)(kp + at + d * Hp * Wp);
                        *(V *)(dkp + at + d * Hp * Wp) += w * fresh * *(const V *)(qrow + d * Ho * Wo + x);
                    }
                }
            }
            for (int64_t x = nvec; x < Wo; x++) {
                for (int64_t d = 0; d < D; d++) dqrow[d * Ho * Wo + x] = 0;
                for (int64_t o = 0; o < kh * kw; o++) {
                    const int64_t at = (n * D * Hp + y + o / kw * dil) * Wp + o % kw * dil + x;
                    T l = 0;
                    for (int64_t d = 0; d < D; d++) l += qrow[d * Ho * Wo + x] * kp[at + d * Hp * Wp];
                    const T w = a + b * l;
                    for (int64_t d = 0; d < D; d++) {
                        dqrow[d * Ho * Wo + x] += w * kp[at + d * Hp * Wp];
                        dkp[at + d * Hp * Wp] += w * qrow[d * Ho * Wo + x];
                    }
                }
            }
        }
    }
}

#undef FN
#undef V
#undef VL
