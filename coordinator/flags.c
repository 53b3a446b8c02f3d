/* The expert-node flags `run`, `eval` and `serve` share: checking them and turning them into
 * endpoints, --expert-dns names resolved here (getaddrinfo blocks: call before any loop runs).
 * Without any of them, a LeaderWorkerSet leader finds its workers from the LWS_* variables.
 */
#include "coordinator/coordinator-int.h"

#include <errno.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "wire/wire.h"

coord__cluster_flags_t coord__cluster_flags_default(void)
{
    return (coord__cluster_flags_t){.wire_type = "f32", .node_timeout = 10000, .replicas = 1,
                                    .expert_port = 5555, .rebalance_above = 1.15f,
                                    .rebalance_step = 1024};
}

void coord__endpoints_free(coord__endpoints_t *e)
{
    for (int i = 0; i < e->n; i++)
        free(e->v[i]);
    free(e->v);
    e->v = NULL;
    e->n = 0;
}

static void add_endpoint(coord__endpoints_t *s, const char *prefix, const char *ep, size_t len)
{
    for (int i = 0; i < s->n; i++)
        if (strlen(s->v[i]) == strlen(prefix) + len && !strncmp(s->v[i], prefix, strlen(prefix)) &&
            !strncmp(s->v[i] + strlen(prefix), ep, len))
            return; /* the same node twice would serve nothing more */
    s->v = xrealloc(s->v, sizeof(char *) * (s->n + 1));
    char *e = xmalloc(strlen(prefix) + len + 1);
    memcpy(e, prefix, strlen(prefix));
    memcpy(e + strlen(prefix), ep, len);
    e[strlen(prefix) + len] = 0;
    s->v[s->n++] = e;
}

/* NAME:PORT -> one tcp:// endpoint per address getaddrinfo gives, in its order. */
static int resolve(coord__endpoints_t *s, const char *spec, size_t len)
{
    char buf[300];
    const char *colon = memrchr(spec, ':', len);
    if (!colon || colon == spec || len >= sizeof(buf) || colon + 1 == spec + len) {
        fprintf(stderr, "--expert-dns: '%.*s' is not NAME:PORT\n", (int)len, spec);
        return -EINVAL;
    }
    memcpy(buf, spec, len);
    buf[len] = 0;
    buf[colon - spec] = 0;
    const char *port = buf + (colon - spec) + 1;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
    int rc = getaddrinfo(buf, port, &hints, &res);
    if (rc) {
        fprintf(stderr, "--expert-dns: cannot resolve %s: %s\n", buf, gai_strerror(rc));
        return -EINVAL;
    }
    int n = 0;
    for (struct addrinfo *a = res; a; a = a->ai_next) {
        char host[NI_MAXHOST], ep[NI_MAXHOST + 16];
        if (getnameinfo(a->ai_addr, a->ai_addrlen, host, sizeof(host), NULL, 0, NI_NUMERICHOST))
            continue;
        int w =
            snprintf(ep, sizeof(ep), a->ai_family == AF_INET6 ? "[%s]:%s" : "%s:%s", host, port);
        add_endpoint(s, "tcp://", ep, (size_t)w);
        n++;
    }
    freeaddrinfo(res);
    if (n == 0) {
        fprintf(stderr, "--expert-dns: %s resolves to no address\n", buf);
        return -EINVAL;
    }
    return 0;
}

/* Every node endpoint the flags name, deduplicated, in flag order. */
static int collect_endpoints(coord__endpoints_t *s, const coord__cluster_flags_t *cf)
{
    const coord_opt_list_t *lists[3] = {&cf->node, &cf->nodes, &cf->dns};
    for (int k = 0; k < 3; k++) {
        for (int i = 0; i < lists[k]->n; i++) {
            const char *p = lists[k]->v[i];
            while (*p) {
                size_t len = strcspn(p, ", ");
                if (len) {
                    if (k == 2) {
                        if (resolve(s, p, len)) return -EINVAL;
                    } else {
                        /* tcp:// is optional in both flags. */
                        bool has = len > 6 && !strncmp(p, "tcp://", 6);
                        add_endpoint(s, has ? "" : "tcp://", p, len);
                    }
                }
                p += len;
                while (*p == ',' || *p == ' ')
                    p++;
            }
        }
    }
    return 0;
}

/* LeaderWorkerSet names its pods <lws>-<group> (the leader) and <lws>-<group>-<i> (worker i,
 * 1..size-1) under one headless service, and tells every pod LWS_LEADER_ADDRESS =
 * "<lws>-<group>.<service>.<namespace>": worker i's name is the leader's first label plus
 * "-<i>", the rest unchanged. The names stay unresolved: ZeroMQ resolves them on every
 * (re)connect, so a worker restarted on another address is found again. */
static int lws_endpoints(coord__endpoints_t *s, int port)
{
    const char *lead = getenv("LWS_LEADER_ADDRESS"), *size = getenv("LWS_GROUP_SIZE");
    const char *idx = getenv("LWS_WORKER_INDEX");
    if (idx && *idx && strcmp(idx, "0")) {
        fprintf(stderr, "LWS_WORKER_INDEX is %s: the coordinator is the group's leader (index "
                        "0); workers run moemesh-expert\n", idx);
        return -EINVAL;
    }
    if (!size || !*size) return 0;
    char *end;
    long n = strtol(size, &end, 10);
    if (*end || n < 1 || n > COORD_OPT_LIST_MAX + 1) {
        fprintf(stderr, "bad LWS_GROUP_SIZE '%s' (1..%d pods)\n", size, COORD_OPT_LIST_MAX + 1);
        return -EINVAL;
    }
    size_t first = lead ? strcspn(lead, ".") : 0;
    if (!lead || !first || strlen(lead) > 253) {
        fprintf(stderr, "LWS_GROUP_SIZE is set but LWS_LEADER_ADDRESS is %s\n",
                lead ? "not a DNS name" : "missing");
        return -EINVAL;
    }
    if (port < 1 || port > 65535) {
        fprintf(stderr, "bad --expert-port %d (1..65535)\n", port);
        return -EINVAL;
    }
    for (long i = 1; i < n; i++) {
        char ep[300];
        int w = snprintf(ep, sizeof(ep), "%.*s-%ld%s:%d", (int)first, lead, i, lead + first, port);
        add_endpoint(s, "tcp://", ep, (size_t)w);
    }
    return 0;
}

int coord__cluster_flags_check(const coord__cluster_flags_t *cf, coord__endpoints_t *eps)
{
    wire_dtype_t dt;
    if (!cf->wire_type || wire_dtype_parse(cf->wire_type, &dt) != 0 || dt == WIRE_DTYPE_BYTES) {
        fprintf(stderr, "bad --wire-type '%s' (f32, f16, bf16 or q8_0)\n",
                cf->wire_type ? cf->wire_type : "");
        return -EINVAL;
    }
    if (cf->node_timeout < 1) {
        fprintf(stderr, "bad --node-timeout %d (milliseconds, >= 1)\n", cf->node_timeout);
        return -EINVAL;
    }
    if (cf->replicas < 1) {
        fprintf(stderr, "bad --replicas %d (copies of every expert, >= 1)\n", cf->replicas);
        return -EINVAL;
    }
    if (!(cf->rebalance_every >= 0 && cf->rebalance_every <= 1e6) ||
        !(cf->rebalance_above >= 1 && cf->rebalance_above <= 1e6) || cf->rebalance_step < 1 ||
        cf->rebalance_step > (1 << 20)) {
        fprintf(stderr, "bad --rebalance-every %g, --rebalance-above %g or --rebalance-step %d "
                "(seconds >= 0, an imbalance factor >= 1, KiB 1..1048576)\n",
                (double)cf->rebalance_every, (double)cf->rebalance_above, cf->rebalance_step);
        return -EINVAL;
    }
    int err = collect_endpoints(eps, cf);
    if (!err && eps->n == 0) err = lws_endpoints(eps, cf->expert_port);
    if (err) {
        coord__endpoints_free(eps);
        return err;
    }
    if (cf->replicas > 1 && cf->replicas > eps->n) {
        fprintf(stderr,
                "--replicas %d needs at least %d expert nodes (each copy on its own "
                "node), got %d\n",
                cf->replicas, cf->replicas, eps->n);
        coord__endpoints_free(eps);
        return -EINVAL;
    }
    return 0;
}
