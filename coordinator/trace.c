/* The timeline trace: events recorded in memory by the decoding thread, written as Chrome
 * trace-event JSON ({"traceEvents": [...]}, "X" complete events, microseconds) by
 * coord_trace_write. Times are wire_now() seconds, shown relative to the trace's creation.
 *
 * Lanes are Chrome "threads" of one process: tid 1 the coordinator's compute, tid 2 its decode
 * steps, and per node n (from 0) tids 100 * (n + 1) + j for its request lanes (j < REQ_LANES)
 * and 100 * (n + 1) + 99 for its compute. Invariant: events of one lane never overlap — the
 * coordinator's come from one thread one after another; a request takes the node's first
 * request lane that is free when it starts; a node's compute, estimated from its RESULT, is
 * pushed after the previous one when the estimate would overlap it (the node computes one
 * FORWARD at a time). Timestamps are written as integer nanoseconds printed in microseconds, so
 * ts + dur of one event never rounds past the next event's ts.
 */
#include "coordinator/coord.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "wire/wire.h"

#define REQ_LANES 32   /* request lanes per node: more than a node ever has in flight */
#define MAX_NODES 1024 /* nodes with lanes; events of others are dropped */

typedef struct {
    const char *name;  /* borrowed: a literal */
    int64_t t0, t1;    /* ns since the trace began */
    int32_t tid;
    int16_t layer, mb; /* -1: none */
    int32_t n_tok;     /* -1: none */
} event_t;

typedef struct {
    int64_t req_end[REQ_LANES]; /* ns: end of the last event on each request lane */
    int64_t remote_end;         /* ns: end of the last compute event */
    int used;                   /* request lanes used so far (named in the file) */
    char *name;                 /* owned, NULL: "node N" */
} node_lanes_t;

struct coord_trace {
    char *path;
    FILE *f;               /* open from new to free */
    double t_origin;       /* wire_now() at creation */
    event_t *ev;           /* (cap) grown on demand up to max */
    int n, cap, max;
    uint64_t dropped;
    node_lanes_t *nodes;   /* (n_nodes) grown on demand */
    int n_nodes;
};

coord_trace_t *coord_trace_new(const char *path, int max_events)
{
    FILE *f = fopen(path, "w");
    if (!f) {
        LOG_ERR("cannot create the trace file %s: %s", path, strerror(errno));
        return NULL;
    }
    coord_trace_t *tr = xcalloc(1, sizeof(*tr));
    tr->path = xstrdup(path);
    tr->f = f;
    tr->t_origin = wire_now();
    tr->max = max_events > 0 ? max_events : COORD_TRACE_MAX_EVENTS;
    return tr;
}

void coord_trace_free(coord_trace_t *tr)
{
    if (!tr) return;
    if (tr->f) fclose(tr->f);
    for (int i = 0; i < tr->n_nodes; i++) free(tr->nodes[i].name);
    free(tr->nodes);
    free(tr->ev);
    free(tr->path);
    free(tr);
}

static node_lanes_t *node_of(coord_trace_t *tr, int node)
{
    if (node < 0 || node >= MAX_NODES) return NULL;
    if (node >= tr->n_nodes) {
        tr->nodes = xrealloc(tr->nodes, sizeof(*tr->nodes) * (size_t)(node + 1));
        memset(tr->nodes + tr->n_nodes, 0, sizeof(*tr->nodes) * (size_t)(node + 1 - tr->n_nodes));
        tr->n_nodes = node + 1;
    }
    return &tr->nodes[node];
}

void coord_trace_node_name(coord_trace_t *tr, int node, const char *name)
{
    node_lanes_t *nl = tr ? node_of(tr, node) : NULL;
    if (!nl) return;
    free(nl->name);
    nl->name = xstrdup(name);
}

static int64_t ns(const coord_trace_t *tr, double t)
{
    double v = (t - tr->t_origin) * 1e9;
    return v < 0 ? 0 : (int64_t)(v + 0.5);
}

void coord_trace_event(coord_trace_t *tr, coord_trace_lane_t lane, int node, const char *name,
                       double t0, double t1, int layer, int mb, int n_tok)
{
    if (!tr) return;
    if (tr->n == tr->max) {
        tr->dropped++;
        return;
    }
    event_t e = {name, ns(tr, t0), ns(tr, t1), 0, (int16_t)layer, (int16_t)mb, n_tok};
    if (e.t1 < e.t0) e.t1 = e.t0;
    node_lanes_t *nl = NULL;
    switch (lane) {
    case COORD_TRACE_COORD: e.tid = 1; break;
    case COORD_TRACE_STEP: e.tid = 2; break;
    case COORD_TRACE_REQUEST: {
        if (!(nl = node_of(tr, node))) goto drop;
        int j = 0;
        while (j < REQ_LANES && nl->req_end[j] > e.t0) j++;
        if (j == REQ_LANES) goto drop;
        nl->req_end[j] = e.t1;
        if (j + 1 > nl->used) nl->used = j + 1;
        e.tid = 100 * (node + 1) + j;
        break;
    }
    case COORD_TRACE_REMOTE:
        if (!(nl = node_of(tr, node))) goto drop;
        if (e.t0 < nl->remote_end) {
            e.t1 += nl->remote_end - e.t0;
            e.t0 = nl->remote_end;
        }
        nl->remote_end = e.t1;
        e.tid = 100 * (node + 1) + 99;
        break;
    default:
        goto drop;
    }
    if (tr->n == tr->cap) {
        tr->cap = tr->cap ? 2 * tr->cap : 4096;
        if (tr->cap > tr->max) tr->cap = tr->max;
        tr->ev = xrealloc(tr->ev, sizeof(event_t) * (size_t)tr->cap);
    }
    tr->ev[tr->n++] = e;
    return;
drop:
    tr->dropped++;
}

/* "12.345" microseconds from nanoseconds, exactly. */
static void put_us(FILE *f, int64_t v)
{
    fprintf(f, "%" PRId64 ".%03d", v / 1000, (int)(v % 1000));
}

/* A JSON string of s: quotes, backslashes and control characters escaped. */
static void put_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') fprintf(f, "\\%c", c);
        else if (c < 0x20) fprintf(f, "\\u%04x", c);
        else fputc(c, f);
    }
    fputc('"', f);
}

/* Metadata naming lane tid and sorting the lanes by tid; follows another entry. */
static void lane_name(FILE *f, int tid, const char *name)
{
    fprintf(f, ",\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":1,\"tid\":%d,\"args\":{\"name\":",
            tid);
    put_str(f, name);
    fprintf(f, "}},\n{\"name\":\"thread_sort_index\",\"ph\":\"M\",\"pid\":1,\"tid\":%d,"
               "\"args\":{\"sort_index\":%d}}", tid, tid);
}

int coord_trace_write(coord_trace_t *tr)
{
    if (!tr) return 0;
    FILE *f = tr->f;
    rewind(f);
    if (ftruncate(fileno(f), 0) != 0) {
        int err = -errno;
        LOG_ERR("cannot truncate the trace file %s: %s", tr->path, strerror(errno));
        return err;
    }
    fprintf(f, "{\"displayTimeUnit\":\"ms\",\"otherData\":{\"dropped_events\":%" PRIu64
               ",\"max_events\":%d},\n\"traceEvents\":[",
            tr->dropped, tr->max);
    fprintf(f, "\n{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":1,\"tid\":1,"
               "\"args\":{\"name\":\"moemesh coordinator\"}}");
    lane_name(f, 1, "coordinator compute");
    lane_name(f, 2, "decode steps");
    for (int i = 0; i < tr->n_nodes; i++) {
        const node_lanes_t *nl = &tr->nodes[i];
        char buf[320];
        for (int j = 0; j < nl->used; j++) {
            snprintf(buf, sizeof(buf), "node %d %s requests%s", i, nl->name ? nl->name : "",
                     j ? " (more in flight)" : "");
            lane_name(f, 100 * (i + 1) + j, buf);
        }
        snprintf(buf, sizeof(buf), "node %d %s compute (from RESULT)", i, nl->name ? nl->name : "");
        lane_name(f, 100 * (i + 1) + 99, buf);
    }
    for (int i = 0; i < tr->n; i++) {
        const event_t *e = &tr->ev[i];
        fprintf(f, ",\n{\"name\":");
        put_str(f, e->name);
        fprintf(f, ",\"cat\":\"%s\",\"ph\":\"X\",\"pid\":1,\"tid\":%d,\"ts\":",
                e->tid < 100 ? "coordinator" : "node", (int)e->tid);
        put_us(f, e->t0);
        fprintf(f, ",\"dur\":");
        put_us(f, e->t1 - e->t0);
        fprintf(f, ",\"args\":{");
        const char *sep = "";
        if (e->layer >= 0) fprintf(f, "\"layer\":%d", e->layer), sep = ",";
        if (e->mb >= 0) fprintf(f, "%s\"mb\":%d", sep, e->mb), sep = ",";
        if (e->n_tok >= 0) fprintf(f, "%s\"tokens\":%d", sep, (int)e->n_tok);
        fprintf(f, "}}");
    }
    fprintf(f, "\n]}\n");
    if (fflush(f) != 0 || ferror(f)) {
        int err = errno ? -errno : -EIO;
        LOG_ERR("cannot write the trace file %s: %s", tr->path, strerror(-err));
        clearerr(f);
        return err;
    }
    if (tr->dropped)
        LOG_WARN("trace %s: %" PRIu64 " events dropped beyond the cap of %d", tr->path,
                 tr->dropped, tr->max);
    return 0;
}
