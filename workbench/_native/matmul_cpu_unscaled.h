/* The CPU GEMV's unscaled-lookup loop (matmul_cpu.pyx includes this after its byte-plane helpers; x86 only).

   bf16 activations, AVX512_BF16 and the 512-bit byte-plane loop's conditions (K % 128 == 0, blocksize % 64 == 0).
   The weights are dtype(table[c]) -- the codebook rounded to bf16 once per call, so the two byte planes are built
   once, not per block -- and the block scale multiplies each step's float32 partial sum, as the CUDA unscaled-lookup
   GEMM does (cuda_src/matmul_lut.cuh). Held to the reference's error_bound_unscaled, not rule 2 bit for bit.

   vdpbf16ps takes the planes' 16-bit words as they come out of the byte unpacks: 32 products per instruction into
   16 float32 lanes, no widening to float32 and half the multiply-add instructions of the rule-2 loop. It adds each
   exact bf16 product with its own rounding (round to nearest even), reads subnormal bf16 inputs as zero and flushes
   subnormal results. So the caller sends activation rows that hold a subnormal, and tables with one, to the rule-2
   loop (IEEE throughout); the flushed products and partial sums, each below 2^-126, are in the bound. A weight row
   with a NaN or Inf block scale takes the rule-2 loop as well, so that NaN and Inf land where rule 2 puts them.

   Order, per 128-weight step u (the 64 code bytes: unit u in 128-bit lanes 0-1, unit u + 64 in lanes 2-3):
   p = dp(dp(0, e0, x0), o0, x2) + dp(dp(0, e1, x1), o1, x3), then acc = fma(p, [s(u) x8, s(u + 64) x8], acc); at
   the end lane l + lane l + 8, and the 8 lanes as kbm_combine. M > 1 decodes two weight rows at a time (words and
   step scales into per-thread buffers) and replays the same instructions for four activation rows at a time, each
   activation vector loaded once for both weight rows: each output equals the one-row call's. */

/* word q (0..31) of decoded vector X (0: e0, 1: e1, 2: o0, 3: o1) of a 128-weight step -> the weight's index in
   the step (kbm_pair_index's layout, read as 16-bit words: the pair of words 2j, 2j + 1 is dword j) */
static int kbm_dp_index(int X, int q) { return 2 * (16 * (q >> 3) + 8 * (X & 1) + (q & 7)) + (X >> 1); }

/* every value finite (a NaN or Inf scale sends the weight row to the rule-2 loop) */
static inline int kbm_all_finite(const float* v, int64_t n) {
    int ok = 1;
    for (int64_t j = 0; j < n; ++j) ok &= (v[j] - v[j]) == 0.0f;
    return ok;
}

/* [s0 x8, s1 x8]: the scales of the step's two 64-weight units (lanes 0-7 hold unit u's sums) */
KBM_T512 __attribute__((always_inline))
static inline __m512 kbm_dp_scales(const float* s01) {
    double d; memcpy(&d, s01, 8);
    return _mm512_permutexvar_ps(_mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1),
                                 _mm512_castpd_ps(_mm512_set1_pd(d)));
}

/* one step's float32 partial sums (16 lanes): decoded words w[0..3] (e0, e1, o0, o1) against permuted bf16
   activation vectors x[0..3] */
KBM_T512 __attribute__((always_inline))
static inline __m512 kbm_dp_sum(const __m512i* w, const __m512i* x) {
    __m512 p0 = _mm512_dpbf16_ps(_mm512_setzero_ps(), (__m512bh)w[0], (__m512bh)x[0]);
    __m512 p1 = _mm512_dpbf16_ps(_mm512_setzero_ps(), (__m512bh)w[1], (__m512bh)x[1]);
    p0 = _mm512_dpbf16_ps(p0, (__m512bh)w[2], (__m512bh)x[2]);
    p1 = _mm512_dpbf16_ps(p1, (__m512bh)w[3], (__m512bh)x[3]);
    return _mm512_add_ps(p0, p1);
}

/* the 4 vectors of 32 words at p (a step's activations, or a decoded row's words), held in registers: the empty asm
   keeps GCC from reloading them at each use (it did, two loads per vdpbf16ps, and the replay was load-bound) */
KBM_T512 __attribute__((always_inline))
static inline void kbm_dp_load4(const uint16_t* p, __m512i* v) {
    for (int i = 0; i < 4; ++i) {
        v[i] = _mm512_loadu_si512((const void*)(p + 32 * i));
        __asm__("" : "+v"(v[i]));
    }
}

KBM_T512 __attribute__((always_inline))
static inline float kbm_dp_reduce(__m512 acc) {
    float l[16], h[8];
    _mm512_storeu_ps(l, acc);
    for (int i = 0; i < 8; ++i) h[i] = l[i] + l[i + 8];
    return kbm_combine(h);
}

/* weight row n by unscaled lookups: the dot product with xb into *y, or (wbuf != NULL) the row's decoded words into
   wbuf (K words) and its step scales into sbuf (K / 64 floats). plo / phi: the bf16 table's byte planes in every
   128-bit lane; c2p: the nested code values' byte planes (kbm_scales64, matmul_cpu.pyx) when a8 != NULL. Returns
   0, having computed nothing usable, when a block scale of the row is NaN or Inf. */
KBM_T512 __attribute__((always_inline))
static inline int kbm_row_dp_k(const uint16_t* xb, int64_t K, const uint8_t* packed, const float* s,
                               const uint8_t* a8, const uint8_t* c2p, float off, __m512i plo, __m512i phi, int64_t bs,
                               int64_t n, uint16_t* wbuf, float* sbuf, float* y) {
    const int64_t i0 = n * K;
    const uint8_t* row = packed + (i0 >> 1);
    const int lg = __builtin_ctzll((unsigned long long)bs);
    const int64_t blast = (i0 + K - 1) >> lg;
    float sc[KBM_SCALES];
    float s01[2];
    __m512 acc = _mm512_setzero_ps();
    int64_t u = 0;
    while (u < K) {                                 /* chunks of up to KBM_SCALES blocks, their scales checked first */
        const int64_t b = (i0 + u) >> lg;
        int64_t nb = blast - b + 1;
        if (nb > KBM_SCALES) nb = KBM_SCALES;
        const float* sp = s + b;
        if (a8 != NULL) { kbm_scales64(s, a8, c2p, off, b, (int)nb, sc); sp = sc; }
        if (!kbm_all_finite(sp, nb)) return 0;
        int64_t uend = ((b + nb) << lg) - i0;       /* a multiple of 128: i0 is, and blocks are >= 64 */
        if (uend > K) uend = K;
        for (; u < uend; u += 2 * KBM_UNIT) {
            const float* s2 = sp + (((i0 + u) >> lg) - b);
            if (lg > 6) { s01[0] = s01[1] = s2[0]; s2 = s01; }   /* both units in one block */
            __m512i e0, e1, o0, o1;
            kbm_decode512(row, u, plo, phi, &e0, &e1, &o0, &o1);
            if (wbuf != NULL) {
                uint16_t* w = wbuf + u;
                _mm512_storeu_si512((void*)w, e0);        _mm512_storeu_si512((void*)(w + 32), e1);
                _mm512_storeu_si512((void*)(w + 64), o0); _mm512_storeu_si512((void*)(w + 96), o1);
                sbuf[u >> 6] = s2[0]; sbuf[(u >> 6) + 1] = s2[1];
                continue;
            }
            const __m512i w[4] = {e0, e1, o0, o1};
            __m512i x[4];
            kbm_dp_load4(xb + u, x);
            acc = _mm512_fmadd_ps(kbm_dp_sum(w, x), kbm_dp_scales(s2), acc);
        }
    }
    if (wbuf == NULL) *y = kbm_dp_reduce(acc);
    return 1;
}

#define KBM_DP_MAX_M 32   /* the adapter's PLANES_MAX_M */

/* activation row x against a weight row decoded into w / sc (kbm_row_dp_k with wbuf): the one-row loop's
   instructions */
KBM_T512 __attribute__((always_inline))
static inline float kbm_dp_replay(const uint16_t* x, const uint16_t* w, const float* sc, int64_t K) {
    __m512 acc = _mm512_setzero_ps();
    for (int64_t u = 0; u < K; u += 2 * KBM_UNIT) {
        __m512i wv[4], xv[4];
        kbm_dp_load4(w + u, wv);
        kbm_dp_load4(x + u, xv);
        acc = _mm512_fmadd_ps(kbm_dp_sum(wv, xv), kbm_dp_scales(sc + (u >> 6)), acc);
    }
    return kbm_dp_reduce(acc);
}

/* steps u0 .. u1 of activation rows x[0..3] against decoded weight rows (wA, sA) and (wB, sB), accumulating into
   acc[0..7] (memory: x[i].A at 2 i, x[i].B at 2 i + 1): each of a step's activation vectors loaded once for both
   weight rows and each weight vector once for the four activation rows; each output by the one-row loop's
   instructions, in its order of steps */
KBM_T512 __attribute__((always_inline))
static inline void kbm_dp_replay42(const uint16_t* const* x, const uint16_t* wA, const float* sA, const uint16_t* wB,
                                   const float* sB, int64_t u0, int64_t u1, float* acc) {
    __m512 a[8];
    for (int i = 0; i < 8; ++i) a[i] = _mm512_load_ps(acc + 16 * i);
    for (int64_t u = u0; u < u1; u += 2 * KBM_UNIT) {
        __m512i va[4], vb[4], xv[4];
        kbm_dp_load4(wA + u, va);
        kbm_dp_load4(wB + u, vb);
        const __m512 svA = kbm_dp_scales(sA + (u >> 6)), svB = kbm_dp_scales(sB + (u >> 6));
        for (int i = 0; i < 4; ++i) {
            kbm_dp_load4(x[i] + u, xv);
            a[2 * i] = _mm512_fmadd_ps(kbm_dp_sum(va, xv), svA, a[2 * i]);
            a[2 * i + 1] = _mm512_fmadd_ps(kbm_dp_sum(vb, xv), svB, a[2 * i + 1]);
        }
    }
    for (int i = 0; i < 8; ++i) _mm512_store_ps(acc + 16 * i, a[i]);
}

/* activation words per pass of the pair replay: the passes walk K in slices whose activations (for every row) and
   weight words stay in L1 (all of K at once thrashed it from M = 4 on) */
#define KBM_DP_SLICE_WORDS 8192

/* M = 1 (the caller has checked that the activation row has no subnormal and the table is bf16-normal): weight
   row n by unscaled lookups, or by the rule-2 512-bit loop on xp when the row has a NaN or Inf scale */
KBM_T512
static float kbm_row_dp512(const float* xp, const uint16_t* xb, int64_t K, const uint8_t* packed, const float* s,
                           const uint8_t* a8, const float* code2, const uint8_t* c2p, float off, const float* table,
                           const uint8_t* planes, int64_t bs, int64_t n) {
    float y;
    if (kbm_row_dp_k(xb, K, packed, s, a8, c2p, off, _mm512_loadu_si512((const void*)planes),
                           _mm512_loadu_si512((const void*)(planes + 64)), bs, n, NULL, NULL, &y))
        return y;
    return kbm_row512_k(xp, K, packed, s, a8, code2, c2p, off, table, bs, 1, n, NULL);
}

/* M > 1: weight rows n0 and n1 (n1 == n0: one row), each decoded once for the activation rows with dp[m] (words
   into w16 + r K, step scales into sc + r K / 64) and replayed four activation rows at a time; a weight row with a
   NaN or Inf scale, and the activation rows without dp[m], by rule 2 (decoded into wbuf). Every output takes the
   instructions of its one-row call. */
KBM_T512
static void kbm_rows_dp512(const float* xp, const uint16_t* xb, const uint8_t* dp, int64_t M, int64_t N, int64_t K,
                           const uint8_t* packed, const float* s, const uint8_t* a8, const float* code2,
                           const uint8_t* c2p, float off, const float* table, const uint8_t* planes, int64_t bs,
                           int64_t n0, int64_t n1, float* wbuf, uint16_t* w16, float* sc, float* y) {
    const int64_t ns[2] = {n0, n1};
    const int nw = n1 != n0 ? 2 : 1;
    const int64_t ss = K >> 6;                         /* step scales per row: two per 128-weight step */
    int64_t rows[KBM_DP_MAX_M];
    int64_t nr = 0;
    for (int64_t m = 0; m < M && nr < KBM_DP_MAX_M; ++m)
        if (dp[m]) rows[nr++] = m;
    int done[2] = {0, 0};
    for (int r = 0; r < nw && nr > 0; ++r)
        done[r] = kbm_row_dp_k(xb, K, packed, s, a8, c2p, off, _mm512_loadu_si512((const void*)planes),
                               _mm512_loadu_si512((const void*)(planes + 64)), bs, ns[r], w16 + r * K, sc + r * ss,
                               NULL);
    if (nw == 2 && done[0] && done[1]) {
        /* groups of four activation rows (a short last group repeats its last row); per group and weight row a
           float32 accumulator vector, carried in memory from one K slice to the next */
        float acc[(KBM_DP_MAX_M + 3) / 4 * 8 * 16] __attribute__((aligned(64)));
        const int64_t ng = (nr + 3) / 4;
        int64_t slice = KBM_DP_SLICE_WORDS / (4 * ng) / (2 * KBM_UNIT) * (2 * KBM_UNIT);
        if (slice < 2 * KBM_UNIT) slice = 2 * KBM_UNIT;
        memset(acc, 0, sizeof(float) * 8 * 16 * ng);
        for (int64_t u0 = 0; u0 < K; u0 += slice) {
            const int64_t u1 = u0 + slice < K ? u0 + slice : K;
            for (int64_t gi = 0; gi < ng; ++gi) {
                const uint16_t* x[4];
                for (int q = 0; q < 4; ++q) x[q] = xb + rows[4 * gi + q < nr ? 4 * gi + q : nr - 1] * K;
                kbm_dp_replay42(x, w16, sc, w16 + K, sc + ss, u0, u1, acc + 128 * gi);
            }
        }
        for (int64_t i = 0; i < nr; ++i) {
            const float* a = acc + 128 * (i / 4) + 32 * (i % 4);
            y[rows[i] * N + n0] = kbm_dp_reduce(_mm512_load_ps(a));
            y[rows[i] * N + n1] = kbm_dp_reduce(_mm512_load_ps(a + 16));
        }
    } else {
        for (int r = 0; r < nw; ++r)
            if (done[r])
                for (int64_t i = 0; i < nr; ++i)
                    y[rows[i] * N + ns[r]] = kbm_dp_replay(xb + rows[i] * K, w16 + r * K, sc + r * ss, K);
    }
    for (int r = 0; r < nw; ++r) {
        if (done[r] && nr == M) continue;
        kbm_row512_k(xp, K, packed, s, a8, code2, c2p, off, table, bs, 1, ns[r], wbuf);
        for (int64_t m = 0; m < M; ++m)
            if (!(done[r] && dp[m])) y[m * N + ns[r]] = kbm_replay512(xp + m * K, K, wbuf);
    }
}
