/* Tiled int8 GEMM for the K-quants of llama.cpp's Q4_K_M mix (Q4_K, Q5_K, Q6_K against Q8_K
 * activations) and for Q4_0 (against Q8_0), the batched counterpart of kern__gemm_avx2's Q8_0
 * tile for kern_matmul's prefill and grouped-expert products.
 *
 * Decode once, use for a whole slice of tokens: for every weight superblock (256 elements) the
 * RM rows of a tile are unpacked into a small stage in L1 (one unsigned byte per quant, the
 * sub-block scales as broadcast 16-bit vectors, the min/offset weights, the float factors);
 * then every token of the slice, RN at a time, multiplies against the stage with the same three
 * instructions per 32 elements and pair of (row, token) as the Q8_0 tile: maddubs (unsigned
 * quant x signed activation), madd by the sub-block scale (widening and scaling in one), add.
 * Only the float accumulators, one vector per (row, token), go back and forth to L1 per
 * superblock.
 *
 * The integer sums are those of dot_avx2.c's kernels and the min/offset terms come from the same
 * Q8_K bsums, so every result equals kern__dot_avx2's up to the order of float additions:
 *   Q4_K / Q5_K: dw*dx*sum(sc*q*x) - dminw*dx*sum(m * bsum), the mins as a second float term;
 *   Q6_K: dw*dx*(sum(sc*q*x) - 32*sum(sc*bsum)), the offset removed in integers first;
 *   Q4_0: blocks of 32 with their own fp16 scale, eight of them staged per "superblock"; the
 *         signed quant's sign moves onto the activation (vpsignb) as in the Q8_0 tile, and the
 *         activation scales come pre-converted (xd).
 * Overflow: a maddubs pair is at most 2 * 63 * 128 (Q6_K), its madd by a scale of |.| <= 128
 * stays far inside int32, and so do the sums over 256 elements.
 *
 * A single activation row (decode) goes to the single-row dot of dot_avx2.c, which streams the
 * weights with prefetch; staging would only add stores there.
 */
#include <immintrin.h>
#include <string.h>

#include "kernels/kern-int.h"

#define QK_K KERN_QK_K
#define RM 2          /* weight rows per tile */
#define RN 4          /* tokens per tile */
#define SLICE_TOK 64  /* tokens whose accumulators stay in L1 while a row pair is staged */

enum { KIND_Q4_K, KIND_Q5_K, KIND_Q6_K, KIND_Q4_0 };

/* One weight row's superblock, unpacked. */
typedef struct {
    __m256i sc[8];  /* sub-block s (32 elements): the 16-bit scale of each maddubs pair sum */
    __m256i corr;   /* 16 int16 against the 16 bsums: Q4_K/Q5_K min of each 16-group (m of its
                     * sub-block), Q6_K the group's scale; Q4_0 unused */
    __m256 dw;      /* the row's d (Q4_0: unused) */
    __m256 dmin;    /* Q4_K/Q5_K dmin (Q4_0: the eight blocks' d, one per lane) */
    _Alignas(32) uint8_t q[QK_K]; /* quants in activation order: unsigned (K), signed (Q4_0) */
} stage_t;

static inline float hsum_ps(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* ---- decoding one superblock of one row ---- */

/* Scales and mins shared by Q4_K and Q5_K: sub-block s (elements 32s..32s+31) has six-bit
 * scale sc_s and min m_s, and its two 16-groups are bsums 2s, 2s+1. The 12 bytes unpack as in
 * dot_avx2.c's unpack_k4_scales: entries 0..3 are the low 6 bits of bytes 0..3 / 4..7, entries
 * 4..7 a nibble of bytes 8..11 and the spare top 2 bits of bytes 0..3 / 4..7. */
static inline void stage_k4_scales(stage_t *st, const uint8_t *s12, uint16_t d, uint16_t dmin)
{
    uint32_t u[3];
    memcpy(u, s12, 12);
    const uint32_t low6 = 0x3f3f3f3f, low4 = 0x0f0f0f0f, low2 = 0x03030303;
    const uint32_t sc0 = u[0] & low6, m0 = u[1] & low6;
    const uint32_t sc1 = (u[2] & low4) | (((u[0] >> 6) & low2) << 4);
    const uint32_t m1 = ((u[2] >> 4) & low4) | (((u[1] >> 6) & low2) << 4);
    /* Scales as 16-bit values in both 128-bit halves; scale s is bytes 2s, 2s+1 of each. */
    const __m256i sc16 = _mm256_broadcastsi128_si256(
        _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, (int)sc1, (int)sc0)));
#pragma GCC unroll 8
    for (int k = 0; k < 8; k++)
        st->sc[k] = _mm256_shuffle_epi8(sc16, _mm256_set1_epi16((short)(0x0100 + 0x0202 * k)));
    const __m128i mb = _mm_set_epi32(0, 0, (int)m1, (int)m0);
    st->corr = _mm256_cvtepu8_epi16(_mm_unpacklo_epi8(mb, mb));
    st->dw = _mm256_set1_ps(_cvtsh_ss(d));
    st->dmin = _mm256_set1_ps(_cvtsh_ss(dmin));
}

static inline void decode_q4_k(const kern_block_q4_k *b, stage_t *st)
{
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    stage_k4_scales(st, b->scales, b->d, b->dmin);
    /* 32 bytes j: low nibbles are sub-block 2j, high nibbles sub-block 2j+1. */
    for (int j = 0; j < 4; j++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *)(b->qs + 32 * j));
        _mm256_store_si256((__m256i *)(st->q + 64 * j), _mm256_and_si256(q, low4));
        _mm256_store_si256((__m256i *)(st->q + 64 * j + 32),
                           _mm256_and_si256(_mm256_srli_epi16(q, 4), low4));
    }
}

static inline void decode_q5_k(const kern_block_q5_k *b, stage_t *st)
{
    const __m256i low4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    stage_k4_scales(st, b->scales, b->d, b->dmin);
    /* Bit s of qh[l] is the fifth bit of element l of sub-block s; 16-bit shifts leak bits
     * across bytes, but only bit 0 is kept. */
    const __m256i hb = _mm256_loadu_si256((const __m256i *)b->qh);
    for (int j = 0; j < 4; j++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *)(b->qs + 32 * j));
        const __m256i h0 = _mm256_and_si256(_mm256_srli_epi16(hb, 2 * j), one);
        const __m256i h1 = _mm256_and_si256(_mm256_srli_epi16(hb, 2 * j + 1), one);
        _mm256_store_si256((__m256i *)(st->q + 64 * j),
                           _mm256_or_si256(_mm256_and_si256(q, low4), _mm256_slli_epi16(h0, 4)));
        _mm256_store_si256((__m256i *)(st->q + 64 * j + 32),
                           _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), low4),
                                           _mm256_slli_epi16(h1, 4)));
    }
}

/* Q6_K: q = (4 low bits | 2 high bits << 4) - 32, the unsigned 0..63 form staged; a signed scale
 * per 16 elements, so sub-block s's pair sums 0..7 (elements 0..15) take scale 2s and 8..15
 * scale 2s + 1. */
static inline void decode_q6_k(const kern_block_q6_k *b, stage_t *st)
{
    const __m256i low4 = _mm256_set1_epi8(0x0F), low2 = _mm256_set1_epi8(0x03);
    const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)b->scales));
    /* Scales 8h..8h+7 in both 128-bit halves, then 2s in the low half and 2s+1 in the high
     * half by one in-lane shuffle (two calls with literal masks: clang wants constants). */
    const __m256i s0 = _mm256_permute4x64_epi64(sc16, 0x44), s1 = _mm256_permute4x64_epi64(sc16, 0xEE);
#pragma GCC unroll 8
    for (int s = 0; s < 8; s++) {
        const int k = s % 4;
        const __m256i idx = _mm256_set_m128i(_mm_set1_epi16((short)(0x0302 + 0x0404 * k)),
                                             _mm_set1_epi16((short)(0x0100 + 0x0404 * k)));
        st->sc[s] = _mm256_shuffle_epi8(s < 4 ? s0 : s1, idx);
    }
    st->corr = sc16;
    st->dw = _mm256_set1_ps(_cvtsh_ss(b->d));
    /* Half h: ql[64h..64h+31] low/high nibbles are elements 128h + 0..31 / 64..95,
     * ql[64h+32..64h+63] elements 32..63 / 96..127; bits 2k, 2k+1 of qh[32h + l] are the top
     * bits of quarter k. */
    for (int h = 0; h < 2; h++) {
        const __m256i l0 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h));
        const __m256i l1 = _mm256_loadu_si256((const __m256i *)(b->ql + 64 * h + 32));
        const __m256i hi = _mm256_loadu_si256((const __m256i *)(b->qh + 32 * h));
        for (int k = 0; k < 4; k++) {
            const __m256i lo = k & 1 ? l1 : l0;
            const __m256i nib = k < 2 ? lo : _mm256_srli_epi16(lo, 4);
            const __m256i top = _mm256_and_si256(_mm256_srli_epi16(hi, 2 * k), low2);
            _mm256_store_si256(
                (__m256i *)(st->q + 128 * h + 32 * k),
                _mm256_or_si256(_mm256_and_si256(nib, low4), _mm256_slli_epi16(top, 4)));
        }
    }
}

/* nk <= 8 Q4_0 blocks: signed quants nibble - 8 (element j < 16 the low nibble of byte j,
 * 16 + j its high nibble), their fp16 scales as one vector. */
static inline void decode_q4_0(const kern_block_q4_0 *b, int nk, stage_t *st)
{
    const __m256i low4 = _mm256_set1_epi8(0x0F), eight = _mm256_set1_epi8(8);
    uint16_t d[8] = {0};
    for (int k = 0; k < nk; k++) {
        const __m128i v = _mm_loadu_si128((const __m128i *)b[k].qs);
        const __m256i q = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(v, 4), v), low4);
        _mm256_store_si256((__m256i *)(st->q + 32 * k), _mm256_sub_epi8(q, eight));
        d[k] = b[k].d;
    }
    st->dmin = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)d));
}

/* nk: Q4_0 blocks in this superblock (a row's last one may hold fewer than 8). */
static inline void decode(const int kind, const uint8_t *w, int nk, stage_t *st)
{
    switch (kind) {
    case KIND_Q4_K: decode_q4_k((const kern_block_q4_k *)w, st); break;
    case KIND_Q5_K: decode_q5_k((const kern_block_q5_k *)w, st); break;
    case KIND_Q6_K: decode_q6_k((const kern_block_q6_k *)w, st); break;
    default: decode_q4_0((const kern_block_q4_0 *)w, nk, st); break;
    }
}

/* ---- one superblock of a tile: nr <= RM staged rows by nx <= RN tokens ----
 * x points at superblock i of the first token (tokens xs bytes apart); acc[r * SLICE_TOK + j]
 * is the float accumulator of (row r, token j). Constants in each instance so the sums live in
 * registers: RM * RN integer sums, RM weight vectors, one activation vector. */
static inline __attribute__((always_inline)) void step_kq(const stage_t *st, const uint8_t *x,
                                                           size_t xs, __m256 *acc, const int nr,
                                                           const int nx, const int kind)
{
    __m256i sum[RM][RN];
#pragma GCC unroll 4
    for (int j = 0; j < nx; j++) {
        const kern_block_q8_k *xb = (const kern_block_q8_k *)(x + j * xs);
#pragma GCC unroll 2
        for (int r = 0; r < nr; r++) {
            if (kind == KIND_Q6_K) {
                const __m256i bs = _mm256_loadu_si256((const __m256i *)xb->bsums);
                sum[r][j] = _mm256_sub_epi32(_mm256_setzero_si256(),
                                             _mm256_slli_epi32(_mm256_madd_epi16(st[r].corr, bs),
                                                               5));
            } else {
                sum[r][j] = _mm256_setzero_si256();
            }
        }
    }
#pragma GCC unroll 8
    for (int s = 0; s < 8; s++) {
        __m256i q[RM];
#pragma GCC unroll 2
        for (int r = 0; r < nr; r++) q[r] = _mm256_load_si256((const __m256i *)(st[r].q + 32 * s));
#pragma GCC unroll 4
        for (int j = 0; j < nx; j++) {
            const kern_block_q8_k *xb = (const kern_block_q8_k *)(x + j * xs);
            const __m256i y = _mm256_loadu_si256((const __m256i *)(xb->qs + 32 * s));
#pragma GCC unroll 2
            for (int r = 0; r < nr; r++) {
                const __m256i p = _mm256_maddubs_epi16(q[r], y);
                sum[r][j] = _mm256_add_epi32(sum[r][j], _mm256_madd_epi16(p, st[r].sc[s]));
            }
        }
    }
#pragma GCC unroll 4
    for (int j = 0; j < nx; j++) {
        const kern_block_q8_k *xb = (const kern_block_q8_k *)(x + j * xs);
        const __m256 dx = _mm256_broadcast_ss(&xb->d);
        const __m256i bs = _mm256_loadu_si256((const __m256i *)xb->bsums);
#pragma GCC unroll 2
        for (int r = 0; r < nr; r++) {
            __m256 a = acc[r * SLICE_TOK + j];
            a = _mm256_fmadd_ps(_mm256_mul_ps(dx, st[r].dw), _mm256_cvtepi32_ps(sum[r][j]), a);
            if (kind != KIND_Q6_K) {
                const __m256 mins = _mm256_cvtepi32_ps(_mm256_madd_epi16(st[r].corr, bs));
                a = _mm256_fnmadd_ps(_mm256_mul_ps(dx, st[r].dmin), mins, a);
            }
            acc[r * SLICE_TOK + j] = a;
        }
    }
}

/* The Q4_0 version: nk <= 8 blocks of 32 against Q8_0 activations, each block's integer sum
 * scaled by dw * dx in float, as the Q8_0 tile does. x points at block 8i of the first token, xd
 * at its f32 scale (tokens xds floats apart). */
static inline __attribute__((always_inline)) void step_q4_0(const stage_t *st, const uint8_t *x,
                                                             size_t xs, const float *xd,
                                                             size_t xds, __m256 *acc,
                                                             const int nr, const int nx,
                                                             const int nk)
{
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 a[RM][RN];
    _Alignas(32) float dw[RM][8];
#pragma GCC unroll 2
    for (int r = 0; r < nr; r++) {
        _mm256_store_ps(dw[r], st[r].dmin);
#pragma GCC unroll 4
        for (int j = 0; j < nx; j++) a[r][j] = acc[r * SLICE_TOK + j];
    }
#pragma GCC unroll 8
    for (int k = 0; k < nk; k++) {
        __m256i q[RM], aq[RM];
#pragma GCC unroll 2
        for (int r = 0; r < nr; r++) {
            q[r] = _mm256_load_si256((const __m256i *)(st[r].q + 32 * k));
            aq[r] = _mm256_sign_epi8(q[r], q[r]);
        }
#pragma GCC unroll 4
        for (int j = 0; j < nx; j++) {
            const kern_block_q8_0 *xb = (const kern_block_q8_0 *)(x + j * xs) + k;
            const __m256i y = _mm256_loadu_si256((const __m256i *)xb->qs);
            const __m256 dx = _mm256_broadcast_ss(xd + j * xds + k);
#pragma GCC unroll 2
            for (int r = 0; r < nr; r++) {
                __m256i p = _mm256_maddubs_epi16(aq[r], _mm256_sign_epi8(y, q[r]));
                p = _mm256_madd_epi16(p, ones);
                a[r][j] = _mm256_fmadd_ps(_mm256_mul_ps(_mm256_broadcast_ss(&dw[r][k]), dx),
                                          _mm256_cvtepi32_ps(p), a[r][j]);
            }
        }
    }
#pragma GCC unroll 2
    for (int r = 0; r < nr; r++)
#pragma GCC unroll 4
        for (int j = 0; j < nx; j++) acc[r * SLICE_TOK + j] = a[r][j];
}

#define STEP_CASE(NR, NX)                                                                          \
    case (NR) * 8 + (NX):                                                                          \
        if (kind != KIND_Q4_0) step_kq(st, x, xs, acc, NR, NX, kind);                              \
        else if (nk == 8) step_q4_0(st, x, xs, xd, xds, acc, NR, NX, 8);                           \
        else step_q4_0(st, x, xs, xd, xds, acc, NR, NX, nk);                                       \
        break;

static inline __attribute__((always_inline)) void step_any(const int kind, const stage_t *st,
                                                            const uint8_t *x, size_t xs,
                                                            const float *xd, size_t xds,
                                                            __m256 *acc, int nr, int nx, int nk)
{
    switch (nr * 8 + nx) {
        STEP_CASE(2, 4) STEP_CASE(2, 3) STEP_CASE(2, 2) STEP_CASE(2, 1)
        STEP_CASE(1, 4) STEP_CASE(1, 3) STEP_CASE(1, 2) STEP_CASE(1, 1)
    default: __builtin_unreachable();
    }
}
_Static_assert(RM == 2 && RN == 4, "step_any covers 1..RM x 1..RN");

/* ---- the product ---- */

static inline __attribute__((always_inline)) void gemm(const int kind, kern_type_t wt, int64_t n,
                                                       const uint8_t *w, size_t ws, int64_t nr,
                                                       const uint8_t *xq, size_t xs,
                                                       const float *xd, int64_t nx, float *out,
                                                       size_t os)
{
    if (nx == 1) {
        const kern__dot_fn dot = kern__dot_avx2[wt];
        for (int64_t r = 0; r < nr; r++) out[r] = dot(n, w + r * ws, xq);
        return;
    }
    /* Bytes of one staged superblock in the weight row and in an activation row, and the f32
     * activation scales per staged superblock (Q4_0 only). */
    const size_t wsb = kind == KIND_Q4_0 ? 8 * sizeof(kern_block_q4_0) : kern_row_bytes(wt, QK_K);
    const size_t xsb = kind == KIND_Q4_0 ? 8 * sizeof(kern_block_q8_0) : sizeof(kern_block_q8_k);
    const int64_t xds = n / KERN_QK32;
    /* Q4_0 rows need not hold whole superblocks: the last one stages the remaining blocks. */
    const int64_t nb = kind == KIND_Q4_0 ? (xds + 7) / 8 : n / QK_K;
    stage_t st[RM];
    __m256 acc[RM * SLICE_TOK];
    /* Tokens outer: the slice's activations stay in L2 while every row pair of this call
     * passes over them; the rows (one chunk of kern_matmul) stay in L2 across slices. */
    for (int64_t j0 = 0; j0 < nx; j0 += SLICE_TOK) {
        const int64_t mj = nx - j0 < SLICE_TOK ? nx - j0 : SLICE_TOK;
        for (int64_t r0 = 0; r0 < nr; r0 += RM) {
            const int mr = nr - r0 < RM ? (int)(nr - r0) : RM;
            for (int r = 0; r < mr; r++)
                for (int64_t j = 0; j < mj; j++) acc[r * SLICE_TOK + j] = _mm256_setzero_ps();
            for (int64_t i = 0; i < nb; i++) {
                const int nk = xds - 8 * i < 8 ? (int)(xds - 8 * i) : 8;
                for (int r = 0; r < mr; r++) {
                    decode(kind, w + (r0 + r) * ws + i * wsb, nk, &st[r]);
                    /* The same superblock of the next row pair, so its rows arrive while this
                     * pair computes: the hardware prefetcher starts every new row with misses,
                     * which cost a quarter of the time at 16 tokens with rows from DRAM. */
                    if (r0 + RM + r < nr) {
                        const char *p = (const char *)(w + (r0 + RM + r) * ws + i * wsb);
                        for (size_t o = 0; o < wsb; o += 64) _mm_prefetch(p + o, _MM_HINT_T0);
                        _mm_prefetch(p + wsb - 1, _MM_HINT_T0);
                    }
                }
                for (int64_t j = 0; j < mj; j += RN) {
                    const int mx = mj - j < RN ? (int)(mj - j) : RN;
                    const int64_t t = j0 + j;
                    step_any(kind, st, xq + t * xs + i * xsb, xs, xd ? xd + t * xds + 8 * i : NULL,
                             (size_t)xds, acc + j, mr, mx, nk);
                }
            }
            for (int r = 0; r < mr; r++)
                for (int64_t j = 0; j < mj; j++)
                    out[(j0 + j) * os + r0 + r] = hsum_ps(acc[r * SLICE_TOK + j]);
        }
    }
}

void kern__gemm_q4_k_avx2(int64_t n, const void *w, size_t ws, int64_t nr, const void *xq,
                          size_t xs, const float *xd, int64_t nx, float *out, size_t os)
{
    (void)xd;
    gemm(KIND_Q4_K, KERN_Q4_K, n, w, ws, nr, xq, xs, NULL, nx, out, os);
}

void kern__gemm_q5_k_avx2(int64_t n, const void *w, size_t ws, int64_t nr, const void *xq,
                          size_t xs, const float *xd, int64_t nx, float *out, size_t os)
{
    (void)xd;
    gemm(KIND_Q5_K, KERN_Q5_K, n, w, ws, nr, xq, xs, NULL, nx, out, os);
}

void kern__gemm_q6_k_avx2(int64_t n, const void *w, size_t ws, int64_t nr, const void *xq,
                          size_t xs, const float *xd, int64_t nx, float *out, size_t os)
{
    (void)xd;
    gemm(KIND_Q6_K, KERN_Q6_K, n, w, ws, nr, xq, xs, NULL, nx, out, os);
}

void kern__gemm_q4_0_avx2(int64_t n, const void *w, size_t ws, int64_t nr, const void *xq,
                          size_t xs, const float *xd, int64_t nx, float *out, size_t os)
{
    gemm(KIND_Q4_0, KERN_Q4_0, n, w, ws, nr, xq, xs, xd, nx, out, os);
}
