/* Child processes and plain HTTP for the coordinator's process tests (fault_test.c,
 * failover_test.c, cluster_test.c, ...): the programs beside the test binary started with their stderr in a log
 * file and their "listening on ADDR" line read back, killed with the test (PR_SET_PDEATHSIG),
 * and one-request-per-connection HTTP on 127.0.0.1. Failures are Criterion assertions.
 */
#ifndef MOEMESH_TESTS_TPROC_H
#define MOEMESH_TESTS_TPROC_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

typedef struct {
    pid_t pid;     /* 0: not running */
    char log[128]; /* stderr of the process; "" until first started */
} tproc_t;

/* out = build/bin/NAME, or build/san/bin/NAME for the sanitizer build (beside this test
 * binary's folder); fails the test when it is not there. */
void tproc_prog_path(const char *name, char *out, size_t cap);
/* Starts argv (argv[0] a program name in build/bin or build/san/bin) as p, stderr appended to
 * /tmp/moemesh-<tag>-<pid>-<slot>.log (kept across restarts of p), and copies what follows
 * "listening on " in its first stdout line into addr (wait_s at most). */
void tproc_start(tproc_t *p, const char *tag, int slot, const char *const *argv, char *addr,
                 size_t cap, double wait_s);
/* As tproc_start, but stderr goes to p->log when that is set (appended), else by
 * MOEMESH_TEST_NODE_LOG: unset, /dev/null; a folder, DIR/node-PID.log there; anything else,
 * this test's stderr. argv[0] may also be a path (it has a '/'). */
void tproc_spawn(tproc_t *p, const char *const *argv, char *addr, size_t cap, double wait_s);
/* SIGCONT (a stopped process must be able to die), SIGKILL and reap; no-op when not running. */
void tproc_kill(tproc_t *p);
/* Kills all n and removes their logs unless keep_logs. */
void tproc_reap(tproc_t *p, int n, bool keep_logs);
/* Fails the test when p has exited. */
void tproc_assert_alive(const tproc_t *p);
/* Lines of p's log containing needle. */
int tproc_log_count(const tproc_t *p, const char *needle);

/* Sends one request (GET without body, else POST; Connection: close) on a new connection to
 * 127.0.0.1:port; returns the socket for tproc_read_all, or -1. */
int tproc_open_request(int port, const char *path, const char *body);
/* The whole answer on fd (closed), NUL-terminated, malloc'd; timeout_s bounds it. gap (may be
 * NULL) gets the longest silence between two reads after the first; first (may be NULL) is
 * raised at the first read. */
char *tproc_read_all(int fd, double timeout_s, double *gap, atomic_int *first);
/* Both of the above; fails the test when the port cannot be reached. */
char *tproc_request(int port, const char *path, const char *body, double timeout_s);
/* The status code of an HTTP/1.1 answer, 0 when there is none. */
int tproc_status(const char *answer);
/* GET /health's status; body (may be NULL) gets a malloc'd copy of its body. */
int tproc_health(int port, char **body);
/* Polls /health every 50 ms until it says want; returns the seconds that took (fails after
 * limit_s). */
double tproc_wait_health(int port, int want, double limit_s);
/* The text of a non-streamed completion answer's first choice (malloc'd); fails unless 200. */
char *tproc_completion_text(const char *answer);

#endif
