/* wire — what every moemesh process shares below the model: logging, checked allocation and
 * bug assertions today; the protobuf-c wire protocol and ZeroMQ framing join it with expert
 * parallelism. Nothing here depends on model/, kernels/ or the programs above it.
 */
#ifndef MOEMESH_WIRE_H
#define MOEMESH_WIRE_H

#include <stddef.h>
#include <stdint.h>

/* ---- logging (wire/log.c) ----
 * One line per event on stderr, written with a single write(2) so threads never interleave:
 * `2026-08-21T10:04:05.123Z W coord on_request: message`. */
typedef enum {
    WIRE_LOG_ERROR = 0,
    WIRE_LOG_WARN,
    WIRE_LOG_INFO,
    WIRE_LOG_DEBUG,
    WIRE_LOG_COUNT
} wire_log_level_t;

extern int wire__log_level; /* read by the macros; set with wire_log_set_level */

/* Sets the least important level printed (default WIRE_LOG_INFO). */
void wire_log_set_level(wire_log_level_t level);
/* Parses "error|warn|info|debug"; returns 0 or -EINVAL leaving the level unchanged. */
int wire_log_set_level_name(const char *name);
/* Names this process in every line ("coord", "xnode-3"); the string is copied (max 31 bytes). */
void wire_log_set_role(const char *role);
/* Formats and writes one line; use the LOG_* macros, which test the level first. */
void wire_log_write(wire_log_level_t level, const char *func, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define WIRE__LOG(lvl, ...)                                                                        \
    do {                                                                                           \
        if ((int)(lvl) <= wire__log_level) wire_log_write((lvl), __func__, __VA_ARGS__);           \
    } while (0)
#define LOG_ERR(...)   WIRE__LOG(WIRE_LOG_ERROR, __VA_ARGS__)
#define LOG_WARN(...)  WIRE__LOG(WIRE_LOG_WARN, __VA_ARGS__)
#define LOG_INFO(...)  WIRE__LOG(WIRE_LOG_INFO, __VA_ARGS__)
#define LOG_DEBUG(...) WIRE__LOG(WIRE_LOG_DEBUG, __VA_ARGS__)

/* ---- bug assertions ----
 * Always compiled in; for broken invariants only. Outside input never reaches CHECK. */
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) wire__check_failed(__FILE__, __LINE__, #cond);                                \
    } while (0)
_Noreturn void wire__check_failed(const char *file, int line, const char *what);

/* ---- allocation (wire/alloc.c) ----
 * Out of memory aborts here, so no call chain carries -ENOMEM. Sizes that come from outside
 * input must be validated before they reach these. xmalloc_aligned memory is freed with free(). */
void *xmalloc(size_t n);
void *xcalloc(size_t count, size_t size);
void *xrealloc(void *p, size_t n);
void *xmalloc_aligned(size_t align, size_t n);
char *xstrdup(const char *s);
char *xstrndup(const char *s, size_t n);

/* ---- errors ----
 * Fallible functions return 0 or a negated errno; this names either (static string). */
const char *wire_strerror(int err);

/* Seconds from a monotonic clock, for timings. */
double wire_now(void);

#endif
