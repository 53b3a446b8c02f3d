/* Naive double-precision building blocks for the reference forward passes of the model-family
 * tests (families_test.c, gptoss_test.c): written from the published architectures over the
 * stored F32 weights, plain loops, no kernels, so the engine is checked against something that
 * shares none of its code. Each test file composes these into its own architecture's pass.
 */
#ifndef MOEMESH_TESTS_NAIVE_H
#define MOEMESH_TESTS_NAIVE_H

#include <stdbool.h>

#include "model/model.h"

/* y (rows) = W x, W an F32 matrix of `cols` columns (a 2-D tensor or a slice of a 3-D one). */
void naive_matvec(double *y, const float *w, int rows, int cols, const double *x);
/* y (n) = x / rms(x) * w; w NULL: no weight. y may be x. */
void naive_rmsnorm(double *y, const double *x, const float *w, int n, double eps);
/* RoPE of one vector's first n dims: pair i is (2i, 2i+1) or, neox, (i, i + n/2); angle
 * pos * base^(-2i/n) times rope_scale, with YaRN's blend of interpolated and extrapolated
 * angles and its magnitude yarn_attn_factor when hp->rope_yarn. */
void naive_rope(const model_hparams_t *hp, double *x, int n, int pos, bool neox);

#endif
