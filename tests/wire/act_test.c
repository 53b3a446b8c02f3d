/* Tests for wire/act.c (activation codecs) and wire/crc32c.c. Error bounds per dtype:
 *   f32  exact.
 *   f16  round to nearest: |y - x| <= |x| * 2^-11 for normal values, 2^-25 absolute below
 *        2^-14 (half precision's subnormal spacing is 2^-24, half of it is the bound).
 *   bf16 round to nearest with 8 significant bits: |y - x| <= |x| * 2^-8.
 *   q8_0 per block of 32 with a = max |x|: rounding x/d to an integer costs d/2 = a/254; the
 *        scale d = a/127 is then stored as fp16 (relative error 2^-11), which moves each of
 *        |q| <= 127 steps by d * 2^-11, i.e. at most a * 2^-11; plus f32 slack of a * 2^-20.
 */
#include <criterion/criterion.h>
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "wire/wire.h"

/* Seeded xorshift so failures reproduce. */
static float rnd(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return (float)(*s >> 8) / (float)(1 << 24) * 2.0f - 1.0f;
}

/* rows x cols of values over several magnitudes, so relative bounds are exercised. */
static float *make_rows(uint32_t rows, uint32_t cols, uint32_t seed)
{
    float *x = xmalloc(sizeof(float) * rows * cols);
    uint32_t s = seed;
    for (size_t i = 0; i < (size_t)rows * cols; i++) {
        float mag = powf(10.0f, (float)(int)(fabsf(rnd(&s)) * 6.0f) - 3.0f); /* 1e-3 .. 1e2 */
        x[i] = rnd(&s) * mag;
    }
    return x;
}

static float *round_trip(wire_dtype_t dt, const float *x, uint32_t rows, uint32_t cols)
{
    size_t bytes = wire_dtype_row_bytes(dt, cols) * rows;
    void *buf = xmalloc_aligned(64, bytes ? bytes : 1);
    cr_assert_eq(wire_act_pack(dt, x, rows, cols, buf, bytes), 0, "%s", wire_dtype_name(dt));
    float *y = xmalloc(sizeof(float) * rows * cols + 1);
    cr_assert_eq(wire_act_unpack(dt, buf, bytes, rows, cols, y), 0);
    free(buf);
    return y;
}

Test(wire_act, f32_is_exact)
{
    const uint32_t shapes[][2] = {{1, 1}, {7, 7}, {3, 4097}};
    for (size_t k = 0; k < 3; k++) {
        float *x = make_rows(shapes[k][0], shapes[k][1], 1 + (uint32_t)k);
        float *y = round_trip(WIRE_DTYPE_F32, x, shapes[k][0], shapes[k][1]);
        cr_assert_eq(memcmp(x, y, sizeof(float) * shapes[k][0] * shapes[k][1]), 0);
        free(x);
        free(y);
    }
}

Test(wire_act, f16_and_bf16_round_within_half_an_ulp)
{
    const uint32_t rows = 7, cols = 4097;
    float *x = make_rows(rows, cols, 42);
    x[0] = 1e-6f; /* an f16 subnormal */
    float *h = round_trip(WIRE_DTYPE_F16, x, rows, cols);
    float *b = round_trip(WIRE_DTYPE_BF16, x, rows, cols);
    for (size_t i = 0; i < (size_t)rows * cols; i++) {
        float ax = fabsf(x[i]);
        float bound16 = ax >= 0x1p-14f ? ax * 0x1p-11f : 0x1p-25f;
        cr_assert_leq(fabsf(h[i] - x[i]), bound16, "f16 at %zu: %g -> %g", i, x[i], h[i]);
        cr_assert_leq(fabsf(b[i] - x[i]), ax * 0x1p-8f, "bf16 at %zu: %g -> %g", i, x[i], b[i]);
    }
    free(x);
    free(h);
    free(b);
}

Test(wire_act, q8_0_error_within_block_bound)
{
    const uint32_t shapes[][2] = {{1, 32}, {7, 96}, {3, 4096}};
    for (size_t k = 0; k < 3; k++) {
        uint32_t rows = shapes[k][0], cols = shapes[k][1];
        float *x = make_rows(rows, cols, 7 + (uint32_t)k);
        float *y = round_trip(WIRE_DTYPE_Q8_0, x, rows, cols);
        for (size_t b = 0; b < (size_t)rows * cols / 32; b++) {
            float amax = 0;
            for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[b * 32 + j]));
            float bound = amax / 254.0f + amax * 0x1p-11f + amax * 0x1p-20f;
            for (int j = 0; j < 32; j++) {
                size_t i = b * 32 + j;
                cr_assert_leq(fabsf(y[i] - x[i]), bound, "block %zu: %g -> %g", b, x[i], y[i]);
            }
        }
        free(x);
        free(y);
    }
}

Test(wire_act, bad_shapes_and_ranges_are_refused)
{
    float x[64] = {0};
    unsigned char buf[256];
    /* q8_0 needs whole blocks of 32; the caller must choose another dtype. */
    cr_assert_eq(wire_dtype_row_bytes(WIRE_DTYPE_Q8_0, 33), 0);
    cr_assert_eq(wire_act_pack(WIRE_DTYPE_Q8_0, x, 1, 33, buf, 34), WIRE_E_DTYPE);
    cr_assert_eq(wire_act_pack(WIRE_DTYPE_F32, x, 2, 8, buf, 63), WIRE_E_SIZE);
    cr_assert_eq(wire_act_unpack(WIRE_DTYPE_F16, buf, 31, 2, 8, x), WIRE_E_SIZE);
    cr_assert_eq(wire_act_pack(WIRE_DTYPE_BYTES, x, 1, 8, buf, 8), WIRE_E_DTYPE);
    cr_assert_eq(wire_act_pack((wire_dtype_t)9, x, 1, 8, buf, 8), WIRE_E_DTYPE);
    x[3] = 70000.0f; /* beyond f16, fine for q8_0 (scale 551) and bf16 */
    cr_assert_eq(wire_act_pack(WIRE_DTYPE_F16, x, 1, 32, buf, 64), -ERANGE);
    cr_assert_eq(wire_act_pack(WIRE_DTYPE_Q8_0, x, 1, 32, buf, 34), 0);
    x[3] = INFINITY;
    cr_assert_eq(wire_act_pack(WIRE_DTYPE_F32, x, 1, 32, buf, 128), -ERANGE);
    cr_assert_eq(wire_act_pack(WIRE_DTYPE_BF16, x, 1, 32, buf, 64), -ERANGE);
    x[3] = NAN;
    cr_assert_eq(wire_act_pack(WIRE_DTYPE_Q8_0, x, 1, 32, buf, 34), -ERANGE);
}

Test(wire_act, dtype_names_and_row_bytes)
{
    wire_dtype_t dt;
    for (int i = 0; i < WIRE_DTYPE_COUNT; i++) {
        cr_assert_eq(wire_dtype_parse(wire_dtype_name(i), &dt), 0);
        cr_assert_eq((int)dt, i);
    }
    cr_assert_eq(wire_dtype_parse("q4_0", &dt), -EINVAL);
    cr_assert_eq(wire_dtype_row_bytes(WIRE_DTYPE_F32, 10), 40);
    cr_assert_eq(wire_dtype_row_bytes(WIRE_DTYPE_BF16, 10), 20);
    cr_assert_eq(wire_dtype_row_bytes(WIRE_DTYPE_Q8_0, 64), 68);
    cr_assert_eq(wire_dtype_row_bytes(WIRE_DTYPE_BYTES, 5), 5);
    cr_assert_eq(wire_dtype_row_bytes(WIRE_DTYPE_COUNT, 5), 0);
    cr_assert_eq(wire_dtype_row_bytes(WIRE_DTYPE_F32, UINT64_MAX / 2), 0, "overflow refused");
}

Test(wire_crc32c, check_value_and_chunks_chain)
{
    cr_assert_eq(wire_crc32c(0, "123456789", 9), 0xE3069283u);
    cr_assert_eq(wire_crc32c(0, "", 0), 0);
    unsigned char buf[1000];
    for (int i = 0; i < 1000; i++) buf[i] = (unsigned char)(i * 7 + 3);
    uint32_t whole = wire_crc32c(0, buf, sizeof(buf));
    uint32_t c = wire_crc32c(0, buf, 1);
    c = wire_crc32c(c, buf + 1, 500);
    c = wire_crc32c(c, buf + 501, 499);
    cr_assert_eq(c, whole);
    buf[700] ^= 1;
    cr_assert_neq(wire_crc32c(0, buf, sizeof(buf)), whole, "a flipped bit changes the CRC");
}

Test(wire_err, strerror_names_project_codes_and_errnos)
{
    for (int e = WIRE_E_FIRST; e <= WIRE_E_LAST; e++) {
        cr_assert_not_null(wire_strerror(e));
        cr_assert_gt(strlen(wire_strerror(e)), 5);
    }
    cr_assert_str_eq(wire_strerror(WIRE_E_VERSION), "protocol version mismatch");
    cr_assert_str_eq(wire_strerror(-EINVAL), strerror(EINVAL));
}
