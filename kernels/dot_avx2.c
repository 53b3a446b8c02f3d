/* AVX2/FMA/F16C dot products of one weight row with rounded activations, and the activation
 * rounding to Q8_0/Q8_1/F16, filling kern__dot_avx2 and kern__quant_act_avx2 (dot.c dispatches
 * through them only after its run-time CPU check, so this file may use AVX2 freely), plus
 * kern__dotn_avx2, one weight row against up to four activation rows, for kern_matmul's small
 * batches (Q8_0, Q4_K, Q6_K).
 *
 * Integer types follow the technique of ggml's x86 kernels: widen the weight quants to one byte
 * per element in a 256-bit register, multiply with the 8-bit activations by
 * _mm256_maddubs_epi16 (unsigned x signed bytes into 16-bit pair sums, which cannot saturate
 * here: |pair| <= 2 * 63 * 128), widen with _mm256_madd_epi16, and scale in float. Signed
 * weights are fed through maddubs by moving their sign onto the activations. All integer sums
 * are exact, so a result differs from the scalar table only by the order of float additions.
 *
 * The activation quantizers must reproduce the scalar ones bit for bit: amax per block of 32,
 * d = amax/127 stored as fp16, id = 127/amax (0 for an all-zero block), q = round-half-even(x*id)
 * via _mm256_round_ps; Q8_1 also stores s = fp16(d * sum(q)) with the unrounded f32 d.
 */
#include <immintrin.h>
#include <string.h>

#include "kernels/kern-int.h"

#define QK KERN_QK32
#define QK_K KERN_QK_K

static inline float h2f(uint16_t h) { return _cvtsh_ss(h); }

static inline float hsum_ps(__m256 v)
{
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

static inline int hsum_epi32(__m256i v)
{
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
    return _mm_cvtsi128_si32(s);
}

/* Eight 32-bit sums of four products each: u (unsigned bytes) times s (signed bytes). */
static inline __m256i dot_u8_i8(__m256i u, __m256i s)
{
    return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1));
}

/* The same for two signed operands: |a| times b carrying a's sign. Even a = -128 works, its
 * magnitude 128 being exact as an unsigned byte; b = -128 would not (its negation wraps), and
 * the activation quantizer never produces it (|q| <= 127). */
static inline __m256i dot_i8_i8(__m256i a, __m256i b)
{
    return dot_u8_i8(_mm256_sign_epi8(a, a), _mm256_sign_epi8(b, a));
}

/* 16 packed nibbles to 32 bytes: element j < 16 is the low nibble of byte j, element 16 + j its
 * high nibble (the legacy block layout). */
static inline __m256i nibbles_32(const uint8_t *qs)
{
    __m128i b = _mm_loadu_si128((const __m128i *)qs);
    __m256i v = _mm256_set_m128i(_mm_srli_epi16(b, 4), b);
    return _mm256_and_si256(v, _mm256_set1_epi8(0x0F));
}

/* 32 bits (little-endian qh) to 32 bytes, 0xFF where bit j is set. Byte j takes byte j/8 of the
 * word, is masked to bit j%8, and compared with that bit. */
static inline __m256i bits_32(const uint8_t *qh)
{
    uint32_t w;
    memcpy(&w, qh, 4);
    const __m256i spread = _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202,
                                             0x0101010101010101, 0x0000000000000000);
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)w), spread);
    return _mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit);
}

/* ---- float types ---- */

static float dot_f32(int64_t n, const void *wv, const void *xv)
{
    const float *w = wv, *x = xv;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 8), _mm256_loadu_ps(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 16), _mm256_loadu_ps(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i + 24), _mm256_loadu_ps(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8)
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + i), _mm256_loadu_ps(x + i), a0);
    float s = hsum_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) s += w[i] * x[i];
    return s;
}

static inline __m256 load_f16(const uint16_t *p)
{
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

static float dot_f16(int64_t n, const void *wv, const void *xv)
{
    const uint16_t *w = wv, *x = xv;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(load_f16(w + i), load_f16(x + i), a0);
        a1 = _mm256_fmadd_ps(load_f16(w + i + 8), load_f16(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(load_f16(w + i + 16), load_f16(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(load_f16(w + i + 24), load_f16(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(load_f16(w + i), load_f16(x + i), a0);
    float s = hsum_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) s += h2f(w[i]) * h2f(x[i]);
    return s;
}

static inline __m256 load_bf16(const uint16_t *p)
{
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

static float dot_bf16(int64_t n, const void *wv, const void *xv)
{
    const uint16_t *w = wv, *x = xv;
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        a0 = _mm256_fmadd_ps(load_bf16(w + i), load_bf16(x + i), a0);
        a1 = _mm256_fmadd_ps(load_bf16(w + i + 8), load_bf16(x + i + 8), a1);
        a2 = _mm256_fmadd_ps(load_bf16(w + i + 16), load_bf16(x + i + 16), a2);
        a3 = _mm256_fmadd_ps(load_bf16(w + i + 24), load_bf16(x + i + 24), a3);
    }
    for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(load_bf16(w + i), load_bf16(x + i), a0);
    float s = hsum_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));
    for (; i < n; i++) s += kern_bf16_to_fp32(w[i]) * kern_bf16_to_fp32(x[i]);
    return s;
}

/* ---- legacy blocks of 32 ---- */

/* Four fp16 fields 34 bytes apart (the d of four consecutive Q8_0 blocks) as floats: one
 * conversion instead of four. */
static inline __m128 d4_q8_0(const kern_block_q8_0 *b)
{
    return _mm_cvtph_ps(_mm_setr_epi16((short)b[0].d, (short)b[1].d, (short)b[2].d,
                                       (short)b[3].d, 0, 0, 0, 0));
}

static float dot_q8_0(int64_t n, const void *wv, const void *xv)
{
    const kern_block_q8_0 *w = wv, *x = xv;
    const int64_t nb = n / QK;
    /* Four blocks per pass: their scale products are formed in one vector and spilled so each
     * is broadcast by a load, and four accumulators keep the FMA chains independent. */
    __m256 a[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(),
                   _mm256_setzero_ps()};
    _Alignas(16) float dd[4];
    int64_t i = 0;
    for (; i + 4 <= nb; i += 4) {
        /* The kernel runs near the memory rate, leaving the hardware prefetcher little slack
         * (and it stops at 4 KiB pages); asking for the lines 2 KiB ahead keeps the next blocks
         * in flight: 12-15 GB/s at 0, 1 KiB, 2 KiB ahead on one thread, flat beyond. */
        _mm_prefetch((const char *)(w + i) + 2048, _MM_HINT_T0);
        _mm_prefetch((const char *)(w + i) + 2112, _MM_HINT_T0);
        _mm_store_ps(dd, _mm_mul_ps(d4_q8_0(w + i), d4_q8_0(x + i)));
#pragma GCC unroll 4
        for (int k = 0; k < 4; k++) {
            __m256i p = dot_i8_i8(_mm256_loadu_si256((const __m256i *)w[i + k].qs),
                                  _mm256_loadu_si256((const __m256i *)x[i + k].qs));
            a[k] = _mm256_fmadd_ps(_mm256_broadcast_ss(&dd[k]), _mm256_cvtepi32_ps(p), a[k]);
        }
    }
    for (; i < nb; i++) {
        __m256i p = dot_i8_i8(_mm256_loadu_si256((const __m256i *)w[i].qs),
                              _mm256_loadu_si256((const __m256i *)x[i].qs));
        a[0] = _mm256_fmadd_ps(_mm256_set1_ps(h2f(w[i].d) * h2f(x[i].d)), _mm256_cvtepi32_ps(p),
                               a[0]);
    }
    return hsum_ps(_mm256_add_ps(_mm256_add_ps(a[0], a[1]), _mm256_add_ps(a[2], a[3])));
}

static float dot_q4_0(int64_t n, const void *wv, const void *xv)
{
    const kern_block_q4_0 *w = wv;
    const kern_block_q8_0 *x = xv;
    const int64_t nb = n / QK;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        __m256i q = _mm256_sub_epi8(nibbles_32(w[i].qs), _mm256_set1_epi8(8));
        __m256i p = dot_i8_i8(q, _mm256_loadu_si256((const __m256i *)x[i].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(w[i].d) * h2f(x[i].d)), _mm256_cvtepi32_ps(p),
                              acc);
    }
    return hsum_ps(acc);
}

static float dot_q5_0(int64_t n, const void *wv, const void *xv)
{
    const kern_block_q5_0 *w = wv;
    const kern_block_q8_0 *x = xv;
    const int64_t nb = n / QK;
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        /* value = (nibble | bit4 << 4) - 16: where the fifth bit is clear, or-ing 0xF0 into the
         * nibble gives nibble - 16 as a signed byte; where it is set the nibble is the value. */
        __m256i hi = _mm256_andnot_si256(bits_32(w[i].qh), _mm256_set1_epi8((char)0xF0));
        __m256i q = _mm256_or_si256(nibbles_32(w[i].qs), hi);
        __m256i p = dot_i8_i8(q, _mm256_loadu_si256((const __m256i *)x[i].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(w[i].d) * h2f(x[i].d)), _mm256_cvtepi32_ps(p),
                              acc);
    }
    return hsum_ps(acc);
}

/* Q4_1/Q5_1: w = d*q + m with unsigned q, so dot = dw*dx*sum(q*qx) + m * (dx*sum(qx)), the
 * last factor being the activation block's stored s. */
static float dot_q4_1(int64_t n, const void *wv, const void *xv)
{
    const kern_block_q4_1 *w = wv;
    const kern_block_q8_1 *x = xv;
    const int64_t nb = n / QK;
    __m256 acc = _mm256_setzero_ps();
    float mins = 0;
    for (int64_t i = 0; i < nb; i++) {
        mins += h2f(w[i].m) * h2f(x[i].s);
        __m256i p = dot_u8_i8(nibbles_32(w[i].qs), _mm256_loadu_si256((const __m256i *)x[i].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(w[i].d) * h2f(x[i].d)), _mm256_cvtepi32_ps(p),
                              acc);
    }
    return hsum_ps(acc) + mins;
}

static float dot_q5_1(int64_t n, const void *wv, const void *xv)
{
    const kern_block_q5_1 *w = wv;
    const kern_block_q8_1 *x = xv;
    const int64_t nb = n / QK;
    __m256 acc = _mm256_setzero_ps();
    float mins = 0;
    for (int64_t i = 0; i < nb; i++) {
        mins += h2f(w[i].m) * h2f(x[i].s);
        __m256i hi = _mm256_and_si256(bits_32(w[i].qh), _mm256_set1_epi8(0x10));
        __m256i q = _mm256_or_si256(nibbles_32(w[i].qs), hi);
        __m256i p = dot_u8_i8(q, _mm256_loadu_si256((const __m256i *)x[i].qs));
        acc = _mm256_fmadd_ps(_mm256_set1_ps(h2f(w[i].d) * h2f(x[i].d)), _mm256_cvtepi32_ps(p),
                              acc);
    }
    return hsum_ps(acc) + mins;
}

/* ---- K-quants, super-blocks of 256 against Q8_K ---- */

/* Unpacks the 12 scale bytes of Q4_K/Q5_K into sc (8 six-bit scales) and m (8 six-bit mins),
 * one byte each, four at a time: entries 0..3 are the low 6 bits of bytes 0..3 / 4..7; entries
 * 4..7 take a nibble of bytes 8..11 and the spare top 2 bits of bytes 0..3 / 4..7. */
static inline void unpack_k4_scales(const uint8_t *s12, uint32_t sc[2], uint32_t m[2])
{
    uint32_t u[3];
    memcpy(u, s12, 12);
    const uint32_t low6 = 0x3f3f3f3f, low4 = 0x0f0f0f0f, low2 = 0x03030303;
    sc[0] = u[0] & low6;
    m[0] = u[1] & low6;
    sc[1] = (u[2] & low4) | (((u[0] >> 6) & low2) << 4);
    m[1] = ((u[2] >> 4) & low4) | (((u[1] >> 6) & low2) << 4);
}

/* The min term of Q4_K/Q5_K as four 32-bit partial sums: min_j * (sum of the activations in
 * sub-block j) over the 8 sub-blocks, from Q8_K's 16-element bsums. Left unreduced so the caller
 * can accumulate it in a vector without a horizontal sum per super-block. */
static inline __m128i k4_min_sums(const uint32_t m[2], const int16_t *bsums)
{
    __m128i mins = _mm_cvtepu8_epi16(_mm_set_epi32(0, 0, (int)m[1], (int)m[0]));
    __m128i b = _mm_loadu_si128((const __m128i *)bsums);
    __m128i b2 = _mm_loadu_si128((const __m128i *)(bsums + 8));
    __m128i pair = _mm_hadd_epi16(b, b2); /* sums of 32: cannot overflow 16 bits (|.|<=4064) */
    return _mm_madd_epi16(mins, pair);
}

/* The 8 six-bit scales as 16-bit values, repeated in both 128-bit halves, so that
 * scale_bcast(v, k) can broadcast scale k with one in-lane byte shuffle. */
static inline __m256i k4_scales16(const uint32_t sc[2])
{
    return _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_set_epi32(0, 0, (int)sc[1],
                                                                       (int)sc[0])));
}

static inline __m256i scale_bcast(__m256i sc16, int k)
{
    const __m256i idx = _mm256_set1_epi16((short)(0x0100 + 0x0202 * k)); /* bytes 2k, 2k+1 */
    return _mm256_shuffle_epi8(sc16, idx);
}

static inline float hsum_ps128(__m128 s)
{
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* Q4_K: w = d*sc_j*q - dmin*m_j for sub-block j of 32, q unsigned 4-bit, so the 6-bit scale
 * multiplies the maddubs pair sums (madd) and the min term comes from the bsums. */
static float dot_q4_k(int64_t n, const void *wv, const void *xv)
{
    const kern_block_q4_k *w = wv;
    const kern_block_q8_k *x = xv;
    const int64_t nb = n / QK_K;
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    __m256 acc = _mm256_setzero_ps();
    __m128 acc_m = _mm_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        /* See dot_q8_0: the lines ~1 KiB ahead (a 144-byte block spans up to 3). */
        for (int l = 0; l < 3; l++)
            _mm_prefetch((const char *)(w + i) + 1024 + 64 * l, _MM_HINT_T0);
        const float d = x[i].d * h2f(w[i].d);
        const float dmin = x[i].d * h2f(w[i].dmin);
        uint32_t sc[2], m[2];
        unpack_k4_scales(w[i].scales, sc, m);
        acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(k4_min_sums(m, x[i].bsums)),
                             acc_m);
        const __m256i sc16 = k4_scales16(sc);
        const uint8_t *q4 = w[i].qs;
        const int8_t *q8 = x[i].qs;
        __m256i sumi = _mm256_setzero_si256();
        /* Unrolled so the scale shuffle indices are constants, not rebuilt each pass. */
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            /* 32 bytes: low nibbles are sub-block 2j, high nibbles sub-block 2j+1. */
            __m256i q = _mm256_loadu_si256((const __m256i *)(q4 + 32 * j));
            __m256i ql = _mm256_and_si256(q, low4);
            __m256i qh = _mm256_and_si256(_mm256_srli_epi16(q, 4), low4);
            __m256i pl = _mm256_maddubs_epi16(ql, _mm256_loadu_si256((const __m256i *)q8));
            __m256i ph = _mm256_maddubs_epi16(qh, _mm256_loadu_si256((const __m256i *)(q8 + 32)));
            q8 += 64;
            pl = _mm256_madd_epi16(pl, scale_bcast(sc16, 2 * j));
            ph = _mm256_madd_epi16(ph, scale_bcast(sc16, 2 * j + 1));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum_ps(acc) - hsum_ps128(acc_m);
}

static float dot_q5_k(int64_t n, const void *wv, const void *xv)
{
    const kern_block_q5_k *w = wv;
    const kern_block_q8_k *x = xv;
    const int64_t nb = n / QK_K;
    const __m256i low4 = _mm256_set1_epi8(0x0F), one = _mm256_set1_epi8(1);
    __m256 acc = _mm256_setzero_ps();
    __m128 acc_m = _mm_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        for (int l = 0; l < 3; l++)
            _mm_prefetch((const char *)(w + i) + 1024 + 64 * l, _MM_HINT_T0);
        const float d = x[i].d * h2f(w[i].d);
        const float dmin = x[i].d * h2f(w[i].dmin);
        uint32_t sc[2], m[2];
        unpack_k4_scales(w[i].scales, sc, m);
        acc_m = _mm_fmadd_ps(_mm_set1_ps(dmin), _mm_cvtepi32_ps(k4_min_sums(m, x[i].bsums)),
                             acc_m);
        const __m256i sc16 = k4_scales16(sc);
        const uint8_t *q4 = w[i].qs;
        const int8_t *q8 = x[i].qs;
        /* Bit 2j of qh[l] is the fifth bit of element l of sub-block 2j, bit 2j+1 that of
         * sub-block 2j+1. The 16-bit shifts leak bits across bytes, but only bit 0 is kept. */
        const __m256i hb = _mm256_loadu_si256((const __m256i *)w[i].qh);
        __m256i sumi = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            __m256i q = _mm256_loadu_si256((const __m256i *)(q4 + 32 * j));
            __m256i h0 = _mm256_and_si256(_mm256_srli_epi16(hb, 2 * j), one);
            __m256i h1 = _mm256_and_si256(_mm256_srli_epi16(hb, 2 * j + 1), one);
            __m256i ql = _mm256_or_si256(_mm256_and_si256(q, low4), _mm256_slli_epi16(h0, 4));
            __m256i qh = _mm256_or_si256(_mm256_and_si256(_mm256_srli_epi16(q, 4), low4),
                                         _mm256_slli_epi16(h1, 4));
            __m256i pl = _mm256_maddubs_epi16(ql, _mm256_loadu_si256((const __m256i *)q8));
            __m256i ph = _mm256_maddubs_epi16(qh, _mm256_loadu_si256((const __m256i *)(q8 + 32)));
            q8 += 64;
            pl = _mm256_madd_epi16(pl, scale_bcast(sc16, 2 * j));
            ph = _mm256_madd_epi16(ph, scale_bcast(sc16, 2 * j + 1));
            sumi = _mm256_add_epi32(sumi, _mm256_add_epi32(pl, ph));
        }
        acc = _mm256_fmadd_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(sumi), acc);
    }
    return hsum_ps(acc) - hsum_ps128(acc_m);
}

/* Q6_K: q = (4 low bits | 2 high bits << 4) - 32 with a signed 8-bit scale per 16 elements.
 * maddubs takes the unsigned 0..63 form; the -32 offset is removed as 32 * scale_g * bsum_g,
 * since 16-element group g of the activations is exactly the group that scale g covers; that
 * correction stays a vector and joins the block's integer sum before the one conversion.
 * Written for NX activation rows at once (see the multi-row section below); the single-row
 * table entry is the NX = 1 instance. */
static inline __attribute__((always_inline)) void dotn_q6_k(int64_t n, const void *wv,
                                                             const void *xv, size_t xs, float *out,
                                                             size_t os, const int NX)
{
    const kern_block_q6_k *w = wv;
    const int64_t nb = n / QK_K;
    const __m256i low4 = _mm256_set1_epi8(0x0F), low2 = _mm256_set1_epi8(0x03);
    __m256 acc[4];
    for (int r = 0; r < NX; r++) acc[r] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        /* See dot_q8_0: ~1 KiB ahead, the four lines a 210-byte block mostly spans. */
        for (int l = 0; l < 4; l++)
            _mm_prefetch((const char *)(w + i) + 1024 + 64 * l, _MM_HINT_T0);
        const __m256i sc16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)w[i].scales));
        __m256i sumi[4];
        for (int r = 0; r < NX; r++) {
            const kern_block_q8_k *x = (const kern_block_q8_k *)((const uint8_t *)xv + r * xs) + i;
            const __m256i bs = _mm256_loadu_si256((const __m256i *)x->bsums);
            sumi[r] = _mm256_sub_epi32(_mm256_setzero_si256(),
                                       _mm256_slli_epi32(_mm256_madd_epi16(sc16, bs), 5));
        }
        const uint8_t *ql = w[i].ql, *qh = w[i].qh;
#pragma GCC unroll 2
        for (int half = 0; half < 2; half++) {
            /* 128 elements: ql[0..31] low/high nibbles give elements 0..31 / 64..95, ql[32..63]
             * give 32..63 / 96..127; qh[0..31] bits 2k..2k+1 are the top bits of quarter k. */
            const __m256i l0 = _mm256_loadu_si256((const __m256i *)ql);
            const __m256i l1 = _mm256_loadu_si256((const __m256i *)(ql + 32));
            const __m256i h = _mm256_loadu_si256((const __m256i *)qh);
            /* Scales 8*half .. 8*half+7 in both 128-bit halves, for in-lane shuffles. */
            /* Two calls with literal masks: clang wants an integer constant expression. */
            const __m256i sch = half ? _mm256_permute4x64_epi64(sc16, 0xEE)
                                     : _mm256_permute4x64_epi64(sc16, 0x44);
#pragma GCC unroll 4
            for (int k = 0; k < 4; k++) {
                const __m256i lo = k & 1 ? l1 : l0;
                const __m256i nib = k < 2 ? lo : _mm256_srli_epi16(lo, 4);
                const __m256i top = _mm256_and_si256(_mm256_srli_epi16(h, 2 * k), low2);
                const __m256i q =
                    _mm256_or_si256(_mm256_and_si256(nib, low4), _mm256_slli_epi16(top, 4));
                /* Pair sums 0..7 cover elements 0..15 (scale 2k), 8..15 elements 16..31. */
                const __m256i idx = _mm256_set_m128i(_mm_set1_epi16((short)(0x0302 + 0x0404 * k)),
                                                     _mm_set1_epi16((short)(0x0100 + 0x0404 * k)));
                const __m256i s = _mm256_shuffle_epi8(sch, idx);
                for (int r = 0; r < NX; r++) {
                    const kern_block_q8_k *x =
                        (const kern_block_q8_k *)((const uint8_t *)xv + r * xs) + i;
                    const int8_t *q8 = x->qs + 128 * half + 32 * k;
                    __m256i p = _mm256_maddubs_epi16(q, _mm256_loadu_si256((const __m256i *)q8));
                    sumi[r] = _mm256_add_epi32(sumi[r], _mm256_madd_epi16(p, s));
                }
            }
            ql += 64, qh += 32;
        }
        const float dw = h2f(w[i].d);
        for (int r = 0; r < NX; r++) {
            const kern_block_q8_k *x = (const kern_block_q8_k *)((const uint8_t *)xv + r * xs) + i;
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(x->d * dw), _mm256_cvtepi32_ps(sumi[r]),
                                     acc[r]);
        }
    }
    for (int r = 0; r < NX; r++) out[r * os] = hsum_ps(acc[r]);
}

static float dot_q6_k(int64_t n, const void *wv, const void *xv)
{
    float out;
    dotn_q6_k(n, wv, xv, 0, &out, 0, 1);
    return out;
}

/* ---- one weight row against several activation rows ----
 * For small batches (an expert's tokens) the weight unpacking is shared: each weight block is
 * widened once and multiplied with up to KERN__DOTN_MAX activation rows. The per-row arithmetic
 * is that of the single-row kernels, with one accumulator per row. NX is a compile-time constant
 * in each instance, so the accumulators live in registers. */

static inline __attribute__((always_inline)) void dotn_q8_0(int64_t n, const void *wv,
                                                             const void *xv, size_t xs, float *out,
                                                             size_t os, const int NX)
{
    const kern_block_q8_0 *w = wv;
    const int64_t nb = n / QK;
    __m256 acc[KERN__DOTN_MAX];
    for (int r = 0; r < NX; r++) acc[r] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        const __m256i q = _mm256_loadu_si256((const __m256i *)w[i].qs);
        const __m256i aq = _mm256_sign_epi8(q, q);
        const float dw = h2f(w[i].d);
        for (int r = 0; r < NX; r++) {
            const kern_block_q8_0 *x = (const kern_block_q8_0 *)((const uint8_t *)xv + r * xs);
            __m256i y = _mm256_sign_epi8(_mm256_loadu_si256((const __m256i *)x[i].qs), q);
            __m256i p = dot_u8_i8(aq, y);
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(dw * h2f(x[i].d)), _mm256_cvtepi32_ps(p),
                                     acc[r]);
        }
    }
    for (int r = 0; r < NX; r++) out[r * os] = hsum_ps(acc[r]);
}

static inline __attribute__((always_inline)) void dotn_q4_k(int64_t n, const void *wv,
                                                             const void *xv, size_t xs, float *out,
                                                             size_t os, const int NX)
{
    const kern_block_q4_k *w = wv;
    const int64_t nb = n / QK_K;
    const __m256i low4 = _mm256_set1_epi8(0x0F);
    /* The min term shares the accumulator: it is folded into lanes 0..3 with a negative
     * factor, so one register per row carries both sums. */
    __m256 acc[KERN__DOTN_MAX];
    for (int r = 0; r < NX; r++) acc[r] = _mm256_setzero_ps();
    for (int64_t i = 0; i < nb; i++) {
        uint32_t sc[2], m[2];
        unpack_k4_scales(w[i].scales, sc, m);
        const __m256i sc16 = k4_scales16(sc);
        const float dw = h2f(w[i].d), dminw = h2f(w[i].dmin);
        __m256i sumi[KERN__DOTN_MAX];
        for (int r = 0; r < NX; r++) sumi[r] = _mm256_setzero_si256();
#pragma GCC unroll 4
        for (int j = 0; j < 4; j++) {
            const __m256i q = _mm256_loadu_si256((const __m256i *)(w[i].qs + 32 * j));
            const __m256i ql = _mm256_and_si256(q, low4);
            const __m256i qh = _mm256_and_si256(_mm256_srli_epi16(q, 4), low4);
            const __m256i sl = scale_bcast(sc16, 2 * j), sh = scale_bcast(sc16, 2 * j + 1);
            for (int r = 0; r < NX; r++) {
                const kern_block_q8_k *x =
                    (const kern_block_q8_k *)((const uint8_t *)xv + r * xs) + i;
                const int8_t *q8 = x->qs + 64 * j;
                __m256i pl = _mm256_maddubs_epi16(ql, _mm256_loadu_si256((const __m256i *)q8));
                __m256i ph =
                    _mm256_maddubs_epi16(qh, _mm256_loadu_si256((const __m256i *)(q8 + 32)));
                pl = _mm256_madd_epi16(pl, sl);
                ph = _mm256_madd_epi16(ph, sh);
                sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(pl, ph));
            }
        }
        for (int r = 0; r < NX; r++) {
            const kern_block_q8_k *x = (const kern_block_q8_k *)((const uint8_t *)xv + r * xs) + i;
            __m256 mins = _mm256_zextps128_ps256(_mm_cvtepi32_ps(k4_min_sums(m, x->bsums)));
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(-x->d * dminw), mins, acc[r]);
            acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(x->d * dw), _mm256_cvtepi32_ps(sumi[r]),
                                     acc[r]);
        }
    }
    for (int r = 0; r < NX; r++) out[r * os] = hsum_ps(acc[r]);
}

#define DOTN_INSTANCES(name)                                                                       \
    static void name##_n(int64_t n, const void *w, const void *x, size_t xs, int nx, float *out,  \
                         size_t os)                                                                \
    {                                                                                              \
        switch (nx) {                                                                              \
        case 1: name(n, w, x, xs, out, os, 1); break;                                              \
        case 2: name(n, w, x, xs, out, os, 2); break;                                              \
        case 3: name(n, w, x, xs, out, os, 3); break;                                              \
        default: name(n, w, x, xs, out, os, 4); break;                                             \
        }                                                                                          \
    }
_Static_assert(KERN__DOTN_MAX == 4, "DOTN_INSTANCES covers 1..4 rows");
DOTN_INSTANCES(dotn_q8_0)
DOTN_INSTANCES(dotn_q4_k)
DOTN_INSTANCES(dotn_q6_k)

/* ---- activation rounding ---- */

/* One block of 32: returns d (unrounded f32) and writes the 32 rounded quants; *sum gets their
 * sum when not NULL. */
static inline float quant_block_q8(const float *x, int8_t *qs, int *sum)
{
    __m256 v[4];
    const __m256 sign = _mm256_set1_ps(-0.0f);
    __m256 amax = _mm256_setzero_ps();
    for (int k = 0; k < 4; k++) {
        v[k] = _mm256_loadu_ps(x + 8 * k);
        amax = _mm256_max_ps(amax, _mm256_andnot_ps(sign, v[k]));
    }
    __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(amax), _mm256_extractf128_ps(amax, 1));
    m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
    m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
    const float max = _mm_cvtss_f32(m4);
    const float d = max / 127.f;
    const __m256 id = _mm256_set1_ps(max != 0.0f ? 127.f / max : 0.0f);
    __m256i i[4];
    for (int k = 0; k < 4; k++)
        i[k] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[k], id),
                                                  _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
    if (sum) {
        __m256i s = _mm256_add_epi32(_mm256_add_epi32(i[0], i[1]), _mm256_add_epi32(i[2], i[3]));
        *sum = hsum_epi32(s);
    }
    /* packs interleave 128-bit lanes; the permute restores element order. */
    __m256i p01 = _mm256_packs_epi32(i[0], i[1]), p23 = _mm256_packs_epi32(i[2], i[3]);
    __m256i b = _mm256_packs_epi16(p01, p23);
    b = _mm256_permutevar8x32_epi32(b, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256((__m256i *)qs, b);
    return d;
}

static void quant_q8_0(const float *x, void *dst, int64_t n)
{
    kern_block_q8_0 *y = dst;
    for (int64_t i = 0; i < n / QK; i++, x += QK)
        y[i].d = (uint16_t)_cvtss_sh(quant_block_q8(x, y[i].qs, NULL), 0);
}

static void quant_q8_1(const float *x, void *dst, int64_t n)
{
    kern_block_q8_1 *y = dst;
    for (int64_t i = 0; i < n / QK; i++, x += QK) {
        int sum;
        const float d = quant_block_q8(x, y[i].qs, &sum);
        y[i].d = (uint16_t)_cvtss_sh(d, 0);
        y[i].s = (uint16_t)_cvtss_sh(d * (float)sum, 0);
    }
}

static void quant_f16(const float *x, void *dst, int64_t n)
{
    uint16_t *y = dst;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm_storeu_si128((__m128i *)(y + i), _mm256_cvtps_ph(_mm256_loadu_ps(x + i), 0));
    for (; i < n; i++) y[i] = (uint16_t)_cvtss_sh(x[i], 0);
}

/* Bulk conversions back to f32: the wire's activation codecs and the BLAS path's tiles. F16C
 * conversion is exact, and Q8_0 is d * q in float as in the scalar path, so both equal it bit
 * for bit. */
static void dequant_f16(const void *src, float *dst, int64_t n)
{
    const uint16_t *h = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(dst + i, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))));
    for (; i < n; i++) dst[i] = _cvtsh_ss(h[i]);
}

static void dequant_q8_0(const void *src, float *dst, int64_t n)
{
    const kern_block_q8_0 *b = src;
    for (int64_t i = 0; i < n / KERN_QK32; i++) {
        const __m256 d = _mm256_set1_ps(_cvtsh_ss(b[i].d));
        for (int j = 0; j < KERN_QK32; j += 8) {
            __m128i q = _mm_loadl_epi64((const __m128i *)(b[i].qs + j));
            __m256 f = _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(q));
            _mm256_storeu_ps(dst + i * KERN_QK32 + j, _mm256_mul_ps(d, f));
        }
    }
}

static void dequant_bf16(const void *src, float *dst, int64_t n)
{
    const uint16_t *h = src;
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i w = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(h + i)));
        _mm256_storeu_ps(dst + i, _mm256_castsi256_ps(_mm256_slli_epi32(w, 16)));
    }
    for (; i < n; i++) dst[i] = kern_bf16_to_fp32(h[i]);
}

/* bf16 = the top half of the f32, rounded to nearest even; NaN quieted (kern_fp32_to_bf16). */
static void quant_bf16(const float *x, void *dst, int64_t n)
{
    uint16_t *y = dst;
    const __m256i abs_mask = _mm256_set1_epi32(0x7fffffff), inf = _mm256_set1_epi32(0x7f800000);
    const __m256i bias = _mm256_set1_epi32(0x7fff), one = _mm256_set1_epi32(1);
    const __m256i quiet = _mm256_set1_epi32(64);
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256i u = _mm256_castps_si256(_mm256_loadu_ps(x + i));
        __m256i nan = _mm256_cmpgt_epi32(_mm256_and_si256(u, abs_mask), inf);
        __m256i r = _mm256_add_epi32(
            u, _mm256_add_epi32(bias, _mm256_and_si256(_mm256_srli_epi32(u, 16), one)));
        r = _mm256_srli_epi32(r, 16);
        __m256i q = _mm256_or_si256(_mm256_srli_epi32(u, 16), quiet);
        r = _mm256_blendv_epi8(r, q, nan);
        /* Pack 8 x u32 (all < 65536) into 8 x u16 in order. */
        __m128i lo = _mm256_castsi256_si128(r), hi = _mm256_extracti128_si256(r, 1);
        _mm_storeu_si128((__m128i *)(y + i), _mm_packus_epi32(lo, hi));
    }
    for (; i < n; i++) y[i] = kern_fp32_to_bf16(x[i]);
}

const kern__dequant_fn kern__dequant_avx2[KERN_TYPE_COUNT] = {
    [KERN_F16] = dequant_f16,
    [KERN_BF16] = dequant_bf16,
    [KERN_Q8_0] = dequant_q8_0,
};

const kern__dot_fn kern__dot_avx2[KERN_TYPE_COUNT] = {
    [KERN_F32] = dot_f32,   [KERN_F16] = dot_f16,   [KERN_BF16] = dot_bf16,
    [KERN_Q8_0] = dot_q8_0, [KERN_Q4_0] = dot_q4_0, [KERN_Q5_0] = dot_q5_0,
    [KERN_Q4_1] = dot_q4_1, [KERN_Q5_1] = dot_q5_1, [KERN_Q4_K] = dot_q4_k,
    [KERN_Q5_K] = dot_q5_k, [KERN_Q6_K] = dot_q6_k, [KERN_MXFP4] = kern__dot_mxfp4_avx2,
};

const kern__quant_fn kern__quant_act_avx2[KERN_TYPE_COUNT] = {
    [KERN_Q8_0] = quant_q8_0,
    [KERN_Q8_1] = quant_q8_1,
    [KERN_F16] = quant_f16,
    [KERN_BF16] = quant_bf16,
};

const kern__dotn_fn kern__dotn_avx2[KERN_TYPE_COUNT] = {
    [KERN_Q8_0] = dotn_q8_0_n,
    [KERN_Q4_K] = dotn_q4_k_n,
    [KERN_Q6_K] = dotn_q6_k_n,
};
