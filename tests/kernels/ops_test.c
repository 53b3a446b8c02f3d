/* Tests for kernels/ops.c against naive double-precision references on seeded data of odd sizes.
 * Bounds: each op does a handful of float roundings per element (about 1 ulp each, 6e-8
 * relative) plus libm's expf/sinf/cosf (within 1-2 ulp), so 2e-6 relative (~32 ulp) is tight
 * enough to catch a wrong formula or order of operations, yet above rounding noise. */
#include <criterion/criterion.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

#include "kernels/kern.h"

#include "trand.h"

static const int64_t sizes[] = {1, 7, 64, 4097};

static void assert_close(float got, double want, double rel, const char *what, int64_t i)
{
    double err = fabs((double)got - want);
    cr_assert(err <= rel * fabs(want) + 1e-30, "%s[%ld]: got %.9g want %.9g", what, (long)i,
              got, want);
}

Test(kern_ops, rmsnorm_matches_double_reference)
{
    rng_state = 1;
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        int64_t n = sizes[s];
        float *x = malloc(n * sizeof(float)), *w = malloc(n * sizeof(float));
        float *out = malloc(n * sizeof(float));
        for (int64_t i = 0; i < n; i++) x[i] = 3 * frand(), w[i] = frand();
        const float eps = 1e-5f;
        double ss = 0;
        for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
        double scale = 1.0 / sqrt(ss / n + eps);
        kern_rmsnorm(out, x, w, n, eps);
        for (int64_t i = 0; i < n; i++) assert_close(out[i], x[i] * scale * w[i], 2e-6, "w", i);
        kern_rmsnorm(x, x, NULL, n, eps); /* aliasing and no weight */
        for (int64_t i = 0; i < n; i++) assert_close(x[i], out[i] / w[i], 2e-6, "alias", i);
        free(x), free(w), free(out);
    }
}

/* The angle recurrence is the specified semantics (ggml multiplies theta by theta_scale pair
 * after pair, in float, and applies freq_scale last), so the reference builds theta the same
 * way; the rotation itself is done in double. */
static void rope_ref(double *y, const float *x, int nh, int hd, int nr, int pos, float base,
                     float fs, bool neox)
{
    for (int i = 0; i < nh * hd; i++) y[i] = x[i];
    float ts = powf(base, -2.0f / nr), t = (float)pos;
    for (int i = 0; i < nr / 2; i++, t *= ts) {
        double th = (double)(fs * t), c = cos(th), s = sin(th);
        for (int h = 0; h < nh; h++) {
            int a = h * hd + (neox ? i : 2 * i), b = h * hd + (neox ? i + nr / 2 : 2 * i + 1);
            y[a] = x[a] * c - x[b] * s, y[b] = x[a] * s + x[b] * c;
        }
    }
}

Test(kern_ops, rope_matches_reference_in_both_modes)
{
    rng_state = 2;
    const struct { int nh, hd, nr, pos; float base, fs; } cs[] = {
        {1, 2, 2, 0, 10000, 1}, {3, 8, 8, 1, 10000, 1}, {7, 64, 64, 513, 10000, 1},
        {4, 128, 64, 4097, 1e6f, 0.25f}, {2, 96, 32, 77, 500000, 1},
    };
    for (size_t c = 0; c < sizeof(cs) / sizeof(cs[0]); c++) {
        for (int neox = 0; neox < 2; neox++) {
            int n = cs[c].nh * cs[c].hd;
            float *x = malloc(n * sizeof(float)), *x0 = malloc(n * sizeof(float));
            double *y = malloc(n * sizeof(double));
            for (int i = 0; i < n; i++) x0[i] = x[i] = frand();
            rope_ref(y, x0, cs[c].nh, cs[c].hd, cs[c].nr, cs[c].pos, cs[c].base, cs[c].fs, neox);
            kern_rope(x, cs[c].nh, cs[c].hd, cs[c].nr, cs[c].pos, cs[c].base, cs[c].fs, neox);
            for (int i = 0; i < n; i++) {
                /* Absolute bound: sinf/cosf of angles up to ~4000 rad keep ~1 ulp of the
                 * result, and the two products of |x| < 1 add a few ulp of 1. */
                cr_assert(fabs(x[i] - y[i]) <= 1e-6, "case %zu neox %d [%d]: %g vs %g", c,
                          neox, i, x[i], y[i]);
                if (i % cs[c].hd >= cs[c].nr) cr_assert_eq(x[i], x0[i], "dims past n_rot move");
            }
            free(x), free(x0), free(y);
        }
    }
}

Test(kern_ops, rope_angles_follow_the_closed_form)
{
    /* Independent of the recurrence: at a small position theta_i = pos*fs*base^(-2i/n_rot) in
     * double; float rounding of the repeated product drifts by about i ulp of theta, < 1e-5. */
    float x[64];
    for (int i = 0; i < 64; i++) x[i] = (i % 2 == 0) ? 1.0f : 0.0f; /* (1, 0) pairs */
    kern_rope(x, 1, 64, 64, 3, 10000.0f, 0.5f, false);
    for (int i = 0; i < 32; i++) {
        double th = 3 * 0.5 * pow(10000.0, -2.0 * i / 64);
        cr_assert(fabs(x[2 * i] - cos(th)) < 1e-5 && fabs(x[2 * i + 1] - sin(th)) < 1e-5,
                  "pair %d", i);
    }
}

Test(kern_ops, softmax_matches_double_reference)
{
    rng_state = 3;
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        int64_t n = sizes[s];
        float *x = malloc(n * sizeof(float));
        double *y = malloc(n * sizeof(double)), max = -INFINITY, sum = 0, tot = 0;
        for (int64_t i = 0; i < n; i++) x[i] = 20 * frand(), max = fmax(max, x[i]);
        double *d = malloc(n * sizeof(double));
        for (int64_t i = 0; i < n; i++) sum += y[i] = exp(d[i] = x[i] - max);
        kern_softmax(x, n);
        /* x - max is rounded to float before expf: half an ulp of |d| shifts the result by
         * |d| * 6e-8 relative, on top of the general bound. */
        for (int64_t i = 0; i < n; i++)
            assert_close(x[i], y[i] / sum, 2e-6 + 6e-8 * fabs(d[i]), "p", i), tot += x[i];
        free(d);
        cr_assert(fabs(tot - 1) < 1e-5);
        free(x), free(y);
    }
}

Test(kern_ops, swiglu_matches_double_reference)
{
    rng_state = 4;
    for (size_t s = 0; s < sizeof(sizes) / sizeof(sizes[0]); s++) {
        int64_t n = sizes[s];
        float *g = malloc(n * sizeof(float)), *u = malloc(n * sizeof(float));
        float *out = malloc(n * sizeof(float));
        for (int64_t i = 0; i < n; i++) g[i] = 8 * frand(), u[i] = frand();
        kern_swiglu(out, g, u, n);
        for (int64_t i = 0; i < n; i++)
            assert_close(out[i], g[i] / (1 + exp(-(double)g[i])) * u[i], 2e-6, "y", i);
        kern_swiglu(g, g, u, n); /* out aliasing gate */
        for (int64_t i = 0; i < n; i++) cr_assert_eq(g[i], out[i]);
        free(g), free(u), free(out);
    }
}

static const float *topk_vals;
static int by_value_then_index(const void *a, const void *b)
{
    int i = *(const int *)a, j = *(const int *)b;
    if (topk_vals[i] != topk_vals[j]) return topk_vals[i] > topk_vals[j] ? -1 : 1;
    return i - j;
}

Test(kern_ops, topk_is_largest_first_with_ties_to_lower_index)
{
    rng_state = 5;
    const int ns[] = {1, 7, 8, 60, 257};
    for (size_t s = 0; s < sizeof(ns) / sizeof(ns[0]); s++) {
        int n = ns[s], *all = malloc(n * sizeof(int)), idx[8];
        float *x = malloc(n * sizeof(float));
        /* Values from a small set so ties are frequent. */
        for (int i = 0; i < n; i++) x[i] = (float)(int)(5 * frand()), all[i] = i;
        topk_vals = x;
        qsort(all, n, sizeof(int), by_value_then_index);
        for (int k = 1; k <= 8 && k <= n; k++) {
            kern_topk(x, n, k, idx);
            for (int j = 0; j < k; j++) cr_assert_eq(idx[j], all[j], "n %d k %d pos %d", n, k, j);
        }
        free(all), free(x);
    }
}
