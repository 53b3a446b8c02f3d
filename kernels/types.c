/* kernels/types.c — the GGUF tensor types this build knows (block sizes, bytes, the type ggml
 * rounds activations to for dot products), scalar fp16/bf16 conversions, and the instruction
 * set in force for every dispatching kernel.
 *
 * Invariants: the type table is indexed by ggml's type id and never changes; the conversions
 * are bit-exact with x86 F16C (_cvtss_sh with rounding 0, _cvtsh_ss) and with ggml's
 * ggml_compute_fp32_to_bf16, so a tensor converted here equals one converted by llama.cpp's CPU
 * backend. kern__isa is written only by kern_set_isa and the load-time constructor below.
 */
#include <string.h>
#if defined(__clang__)
#include <cpuid.h>
#endif

#include "kernels/kern-int.h"
#include "wire/wire.h"

#define T(id, nm, blk, bytes, dot, comp) [id] = {nm, blk, bytes, dot, comp}

/* Q2_K/Q3_K are listed with their sizes so that files containing them stay readable even
 * where a kernel is missing; compute says whether dequantize/dot work for them. Q8_1 and Q8_K
 * only ever hold activations: they quantize and dequantize but have no dot of their own. */
static const kern_type_info_t type_table[KERN_TYPE_COUNT] = {
    T(KERN_F32, "F32", 1, 4, KERN_F32, true),
    T(KERN_F16, "F16", 1, 2, KERN_F16, true),
    T(KERN_BF16, "BF16", 1, 2, KERN_BF16, true),
    T(KERN_Q4_0, "Q4_0", KERN_QK32, sizeof(kern_block_q4_0), KERN_Q8_0, true),
    T(KERN_Q4_1, "Q4_1", KERN_QK32, sizeof(kern_block_q4_1), KERN_Q8_1, true),
    T(KERN_Q5_0, "Q5_0", KERN_QK32, sizeof(kern_block_q5_0), KERN_Q8_0, true),
    T(KERN_Q5_1, "Q5_1", KERN_QK32, sizeof(kern_block_q5_1), KERN_Q8_1, true),
    T(KERN_Q8_0, "Q8_0", KERN_QK32, sizeof(kern_block_q8_0), KERN_Q8_0, true),
    T(KERN_Q8_1, "Q8_1", KERN_QK32, sizeof(kern_block_q8_1), KERN_Q8_1, true),
    T(KERN_Q2_K, "Q2_K", KERN_QK_K, sizeof(kern_block_q2_k), KERN_Q8_K, true),
    T(KERN_Q3_K, "Q3_K", KERN_QK_K, sizeof(kern_block_q3_k), KERN_Q8_K, true),
    T(KERN_Q4_K, "Q4_K", KERN_QK_K, sizeof(kern_block_q4_k), KERN_Q8_K, true),
    T(KERN_Q5_K, "Q5_K", KERN_QK_K, sizeof(kern_block_q5_k), KERN_Q8_K, true),
    T(KERN_Q6_K, "Q6_K", KERN_QK_K, sizeof(kern_block_q6_k), KERN_Q8_K, true),
    T(KERN_Q8_K, "Q8_K", KERN_QK_K, sizeof(kern_block_q8_k), KERN_Q8_K, true),
    T(KERN_MXFP4, "MXFP4", KERN_QK32, sizeof(kern_block_mxfp4), KERN_Q8_0, true),
};

const kern_type_info_t *kern_type_info(int t)
{
    /* Unused slots are zero-filled, so a NULL name marks an id this build does not know. */
    if (t < 0 || t >= KERN_TYPE_COUNT || type_table[t].name == NULL) return NULL;
    return &type_table[t];
}

size_t kern_row_bytes(kern_type_t t, int64_t n)
{
    const kern_type_info_t *ti = kern_type_info(t);
    CHECK(ti != NULL && n >= 0 && n % ti->block == 0);
    return (size_t)(n / ti->block) * ti->block_bytes;
}

/* ---- fp16 ---- */

float kern_fp16_to_fp32(uint16_t h)
{
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    uint32_t bits;
    if (exp == 0x1f) {
        /* F16C quiets signalling NaNs and keeps the payload's top bits. */
        bits = sign | 0x7f800000 | (mant ? 0x400000 | (mant << 13) : 0);
    } else if (exp == 0) {
        /* Subnormal (or zero): mant * 2^-24 is exact in f32. */
        float v = (float)mant * 0x1p-24f;
        return sign ? -v : v;
    } else {
        /* Rebias the exponent from 15 to 127. */
        bits = sign | ((exp + 112) << 23) | (mant << 13);
    }
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

uint16_t kern_fp32_to_fp16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    uint16_t sign = (uint16_t)((x >> 16) & 0x8000);
    uint32_t ax = x & 0x7fffffff;

    if (ax > 0x7f800000) /* NaN: quiet it, keep the payload's top bits, as F16C does */
        return (uint16_t)(sign | 0x7e00 | ((ax >> 13) & 0x3ff));
    /* 65520 is the midpoint between the largest half (65504, odd mantissa) and 2^16; ties go
     * to even, i.e. to infinity. */
    if (ax >= 0x477ff000) return (uint16_t)(sign | 0x7c00);
    if (ax >= 0x38800000) {
        /* Normal half: rebias, then round the 13 dropped bits to nearest even. A carry out of
         * the mantissa correctly bumps the exponent. */
        uint32_t r = ax - 0x38000000;
        r += 0xfff + ((r >> 13) & 1);
        return (uint16_t)(sign | (r >> 13));
    }
    /* Subnormal half: the result counts units of 2^-24. Below 2^-25 everything rounds to 0
     * (exactly 2^-25 is a tie that goes to the even 0). */
    uint32_t e = ax >> 23;
    if (e < 102) return sign;
    uint32_t m = (ax & 0x7fffff) | 0x800000;
    uint32_t shift = 126 - e; /* 14..24 */
    uint32_t q = m >> shift;
    uint32_t rem = m & ((1u << shift) - 1);
    uint32_t half = 1u << (shift - 1);
    if (rem > half || (rem == half && (q & 1))) q++;
    return (uint16_t)(sign | q);
}

/* ---- bf16 ---- */

float kern_bf16_to_fp32(uint16_t h)
{
    uint32_t bits = (uint32_t)h << 16;
    float f;
    memcpy(&f, &bits, sizeof f);
    return f;
}

uint16_t kern_fp32_to_bf16(float f)
{
    uint32_t x;
    memcpy(&x, &f, sizeof x);
    if ((x & 0x7fffffff) > 0x7f800000) return (uint16_t)((x >> 16) | 64); /* NaN, quieted */
    /* Round to nearest even on the 16 dropped bits; subnormals are kept, as current ggml does. */
    return (uint16_t)((x + 0x7fff + ((x >> 16) & 1)) >> 16);
}

/* ---- instruction set ---- */

kern_isa_t kern__isa = KERN_ISA_SCALAR;

/* clang (14) has no "f16c" for __builtin_cpu_supports; CPUID leaf 1 says it (ECX bit 29). */
static bool has_f16c(void)
{
#if defined(__clang__)
    unsigned a, b, c, d;
    return __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
#else
    return __builtin_cpu_supports("f16c");
#endif
}

kern_isa_t kern_isa_best(void)
{
    /* Needed when called from a constructor that may run before libgcc's own. */
    __builtin_cpu_init();
    if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
          has_f16c()))
        return KERN_ISA_SCALAR;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vnni"))
        return KERN_ISA_AVX512;
    return KERN_ISA_AVX2;
}

kern_isa_t kern_set_isa(kern_isa_t isa)
{
    kern_isa_t best = kern_isa_best();
    kern__isa = ((int)isa < 0 || isa > best) ? best : isa;
    return kern__isa;
}

const char *kern_isa_name(kern_isa_t isa)
{
    switch (isa) {
    case KERN_ISA_SCALAR: return "scalar";
    case KERN_ISA_AVX2: return "avx2";
    case KERN_ISA_AVX512: return "avx512";
    default: return "unknown";
    }
}

/* Every process starts with the best ISA in force, before main() and any kernel call, so no
 * dispatch needs a once-flag. */
__attribute__((constructor)) static void isa_init(void)
{
    kern__isa = kern_isa_best();
}
