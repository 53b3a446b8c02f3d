/* The limit model the sweep prints beside every measurement: a generated token cannot take less
 * time than the slowest of three resources allows it,
 *
 *   compute  active weight bytes per step / memory read bandwidth, shared by the tokens of a step
 *   latency  n_layers round trips per step, shared by the tokens of a step (batching, drafts)
 *   wire     activation bytes per token on the busiest node link / that link's rate
 *
 * Each term is a floor, not a prediction: the measured time per token divided by the largest of
 * them says how far the system is from what the machine and the links allow.
 */
#include "bench/bench.h"

#include "model/model.h"

/* Every non-expert matrix of each layer, top-k of its n_expert experts' three matrices, and the
 * output head (norms and the embedding row are noise next to them). */
double bench_limit_active_bytes(const model_t *m)
{
    double b = m->output ? (double)m->output->nbytes : 0;
    for (int il = 0; il < m->hp.n_layer; il++) {
        const model_layer_t *ly = &m->layers[il];
        const model_tensor_t *dense[] = {ly->wq,       ly->wk,        ly->wv,
                                         ly->wo,       ly->ffn_gate,  ly->ffn_up,
                                         ly->ffn_down, ly->gate_inp,  ly->gate_inp_shexp,
                                         ly->gate_shexp, ly->up_shexp, ly->down_shexp};
        for (size_t i = 0; i < sizeof(dense) / sizeof(dense[0]); i++)
            if (dense[i]) b += (double)dense[i]->nbytes;
        const model_tensor_t *exps[] = {ly->gate_exps, ly->up_exps, ly->down_exps};
        for (size_t i = 0; i < 3 && m->hp.n_expert > 0; i++)
            if (exps[i])
                b += (double)exps[i]->nbytes * m->hp.n_expert_used / m->hp.n_expert;
    }
    return b;
}

bench_limit_t bench_limit_compute(const bench_limit_in_t *in)
{
    bench_limit_t l = {0};
    /* Tokens that share one round trip: a step of c sequences carries c tokens through each
     * layer's exchange. Fewer than one would mean round trips the model does not account for. */
    double per_rt = in->rt_per_token > 0 ? in->n_layers / in->rt_per_token : 1;
    l.tokens_per_rt = per_rt;
    if (in->bandwidth_gbs > 0) l.compute_s = in->active_bytes / (in->bandwidth_gbs * 1e9) / per_rt;
    l.latency_s = in->n_layers * in->rtt_ms * 1e-3 / per_rt;
    if (in->rate_mbit > 0) l.wire_s = in->wire_bytes_per_token * 8 / (in->rate_mbit * 1e6);
    l.limit_s = l.compute_s;
    l.bound = "compute";
    if (l.latency_s > l.limit_s) l.limit_s = l.latency_s, l.bound = "latency";
    if (l.wire_s > l.limit_s) l.limit_s = l.wire_s, l.bound = "wire";
    if (l.limit_s > 0 && in->measured_s > 0) l.ratio = in->measured_s / l.limit_s;
    return l;
}
