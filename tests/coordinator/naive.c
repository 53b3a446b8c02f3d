/* See naive.h. */
#include "naive.h"

#include <math.h>

void naive_matvec(double *y, const float *w, int rows, int cols, const double *x)
{
    for (int r = 0; r < rows; r++) {
        double s = 0;
        for (int i = 0; i < cols; i++) s += (double)w[(size_t)r * cols + i] * x[i];
        y[r] = s;
    }
}

void naive_rmsnorm(double *y, const double *x, const float *w, int n, double eps)
{
    double ss = 0;
    for (int i = 0; i < n; i++) ss += x[i] * x[i];
    double s = 1.0 / sqrt(ss / n + eps);
    for (int i = 0; i < n; i++) y[i] = x[i] * s * (w ? w[i] : 1.0);
}

void naive_rope(const model_hparams_t *hp, double *x, int n, int pos, bool neox)
{
    /* YaRN's ramp runs over the dims between the corrected fast and slow boundaries. */
    double lo = 0, hi = 0;
    if (hp->rope_yarn) {
        double c0 = n * log(hp->n_ctx_orig / (hp->yarn_beta_fast * 2 * M_PI)) /
                    (2 * log(hp->rope_base));
        double c1 = n * log(hp->n_ctx_orig / (hp->yarn_beta_slow * 2 * M_PI)) /
                    (2 * log(hp->rope_base));
        lo = fmax(0, floor(c0));
        hi = fmin(n - 1, ceil(c1));
    }
    for (int i = 0; i < n / 2; i++) {
        double ext = pos * pow(hp->rope_base, -2.0 * i / n);
        double th = ext * hp->rope_scale, mag = 1;
        if (hp->rope_yarn) {
            double y = (i - lo) / fmax(0.001, hi - lo);
            double ramp = (1 - fmin(1, fmax(0, y))) * hp->yarn_ext_factor;
            th = th * (1 - ramp) + ext * ramp;
            mag = hp->yarn_attn_factor;
        }
        int a = neox ? i : 2 * i, b = neox ? i + n / 2 : 2 * i + 1;
        double u = x[a], v = x[b];
        x[a] = (u * cos(th) - v * sin(th)) * mag;
        x[b] = (u * sin(th) + v * cos(th)) * mag;
    }
}
