/* Server metrics in the Prometheus text exposition format (version 0.0.4), named after vLLM's
 * and llama-server's where they exist, with the `moemesh:` prefix. Updated and rendered on the
 * loop thread only, so nothing here locks: what other threads own (scheduler, cluster, engine
 * counters) arrives as copies in coord_metrics_gauges_t. Histograms use fixed bucket bounds in
 * seconds.
 */
#include "coordinator/coord.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wire/wire.h"

#define N_BUCKETS 14
static const double bounds[N_BUCKETS] = {0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
                                         0.25,  0.5,    1,     2.5,  5,     10,   30};
#define N_STATUS 16

typedef struct {
    uint64_t bucket[N_BUCKETS]; /* observations <= bounds[i] (not cumulative) */
    uint64_t count;
    double sum;
} hist_t;

struct coord_metrics {
    struct {
        int status;
        uint64_t n;
    } req[N_STATUS];
    uint64_t prompt_tokens, generation_tokens;
    hist_t hist[COORD_HIST_COUNT];
    /* Rolling windows over the expert and node counters, made at the first render that has
     * expert counts (their shape is known only then); placed tells whether the cluster's
     * placement was handed over yet. */
    coord_load_t *load;
    bool placed, no_load; /* no_load: coord_load_new refused the shape (logged once) */
    uint64_t placed_moves; /* live re-placements finished when the placement was last read */
    uint64_t *win;    /* (n_layers, n_expert) scratch */
    double *busy;     /* (n_nodes) cumulative busy seconds, then the window's */
};

static const struct {
    const char *name, *help;
} hist_info[COORD_HIST_COUNT] = {
    {"moemesh:time_to_first_token_seconds", "Time from request arrival to the first token."},
    {"moemesh:inter_token_latency_seconds", "Time between consecutive generated tokens."},
    {"moemesh:e2e_request_latency_seconds", "Time from request arrival to its last token."},
};

coord_metrics_t *coord_metrics_new(void)
{
    return xcalloc(1, sizeof(coord_metrics_t));
}

void coord_metrics_free(coord_metrics_t *m)
{
    if (!m) return;
    coord_load_free(m->load);
    free(m->win);
    free(m->busy);
    free(m);
}

void coord_metrics_request(coord_metrics_t *m, int status)
{
    for (int i = 0; i < N_STATUS; i++) {
        if (m->req[i].status == status || m->req[i].status == 0) {
            m->req[i].status = status;
            m->req[i].n++;
            return;
        }
    }
    /* The server sends a fixed set of statuses, fewer than N_STATUS. */
    CHECK(!"more distinct HTTP statuses than the metrics table holds");
}

void coord_metrics_tokens(coord_metrics_t *m, int n_prompt, int n_generated)
{
    m->prompt_tokens += (uint64_t)(n_prompt > 0 ? n_prompt : 0);
    m->generation_tokens += (uint64_t)(n_generated > 0 ? n_generated : 0);
}

void coord_metrics_observe(coord_metrics_t *m, coord_hist_t h, double seconds)
{
    CHECK(h >= 0 && h < COORD_HIST_COUNT);
    hist_t *x = &m->hist[h];
    if (!(seconds >= 0)) seconds = 0;
    int i = 0;
    while (i < N_BUCKETS && seconds > bounds[i]) i++;
    if (i < N_BUCKETS) x->bucket[i]++;
    x->count++;
    x->sum += seconds;
}

typedef struct {
    char *buf;
    size_t len, cap;
} sbuf_t;

__attribute__((format(printf, 2, 3))) static void put(sbuf_t *s, const char *fmt, ...)
{
    for (;;) {
        va_list ap;
        va_start(ap, fmt);
        int n = vsnprintf(s->buf + s->len, s->cap - s->len, fmt, ap);
        va_end(ap);
        CHECK(n >= 0);
        if ((size_t)n < s->cap - s->len) {
            s->len += (size_t)n;
            return;
        }
        s->cap = s->cap * 2 + (size_t)n;
        s->buf = xrealloc(s->buf, s->cap);
    }
}

static void family(sbuf_t *s, const char *name, const char *type, const char *help)
{
    put(s, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* A label value with \\, " and newline escaped, as the text format wants; cut at cap. */
static const char *label_value(const char *v, char *buf, size_t cap)
{
    size_t k = 0;
    for (; v && *v && k + 3 < cap; v++) {
        if (*v == '\\' || *v == '"') buf[k++] = '\\', buf[k++] = *v;
        else if (*v == '\n') buf[k++] = '\\', buf[k++] = 'n';
        else buf[k++] = *v;
    }
    buf[k] = 0;
    return buf;
}

/* Per expert node: RTT histogram, bytes each way, errors, and whether it is up. */
static void render_nodes(sbuf_t *s, const coord_metrics_gauges_t *g)
{
    char addr[300];
    const char *rtt = "moemesh:node_rtt_seconds";
    family(s, rtt, "histogram", "Expert node round trip, FORWARD sent to RESULT received.");
    for (int i = 0; i < g->n_nodes; i++) {
        const coord_node_stats_t *n = &g->nodes[i];
        label_value(n->endpoint, addr, sizeof(addr));
        /* Every call that got a RESULT is one observation; count = answered calls. */
        uint64_t cum = 0;
        for (int b = 0; b < COORD_RTT_BUCKETS; b++) {
            cum += n->rtt_bucket[b];
            put(s, "%s_bucket{node=\"%d\",addr=\"%s\",le=\"%g\"} %llu\n", rtt, i, addr,
                coord_rtt_bounds[b], (unsigned long long)cum);
        }
        const uint64_t answered = n->results;
        put(s, "%s_bucket{node=\"%d\",addr=\"%s\",le=\"+Inf\"} %llu\n", rtt, i, addr,
            (unsigned long long)answered);
        put(s, "%s_sum{node=\"%d\",addr=\"%s\"} %.6f\n", rtt, i, addr, n->rtt_sum_s);
        put(s, "%s_count{node=\"%d\",addr=\"%s\"} %llu\n", rtt, i, addr,
            (unsigned long long)answered);
    }
    static const struct {
        const char *name, *help;
        size_t off;
    } ctr[] = {
        {"moemesh:node_bytes_sent_total", "Payload bytes sent to the expert node.",
         offsetof(coord_node_stats_t, bytes_sent)},
        {"moemesh:node_bytes_received_total", "Payload bytes received from the expert node.",
         offsetof(coord_node_stats_t, bytes_recv)},
        {"moemesh:node_errors_total", "Calls the expert node failed (error, timeout, bad answer).",
         offsetof(coord_node_stats_t, errors)},
        {"moemesh:node_requests_total", "FORWARD requests sent to the expert node.",
         offsetof(coord_node_stats_t, requests)},
        /* Replicas (remote.c): pairs moved off a failed node, and around a slow one. */
        {"moemesh:node_failovers_total",
         "Pairs sent to a replica because the expert node was down (mid-call or since).",
         offsetof(coord_node_stats_t, failovers)},
        {"moemesh:node_reroutes_total",
         "Pairs sent to a replica instead of the expert node while it was slow.",
         offsetof(coord_node_stats_t, reroutes)},
        {"moemesh:node_stale_total",
         "Answers from the expert node to requests already given up, dropped.",
         offsetof(coord_node_stats_t, stale)},
    };
    for (size_t k = 0; k < sizeof(ctr) / sizeof(ctr[0]); k++) {
        family(s, ctr[k].name, "counter", ctr[k].help);
        for (int i = 0; i < g->n_nodes; i++) {
            uint64_t v;
            memcpy(&v, (const char *)&g->nodes[i] + ctr[k].off, sizeof(v));
            put(s, "%s{node=\"%d\",addr=\"%s\"} %llu\n", ctr[k].name, i,
                label_value(g->nodes[i].endpoint, addr, sizeof(addr)), (unsigned long long)v);
        }
    }
    family(s, "moemesh:node_up", "gauge", "0 while the expert node is failing, else 1.");
    for (int i = 0; i < g->n_nodes; i++)
        put(s, "moemesh:node_up{node=\"%d\",addr=\"%s\"} %d\n", i,
            label_value(g->nodes[i].endpoint, addr, sizeof(addr)), g->nodes[i].down ? 0 : 1);
    family(s, "moemesh:node_slow", "gauge",
           "1 while the expert node's recent RTT is far above its peers' (pairs re-routed).");
    for (int i = 0; i < g->n_nodes; i++)
        put(s, "moemesh:node_slow{node=\"%d\",addr=\"%s\"} %d\n", i,
            label_value(g->nodes[i].endpoint, addr, sizeof(addr)), g->nodes[i].slow ? 1 : 0);
}

/* Live re-placements (coordinator/replace.c). */
static void render_replace(sbuf_t *s, const coord_metrics_gauges_t *g, const coord_cluster_t *c)
{
    char addr[300];
    family(s, "moemesh:node_experts", "gauge",
           "(layer, expert) pairs the expert node holds, replicas included.");
    for (int i = 0; i < g->n_nodes; i++)
        put(s, "moemesh:node_experts{node=\"%d\",addr=\"%s\"} %d\n", i,
            label_value(g->nodes[i].endpoint, addr, sizeof(addr)), g->nodes[i].experts);
    coord_replace_stats_t rs;
    coord_replace_stats(c, &rs);
    family(s, "moemesh:rebalance_moves_total", "counter",
           "Live re-placements of the experts, by outcome (started, finished, aborted).");
    put(s, "moemesh:rebalance_moves_total{outcome=\"started\"} %llu\n",
        (unsigned long long)rs.started);
    put(s, "moemesh:rebalance_moves_total{outcome=\"finished\"} %llu\n",
        (unsigned long long)rs.finished);
    put(s, "moemesh:rebalance_moves_total{outcome=\"aborted\"} %llu\n",
        (unsigned long long)rs.aborted);
    family(s, "moemesh:rebalance_bytes_total", "counter",
           "Expert weight bytes streamed to nodes by live re-placements.");
    put(s, "moemesh:rebalance_bytes_total %llu\n", (unsigned long long)rs.bytes);
    family(s, "moemesh:rebalance_running", "gauge", "1 while a live re-placement runs.");
    put(s, "moemesh:rebalance_running %d\n", rs.running ? 1 : 0);
    family(s, "moemesh:rebalance_imbalance", "gauge",
           "Imbalance (step time over a perfect split's) the last re-placement planned, "
           "before and after it.");
    put(s, "moemesh:rebalance_imbalance{when=\"before\"} %.6f\n", rs.last_before);
    put(s, "moemesh:rebalance_imbalance{when=\"after\"} %.6f\n", rs.last_after);
}

/* Samples the counters into the windows and renders what they show: tokens per (layer,
 * expert) over the last minute, each layer's busiest expert share and collapse flag, the
 * imbalance of the cluster's placement, and each node's busy ratio. Node busy time is the sum
 * of its calls' round trips (FORWARD to RESULT) until RESULT's compute_us reaches the cluster's
 * counters: an upper bound that includes the network. */
static void render_load(coord_metrics_t *m, const coord_metrics_gauges_t *g, sbuf_t *s)
{
    const int L = g->n_layers, E = g->n_expert, N = g->n_nodes;
    if (m->no_load) return;
    if (!m->load) {
        coord_load_config_t cfg = coord_load_config_default();
        cfg.n_layers = L, cfg.n_expert = E, cfg.n_nodes = N;
        m->load = coord_load_new(&cfg);
        if (!m->load) { /* logged; a shape this large shows the totals only */
            m->no_load = true;
            return;
        }
        m->win = xmalloc(sizeof(uint64_t) * ((size_t)L * E + 1));
        m->busy = xmalloc(sizeof(double) * ((size_t)N + 1));
    }
    coord_replace_stats_t rs = {0};
    if (g->cluster) coord_replace_stats(g->cluster, &rs);
    /* Again after every live re-placement: its moves change the owners. */
    if (g->cluster && (!m->placed || rs.finished != m->placed_moves)) {
        const int R = coord_cluster_replicas(g->cluster);
        int *own = xmalloc(sizeof(int) * ((size_t)L * E * R + 1));
        coord_replace_owners(g->cluster, own);
        coord_load_set_placement(m->load, own, NULL, R, NULL); /* calls go to the primary */
        free(own);
        m->placed = true;
        m->placed_moves = rs.finished;
    }
    for (int i = 0; i < N; i++) m->busy[i] = g->nodes[i].rtt_sum_s;
    coord_load_sample(m->load, wire_now(), g->expert_tokens, N ? m->busy : NULL);
    double secs = coord_load_tokens(m->load, COORD_LOAD_RECENT_S, m->win);

    const char *name = "moemesh:expert_tokens_recent";
    family(s, name, "gauge", "Tokens routed to each (layer, expert) over the last 60 s "
                             "(between the scrapes that span it).");
    for (int l = 0; l < L; l++)
        for (int e = 0; e < E && g->moe_layer[l]; e++)
            put(s, "%s{layer=\"%d\",expert=\"%d\"} %llu\n", name, l, e,
                (unsigned long long)m->win[(size_t)l * E + e]);
    family(s, "moemesh:expert_window_seconds", "gauge",
           "Seconds the *_recent series cover (0 until two scrapes).");
    put(s, "moemesh:expert_window_seconds %.6f\n", secs);
    family(s, "moemesh:layer_top_expert_share", "gauge",
           "Share of a layer's recent tokens taken by its busiest expert (0..1).");
    for (int l = 0; l < L; l++) {
        double sh = 0;
        if (!g->moe_layer[l]) continue;
        coord_load_collapsed(m->load, l, NULL, &sh);
        put(s, "moemesh:layer_top_expert_share{layer=\"%d\"} %.6f\n", l, sh);
    }
    family(s, "moemesh:layer_routing_collapsed", "gauge",
           "1 while one expert takes more than half of the layer's recent tokens.");
    for (int l = 0; l < L; l++)
        if (g->moe_layer[l])
            put(s, "moemesh:layer_routing_collapsed{layer=\"%d\"} %d\n", l,
                coord_load_collapsed(m->load, l, NULL, NULL) ? 1 : 0);
    if (m->placed) {
        family(s, "moemesh:layer_imbalance", "gauge",
               "Busiest node's recent tokens of the layer over the mean node's (1 = even).");
        for (int l = 0; l < L; l++)
            if (g->moe_layer[l])
                put(s, "moemesh:layer_imbalance{layer=\"%d\"} %.6f\n", l,
                    coord_load_imbalance(m->load, COORD_LOAD_RECENT_S, l));
    }
    if (N > 0) {
        double span = coord_load_busy(m->load, COORD_LOAD_RECENT_S, m->busy);
        char addr[300];
        family(s, "moemesh:node_busy_ratio", "gauge",
               "Recent seconds of calls in flight on the node per second (round trips).");
        for (int i = 0; i < N; i++)
            put(s, "moemesh:node_busy_ratio{node=\"%d\",addr=\"%s\"} %.6f\n", i,
                label_value(g->nodes[i].endpoint, addr, sizeof(addr)),
                span > 0 ? m->busy[i] / span : 0);
    }
}

size_t coord_metrics_render(coord_metrics_t *m, const coord_metrics_gauges_t *g, char **out)
{
    sbuf_t s = {.buf = xmalloc(4096), .cap = 4096};
    family(&s, "moemesh:requests_total", "counter", "HTTP requests answered, by status.");
    for (int i = 0; i < N_STATUS && m->req[i].status; i++)
        put(&s, "moemesh:requests_total{status=\"%d\"} %llu\n", m->req[i].status,
            (unsigned long long)m->req[i].n);
    family(&s, "moemesh:prompt_tokens_total", "counter", "Prompt tokens processed.");
    put(&s, "moemesh:prompt_tokens_total %llu\n", (unsigned long long)m->prompt_tokens);
    family(&s, "moemesh:generation_tokens_total", "counter", "Tokens generated.");
    put(&s, "moemesh:generation_tokens_total %llu\n", (unsigned long long)m->generation_tokens);
    for (int h = 0; h < COORD_HIST_COUNT; h++) {
        const hist_t *x = &m->hist[h];
        const char *name = hist_info[h].name;
        family(&s, name, "histogram", hist_info[h].help);
        uint64_t cum = 0;
        for (int i = 0; i < N_BUCKETS; i++) {
            cum += x->bucket[i];
            put(&s, "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i], (unsigned long long)cum);
        }
        put(&s, "%s_bucket{le=\"+Inf\"} %llu\n", name, (unsigned long long)x->count);
        put(&s, "%s_sum %.6f\n%s_count %llu\n", name, x->sum, name,
            (unsigned long long)x->count);
    }
    family(&s, "moemesh:queue_length", "gauge", "Requests waiting for a slot.");
    put(&s, "moemesh:queue_length %d\n", g->queue_length);
    family(&s, "moemesh:slots_busy", "gauge", "Sequence slots generating.");
    put(&s, "moemesh:slots_busy %d\n", g->slots_busy);
    family(&s, "moemesh:slots_total", "gauge", "Sequence slots (-np).");
    put(&s, "moemesh:slots_total %d\n", g->slots_total);
    family(&s, "moemesh:ready", "gauge", "1 when the model is loaded and serving.");
    put(&s, "moemesh:ready %d\n", g->ready ? 1 : 0);
    family(&s, "moemesh:kv_cache_usage_ratio", "gauge",
           "KV-cache positions in use over the slots' capacity (0..1).");
    put(&s, "moemesh:kv_cache_usage_ratio %.6f\n", g->kv_usage);
    if (g->n_nodes > 0) render_nodes(&s, g);
    if (g->cluster) render_replace(&s, g, g->cluster);
    if (g->expert_tokens && g->moe_layer && g->n_expert > 0) {
        const char *name = "moemesh:expert_tokens_total";
        family(&s, name, "counter", "Tokens routed to each (layer, expert).");
        for (int l = 0; l < g->n_layers; l++) {
            if (!g->moe_layer[l]) continue;
            for (int e = 0; e < g->n_expert; e++)
                put(&s, "%s{layer=\"%d\",expert=\"%d\"} %llu\n", name, l, e,
                    (unsigned long long)g->expert_tokens[(size_t)l * g->n_expert + e]);
        }
        render_load(m, g, &s);
    }
    *out = s.buf;
    return s.len;
}
