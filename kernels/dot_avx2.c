/* kernels/dot_avx2.c — AVX2 dot products and activation rounding. Placeholder: every entry is
 * NULL, so kern_vec_dot and kern_quantize_act fall back to the scalar reference in dot.c until
 * the vectorised kernels land (owned by the AVX2 work, which replaces this file).
 */
#include "kernels/kern-int.h"

const kern__dot_fn kern__dot_avx2[KERN_TYPE_COUNT] = {0};
const kern__quant_fn kern__quant_act_avx2[KERN_TYPE_COUNT] = {0};
