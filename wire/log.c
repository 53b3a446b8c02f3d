/* One-line, one-write(2) logging to stderr, shared by every moemesh process. The level lives in
 * a plain int read by the macros: a racy read only risks one line more or less while it changes. */
#include "wire/wire.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

int wire__log_level = WIRE_LOG_INFO;
static char role[32] = "moemesh";

void wire_log_set_level(wire_log_level_t level) { wire__log_level = (int)level; }

int wire_log_set_level_name(const char *name)
{
    static const char *names[WIRE_LOG_COUNT] = {"error", "warn", "info", "debug"};
    for (int i = 0; i < WIRE_LOG_COUNT; i++) {
        if (strcmp(name, names[i]) == 0) {
            wire__log_level = i;
            return 0;
        }
    }
    return -EINVAL;
}

void wire_log_set_role(const char *r) { snprintf(role, sizeof(role), "%s", r); }

void wire_log_write(wire_log_level_t level, const char *func, const char *fmt, ...)
{
    static const char letters[WIRE_LOG_COUNT] = {'E', 'W', 'I', 'D'};
    char line[2048];
    struct timeval tv;
    struct tm tm;
    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    int n = snprintf(line, sizeof(line), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ %c %s %s: ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, (int)(tv.tv_usec / 1000), letters[level], role, func);
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(line + n, sizeof(line) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    /* A line too long for the buffer is cut, not split: one event stays one line. */
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(line) - 2) len = sizeof(line) - 2;
    line[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, line, len);
    (void)w;
}

_Noreturn void wire__check_failed(const char *file, int line, const char *what)
{
    char buf[512];
    int n = snprintf(buf, sizeof(buf), "%s:%d: CHECK failed: %s\n", file, line, what);
    ssize_t w = write(STDERR_FILENO, buf, n > 0 ? (size_t)n : 0);
    (void)w;
    abort();
}

double wire_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}
