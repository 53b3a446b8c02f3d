/* `moemesh-bench overlap`: how much of the network the micro-batch pipeline hides. Expert
 * nodes (moemesh-expert processes beside this program, on 127.0.0.1) sit behind wire/proxy.c
 * relays adding half the round-trip time each way; the coordinator stack (cluster, remote
 * experts, engine, scheduler) runs in this process. For each node count, RTT and concurrency
 * (sequences generating at once) it runs the same requests with one micro-batch (nothing
 * overlaps) and with the adaptive choice, and reports per decode step: wall time, the
 * coordinator's compute (time in the engine not blocked waiting for a RESULT), communication
 * (time with a request in flight) and overlap efficiency = (compute + comm - step) /
 * min(compute, comm): 1 when the shorter of the two is wholly hidden under the other, 0 when
 * they take turns. Last, tokens per round trip with speculative drafts on a repetitive prompt.
 *
 * Everything shares this machine's cores — nodes, relays and coordinator — so the "remote"
 * compute competes with the coordinator's; the figures say what overlaps, not what a cluster of
 * real machines would reach.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>
#include <uv.h>

#include "bench/bench.h"
#include "coordinator/coord.h"
#include "wire/wire.h"

#define MAX_NODES 3
#define MAX_CONC 16

/* The default model: per layer about 10 M attention weights in Q8_0 (about a millisecond of
 * coordinator compute per decode step on one core of a small VM), 16 experts of which 4 per
 * token. Generated once, kept in /tmp. */
static const model_gen_params_t default_model = {
    .arch = "qwen3moe", .name = "overlap-bench", .n_layers = 8, .n_embd = 2048, .n_head = 16,
    .n_head_kv = 4, .head_dim = 128, .n_expert = 16, .n_expert_used = 4, .expert_ff = 512,
    .n_vocab = 4096, .type = KERN_Q8_0, .seed = 1, .n_threads = 2};
#define DEFAULT_MODEL_PATH "/tmp/moemesh-bench-overlap-q8_0.gguf"

static void usage(FILE *f)
{
    fprintf(f,
            "usage: moemesh-bench overlap [--quick] [--json] [-m MODEL] [-t THREADS] [-n TOKENS]\n"
            "  2 and 3 expert nodes behind relays at RTT 0, 0.5, 1, 2, 5 ms, concurrency 1, 4, 8,\n"
            "  16; one micro-batch against the adaptive pipeline. --quick: 2 nodes, RTT 0 and 2,\n"
            "  concurrency 1 and 8. Without -m a model is generated into %s.\n"
            "  -t coordinator threads (default 1), -n tokens generated per sequence (default 24)\n",
            DEFAULT_MODEL_PATH);
}

/* ---- expert node processes ---- */

typedef struct {
    pid_t pid;
    char endpoint[128];
} node_t;

/* Starts moemesh-expert (beside this program) serving model with one thread; 0 or -1. */
static int node_start(node_t *n, const char *model)
{
    char self[PATH_MAX - 32], prog[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", self, sizeof(self) - 1);
    if (len <= 0) return -1;
    self[len] = 0;
    *strrchr(self, '/') = 0;
    snprintf(prog, sizeof(prog), "%s/moemesh-expert", self);
    int fds[2];
    if (pipe(fds) != 0) return -1;
    pid_t parent = getpid(), pid = fork();
    if (pid < 0) return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        dup2(fds[1], 1);
        close(fds[0]), close(fds[1]);
        int fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
        if (fd >= 0) dup2(fd, 2);
        execl(prog, prog, "-l", "tcp://127.0.0.1:*", "-m", model, "-t", "1", (char *)NULL);
        _exit(127);
    }
    close(fds[1]);
    n->pid = pid;
    char line[256];
    size_t got = 0;
    double deadline = wire_now() + 30;
    while (got < sizeof(line) - 1) {
        struct pollfd p = {fds[0], POLLIN, 0};
        int left = (int)((deadline - wire_now()) * 1e3);
        if (left <= 0 || poll(&p, 1, left) != 1 || read(fds[0], line + got, 1) != 1) break;
        if (line[got] == '\n') break;
        got++;
    }
    line[got] = 0;
    close(fds[0]);
    if (sscanf(line, "listening on %127s", n->endpoint) != 1) {
        fprintf(stderr, "overlap: %s did not start (said '%s')\n", prog, line);
        return -1;
    }
    return 0;
}

static void node_stop(node_t *n)
{
    if (n->pid > 0) kill(n->pid, SIGKILL), waitpid(n->pid, NULL, 0);
    n->pid = 0;
}

/* ---- relays ---- */

typedef struct {
    uv_loop_t loop;
    uv_async_t stop;
    wire_proxy_t *px[MAX_NODES];
    int n;
    pthread_t th;
    char ep[MAX_NODES][64];
    const char *eps[MAX_NODES];
} relays_t;

static void *relays_main(void *arg)
{
    relays_t *r = arg;
    uv_run(&r->loop, UV_RUN_DEFAULT);
    return NULL;
}

static void on_relays_stop(uv_async_t *a)
{
    relays_t *r = a->data;
    for (int i = 0; i < r->n; i++) wire_proxy_close(r->px[i], NULL, NULL);
    uv_close((uv_handle_t *)a, NULL);
}

static int relays_start(relays_t *r, const node_t *nodes, int n, double one_way_ms)
{
    memset(r, 0, sizeof(*r));
    if (uv_loop_init(&r->loop) != 0) return -1;
    for (int i = 0; i < n; i++) {
        wire_proxy_config_t cfg = {.listen_host = "127.0.0.1", .target_host = "127.0.0.1",
                                   .target_port = atoi(strrchr(nodes[i].endpoint, ':') + 1),
                                   .delay_ms = one_way_ms, .seed = 1 + (uint64_t)i};
        if (!(r->px[i] = wire_proxy_new(&r->loop, &cfg))) return -1;
        r->n++;
        snprintf(r->ep[i], sizeof(r->ep[i]), "tcp://127.0.0.1:%d", wire_proxy_port(r->px[i]));
        r->eps[i] = r->ep[i];
    }
    uv_async_init(&r->loop, &r->stop, on_relays_stop);
    r->stop.data = r;
    return pthread_create(&r->th, NULL, relays_main, r) == 0 ? 0 : -1;
}

static void relays_stop(relays_t *r)
{
    uv_async_send(&r->stop);
    pthread_join(r->th, NULL);
    uv_loop_close(&r->loop);
}

/* ---- one measurement ---- */

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int left;  /* requests not finished */
    int bad;   /* finished other than by length */
} waiter_t;

static bool on_tok(void *ud, const coord_token_t *t)
{
    (void)ud, (void)t;
    return true;
}

static void on_done(void *ud, coord_finish_t why, const coord_gen_stats_t *st)
{
    (void)st;
    waiter_t *w = ud;
    pthread_mutex_lock(&w->mu);
    w->left--;
    w->bad += why != COORD_FINISH_LENGTH;
    pthread_cond_signal(&w->cv);
    pthread_mutex_unlock(&w->mu);
}

typedef struct {
    int micro;             /* micro-batches asked for (0 adaptive) */
    double mb_mean;        /* micro-batches per step, as chosen */
    double tok_s;          /* generated tokens per second */
    double step_ms, compute_ms, comm_ms, eff;
    double tokens_per_pass; /* generated tokens per forward pass of a sequence */
} point_t;

typedef struct {
    const model_t *m;
    kern_pool_t *pool;
    coord_experts_t *ex;
    int n_tokens;
} setup_t;

/* conc sequences (prompt: 8 ids, or the repetitive one), n_tokens greedy tokens each. */
static int measure(const setup_t *sk, int conc, int micro, int draft, bool repetitive,
                   point_t *pt)
{
    const int V = sk->m->hp.n_vocab;
    coord_engine_params_t ep = coord_engine_params_default();
    ep.n_ctx = 160, ep.n_slots = conc, ep.n_batch = 128, ep.n_micro = micro;
    coord_engine_t *e = coord_engine_new(sk->m, sk->ex, sk->pool, &ep);
    if (!e) return -1;
    coord_sched_params_t sp = coord_sched_params_default();
    sp.n_draft = draft;
    sp.max_queue = conc;
    coord_sched_t *s = coord_sched_new(e, sk->m, &sp);
    if (!s) {
        coord_engine_free(e);
        return -1;
    }
    waiter_t w = {.left = conc};
    pthread_mutex_init(&w.mu, NULL);
    pthread_cond_init(&w.cv, NULL);
    int32_t prompt[MAX_CONC][64];
    coord_experts_stats_t x0, x1;
    coord_experts_stats(sk->ex, &x0);
    double t0 = wire_now();
    for (int c = 0; c < conc; c++) {
        int np = repetitive ? 48 : 8;
        for (int i = 0; i < np; i++)
            prompt[c][i] = repetitive ? (int32_t)(300 + 17 * (i % 6)) % V
                                      : (int32_t)((c * 131 + i * 37 + 5) % V);
        coord_gen_req_t q = {.prompt = prompt[c], .n_prompt = np, .max_tokens = sk->n_tokens,
                             .sampling = coord_sampler_params_default(), .top_logprobs = -1,
                             .on_token = on_tok, .on_done = on_done, .ud = &w};
        q.sampling.temperature = 0;
        if (coord_sched_submit(s, &q) <= 0) {
            pthread_mutex_lock(&w.mu);
            w.left--, w.bad++;
            pthread_mutex_unlock(&w.mu);
        }
    }
    pthread_mutex_lock(&w.mu);
    while (w.left > 0) pthread_cond_wait(&w.cv, &w.mu);
    pthread_mutex_unlock(&w.mu);
    double wall = wire_now() - t0;
    coord_sched_stats_t ss;
    coord_sched_stats(s, &ss);
    coord_sched_free(s);
    coord_experts_stats(sk->ex, &x1);
    coord_engine_stats_t es;
    coord_engine_stats(e, &es);
    coord_engine_free(e);
    pthread_mutex_destroy(&w.mu);
    pthread_cond_destroy(&w.cv);
    if (w.bad) {
        fprintf(stderr, "overlap: %d request(s) failed (see the log)\n", w.bad);
        return -1;
    }
    const double steps = es.decodes ? (double)es.decodes : 1;
    const double wait = x1.t_wait_s - x0.t_wait_s, comm = x1.t_comm_s - x0.t_comm_s;
    const double compute = es.t_decode_s - wait;
    pt->micro = micro;
    pt->mb_mean = es.micro_batches / steps;
    pt->tok_s = ss.tokens_generated / wall;
    pt->step_ms = es.t_decode_s / steps * 1e3;
    pt->compute_ms = compute / steps * 1e3;
    pt->comm_ms = comm / steps * 1e3;
    double lo = compute < comm ? compute : comm;
    pt->eff = lo > 0 ? (compute + comm - es.t_decode_s) / lo : 0;
    pt->tokens_per_pass = ss.gen_passes ? (double)ss.tokens_generated / ss.gen_passes : 0;
    return 0;
}

/* ---- the grid ---- */

int bench_overlap_main(int argc, char **argv)
{
    bool quick = false, json = false;
    const char *model = NULL;
    int threads = 1, n_tokens = 24;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--quick")) quick = true;
        else if (!strcmp(argv[i], "--json")) json = true;
        else if (!strcmp(argv[i], "-m") && i + 1 < argc) model = argv[++i];
        else if (!strcmp(argv[i], "-t") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "-n") && i + 1 < argc) n_tokens = atoi(argv[++i]);
        else {
            usage(strcmp(argv[i], "--help") ? stderr : stdout);
            return strcmp(argv[i], "--help") ? 2 : 0;
        }
    }
    if (threads < 1 || threads > 64 || n_tokens < 2 || n_tokens > 100) {
        usage(stderr);
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    wire_log_set_level_name("warn");
    struct stat sb;
    if (!model) {
        model = DEFAULT_MODEL_PATH;
        if (stat(model, &sb) != 0) {
            fprintf(stderr, "overlap: generating %s (once)...\n", model);
            if (model_gen_write(&default_model, model) != 0) return 1;
        }
    }
    model_t *m = NULL;
    if (model_load(model, &m) != 0) {
        fprintf(stderr, "overlap: cannot load %s\n", model);
        return 1;
    }
    static const double rtts_full[] = {0, 0.5, 1, 2, 5}, rtts_quick[] = {0, 2};
    static const int concs_full[] = {1, 4, 8, 16}, concs_quick[] = {1, 8};
    const double *rtts = quick ? rtts_quick : rtts_full;
    const int *concs = quick ? concs_quick : concs_full;
    const int n_rtt = quick ? 2 : 5, n_conc = quick ? 2 : 4, max_nodes = quick ? 2 : 3;
    node_t nodes[MAX_NODES] = {0};
    int rc = 1;
    for (int i = 0; i < max_nodes; i++)
        if (node_start(&nodes[i], model) != 0) goto out;
    kern_pool_t *pool = kern_pool_new(threads);
    if (!json) {
        printf("model %s: %d layers, n_embd %d, %d experts (top %d); %d coordinator thread(s), "
               "%d tokens per sequence\n",
               model, m->hp.n_layer, m->hp.n_embd, m->hp.n_expert, m->hp.n_expert_used, threads,
               n_tokens);
        printf("%5s %6s %4s | %9s %8s | %4s %9s %8s %10s %8s %5s | %6s\n", "nodes", "RTT ms",
               "conc", "plain t/s", "step ms", "mb", "tok/s", "step ms", "compute ms",
               "comm ms", "eff", "gain");
    }
    double tok_s_at[2][5][4] = {{{0}}};
    for (int nn = 2; nn <= max_nodes; nn++) {
        for (int ri = 0; ri < n_rtt; ri++) {
            relays_t r;
            if (relays_start(&r, nodes, nn, rtts[ri] / 2) != 0) {
                fprintf(stderr, "overlap: cannot start the relays\n");
                goto out_pool;
            }
            coord_cluster_config_t cc = coord_cluster_config_default();
            cc.n_nodes = nn;
            cc.endpoints = r.eps;
            cc.progress = false;
            coord_cluster_t *c = coord_cluster_new(&cc, m);
            if (!c) {
                relays_stop(&r);
                goto out_pool;
            }
            coord_experts_t *ex = coord_experts_remote_new(c, 128);
            setup_t sk = {m, pool, ex, 4};
            /* Warm-up: first touches of the mapped weights and connections, not measured. */
            point_t warm;
            int err = measure(&sk, 2, 0, 0, false, &warm);
            sk.n_tokens = n_tokens;
            for (int ci = 0; ci < n_conc && !err; ci++) {
                point_t plain, ovl;
                if ((err = measure(&sk, concs[ci], 1, 0, false, &plain)) != 0) break;
                if ((err = measure(&sk, concs[ci], 0, 0, false, &ovl)) != 0) break;
                tok_s_at[nn - 2][ri][ci] = ovl.tok_s;
                if (json)
                    printf("{\"nodes\":%d,\"rtt_ms\":%g,\"concurrency\":%d,\"plain_tok_s\":%.2f,"
                           "\"plain_step_ms\":%.3f,\"plain_compute_ms\":%.3f,\"plain_comm_ms\":"
                           "%.3f,\"micro_batches\":%.2f,\"tok_s\":%.2f,\"step_ms\":%.3f,"
                           "\"compute_ms\":%.3f,\"comm_ms\":%.3f,\"overlap_efficiency\":%.3f}\n",
                           nn, rtts[ri], concs[ci], plain.tok_s, plain.step_ms,
                           plain.compute_ms, plain.comm_ms, ovl.mb_mean, ovl.tok_s,
                           ovl.step_ms, ovl.compute_ms, ovl.comm_ms, ovl.eff);
                else
                    printf("%5d %6.1f %4d | %9.1f %8.2f | %4.1f %9.1f %8.2f %10.2f %8.2f %5.2f | "
                           "%5.2fx\n",
                           nn, rtts[ri], concs[ci], plain.tok_s, plain.step_ms, ovl.mb_mean,
                           ovl.tok_s, ovl.step_ms, ovl.compute_ms, ovl.comm_ms, ovl.eff,
                           ovl.tok_s / plain.tok_s);
                fflush(stdout);
            }
            /* Speculation, once per node count at the middle RTT: one sequence. */
            if (!err && ri == (n_rtt - 1) / 2) {
                point_t sp0, sp;
                sk.n_tokens = 64;
                if (!(err = measure(&sk, 1, 0, 0, true, &sp0)) &&
                    !(err = measure(&sk, 1, 0, 6, true, &sp))) {
                    if (json)
                        printf("{\"nodes\":%d,\"rtt_ms\":%g,\"speculation\":true,\"draft\":6,"
                               "\"tokens_per_round_trip\":%.3f,\"tok_s\":%.2f,"
                               "\"tok_s_without\":%.2f}\n",
                               nn, rtts[ri], sp.tokens_per_pass, sp.tok_s, sp0.tok_s);
                    else
                        printf("  speculation (draft 6, repetitive prompt, %d nodes, RTT %.1f "
                               "ms): %.2f tokens per round trip; %.1f tok/s (%.1f without)\n",
                               nn, rtts[ri], sp.tokens_per_pass, sp.tok_s, sp0.tok_s);
                }
                sk.n_tokens = n_tokens;
            }
            coord_experts_free(ex);
            coord_cluster_free(c);
            relays_stop(&r);
            if (err) goto out_pool;
        }
    }
    if (!json) {
        /* The targets, read off the table. */
        int i0 = -1, i1 = -1, c8 = -1;
        for (int i = 0; i < n_rtt; i++) i0 = rtts[i] == 0 ? i : i0, i1 = rtts[i] == 1 ? i : i1;
        for (int i = 0; i < n_conc; i++) c8 = concs[i] == 8 ? i : c8;
        if (i0 >= 0 && i1 >= 0 && c8 >= 0)
            for (int nn = 2; nn <= max_nodes; nn++)
                printf("%d nodes, concurrency 8: tokens/s at 1 ms RTT / at 0 ms = %.2f\n", nn,
                       tok_s_at[nn - 2][i1][c8] / tok_s_at[nn - 2][i0][c8]);
    }
    rc = 0;
out_pool:
    kern_pool_free(pool);
out:
    for (int i = 0; i < max_nodes; i++) node_stop(&nodes[i]);
    model_free(m);
    return rc;
}
