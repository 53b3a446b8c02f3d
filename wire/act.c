/* Activation codecs: f32 rows to and from the dtypes a tensor frame may carry. The roundings
 * are the kernels' (kern_fp32_to_fp16/bf16, round to nearest even; q8_0 as ggml's x86
 * activation path), so an activation sent as q8_0 is what a local q8_0 dot would have used.
 * Every size is checked against the shape before a byte is touched; the shape itself comes
 * from a validated header. */
#include "wire/wire.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <string.h>

#include "kernels/kern.h"

#define F16_MAX 65504.0f

const char *wire_dtype_name(int dt)
{
    static const char *const names[WIRE_DTYPE_COUNT] = {"bytes", "f32", "f16", "bf16", "q8_0"};
    return dt >= 0 && dt < WIRE_DTYPE_COUNT ? names[dt] : "?";
}

int wire_dtype_parse(const char *name, wire_dtype_t *out)
{
    for (int i = 0; i < WIRE_DTYPE_COUNT; i++) {
        if (strcmp(name, wire_dtype_name(i)) == 0) {
            *out = (wire_dtype_t)i;
            return 0;
        }
    }
    return -EINVAL;
}

uint64_t wire_dtype_row_bytes(int dt, uint64_t n)
{
    /* Bounding n keeps every result below 2^62, far from overflow. */
    if (n > (UINT64_C(1) << 59)) return 0;
    switch (dt) {
    case WIRE_DTYPE_BYTES: return n;
    case WIRE_DTYPE_F32: return n * 4;
    case WIRE_DTYPE_F16:
    case WIRE_DTYPE_BF16: return n * 2;
    case WIRE_DTYPE_Q8_0: {
        /* The block layout is the kernels' (32 elements, fp16 scale + 32 int8 = 34 bytes). */
        const kern_type_info_t *ti = kern_type_info(KERN_Q8_0);
        return n % (uint64_t)ti->block ? 0 : n / (uint64_t)ti->block * ti->block_bytes;
    }
    default: return 0;
    }
}

/* Expected bytes of rows x cols of dt; UINT64_MAX (matches no buffer) when it overflows. */
static uint64_t tensor_bytes(wire_dtype_t dt, uint32_t rows, uint32_t cols)
{
    uint64_t rb = wire_dtype_row_bytes(dt, cols);
    if (rb != 0 && rows > UINT64_MAX / rb) return UINT64_MAX;
    return rb * rows;
}

static int check_shape(wire_dtype_t dt, uint32_t rows, uint32_t cols, size_t bytes)
{
    if (dt == WIRE_DTYPE_BYTES || dt <= 0 || dt >= WIRE_DTYPE_COUNT) return WIRE_E_DTYPE;
    if (cols != 0 && wire_dtype_row_bytes(dt, cols) == 0) return WIRE_E_DTYPE;
    if (tensor_bytes(dt, rows, cols) != bytes) return WIRE_E_SIZE;
    return 0;
}

static bool in_range(const float *x, size_t n, float max)
{
    /* One branch-free pass (it runs over every activation sent): inf exceeds max, and NaN is
     * the one value unequal to itself. */
    float m = 0.0f;
    int nan = 0;
    for (size_t i = 0; i < n; i++) {
        float a = fabsf(x[i]);
        nan |= a != a;
        m = a > m ? a : m;
    }
    return !nan && m <= max;
}

int wire_act_pack(wire_dtype_t dt, const float *x, uint32_t n_rows, uint32_t row_len, void *dst,
                  size_t dst_bytes)
{
    int err = check_shape(dt, n_rows, row_len, dst_bytes);
    if (err) return err;
    size_t n = (size_t)n_rows * row_len;
    switch (dt) {
    case WIRE_DTYPE_F32:
        if (!in_range(x, n, FLT_MAX)) return -ERANGE;
        memcpy(dst, x, n * sizeof(float));
        break;
    case WIRE_DTYPE_F16: {
        if (!in_range(x, n, F16_MAX)) return -ERANGE;
        kern_quantize_act(KERN_F16, x, dst, (int64_t)n);
        break;
    }
    case WIRE_DTYPE_BF16: {
        if (!in_range(x, n, 3.38e38f)) return -ERANGE; /* rounds to inf above ~3.39e38 */
        kern_quantize_act(KERN_BF16, x, dst, (int64_t)n);
        break;
    }
    case WIRE_DTYPE_Q8_0:
        /* The block scale amax/127 is stored as fp16, so amax must stay within 127 * 65504. */
        if (!in_range(x, n, F16_MAX * 127.0f)) return -ERANGE;
        kern_quantize_act(KERN_Q8_0, x, dst, (int64_t)n);
        break;
    default: return WIRE_E_DTYPE;
    }
    return 0;
}

int wire_act_unpack(wire_dtype_t dt, const void *src, size_t src_bytes, uint32_t n_rows,
                    uint32_t row_len, float *x)
{
    int err = check_shape(dt, n_rows, row_len, src_bytes);
    if (err) return err;
    size_t n = (size_t)n_rows * row_len;
    switch (dt) {
    case WIRE_DTYPE_F32: memcpy(x, src, n * sizeof(float)); break;
    case WIRE_DTYPE_F16: kern_dequantize(KERN_F16, src, x, (int64_t)n); break;
    case WIRE_DTYPE_BF16: kern_dequantize(KERN_BF16, src, x, (int64_t)n); break;
    case WIRE_DTYPE_Q8_0: kern_dequantize(KERN_Q8_0, src, x, (int64_t)n); break;
    default: return WIRE_E_DTYPE;
    }
    return 0;
}
