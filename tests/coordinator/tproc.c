/* See tproc.h. */
#include "tproc.h"

#include <arpa/inet.h>
#include <criterion/criterion.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "wire/wire.h"

void tproc_prog_path(const char *name, char *out, size_t cap)
{
    char self[PATH_MAX - 64];
    ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
    cr_assert(n > 0);
    self[n] = 0;
    *strrchr(self, '/') = 0; /* .../tests */
    *strrchr(self, '/') = 0; /* build or build/san */
    snprintf(out, cap, "%s/bin/%s", self, name);
    cr_assert_eq(access(out, X_OK), 0, "%s is missing: run make first", out);
}

void tproc_start(tproc_t *p, const char *tag, int slot, const char *const *argv, char *addr,
                 size_t cap, double wait_s)
{
    if (!p->log[0]) {
        snprintf(p->log, sizeof(p->log), "/tmp/moemesh-%s-%d-%d.log", tag, (int)getpid(), slot);
        unlink(p->log);
    }
    tproc_spawn(p, argv, addr, cap, wait_s);
}

/* In the child: fd 2 as tproc_spawn says. */
static void child_stderr(const char *log)
{
    int fd = -1;
    if (log[0]) {
        fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0600);
    } else {
        /* Node logs are noise unless asked for: MOEMESH_TEST_NODE_LOG=DIR keeps each one in
         * DIR/node-PID.log (for failures seen only in long runs), any other value lets them
         * through to the test's stderr. */
        const char *keep = getenv("MOEMESH_TEST_NODE_LOG");
        struct stat sb;
        if (keep && stat(keep, &sb) == 0 && S_ISDIR(sb.st_mode)) {
            char where[PATH_MAX];
            snprintf(where, sizeof(where), "%s/node-%d.log", keep, (int)getpid());
            fd = open(where, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        } else if (!keep) {
            fd = open("/dev/null", O_WRONLY | O_CLOEXEC);
        }
    }
    if (fd >= 0) dup2(fd, 2);
}

void tproc_spawn(tproc_t *p, const char *const *argv, char *addr, size_t cap, double wait_s)
{
    char prog[PATH_MAX];
    if (strchr(argv[0], '/'))
        snprintf(prog, sizeof(prog), "%s", argv[0]);
    else
        tproc_prog_path(argv[0], prog, sizeof(prog));
    int fds[2];
    cr_assert_eq(pipe(fds), 0);
    pid_t parent = getpid();
    pid_t pid = fork();
    cr_assert_geq(pid, 0);
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent) _exit(127);
        dup2(fds[1], 1);
        close(fds[0]), close(fds[1]);
        child_stderr(p->log);
        execv(prog, (char *const *)argv);
        _exit(127);
    }
    close(fds[1]);
    p->pid = pid;
    char line[256];
    size_t len = 0;
    double deadline = wire_now() + wait_s;
    while (len < sizeof(line) - 1) {
        struct pollfd pf = {fds[0], POLLIN, 0};
        int left = (int)((deadline - wire_now()) * 1e3);
        cr_assert(left > 0 && poll(&pf, 1, left) == 1, "%s: no 'listening on' line in %.0f s",
                  argv[0], wait_s);
        cr_assert_eq(read(fds[0], line + len, 1), 1, "%s exited (log %s)", argv[0],
                     p->log[0] ? p->log : "not kept");
        if (line[len] == '\n') break;
        len++;
    }
    close(fds[0]); /* later stdout lines: none are written by either program */
    line[len] = 0;
    char fmt[32];
    snprintf(fmt, sizeof(fmt), "listening on %%%zus", cap - 1);
    cr_assert_eq(sscanf(line, fmt, addr), 1, "%s said '%s'", argv[0], line);
}

void tproc_kill(tproc_t *p)
{
    if (p->pid > 0) kill(p->pid, SIGCONT), kill(p->pid, SIGKILL), waitpid(p->pid, NULL, 0);
    p->pid = 0;
}

void tproc_reap(tproc_t *p, int n, bool keep_logs)
{
    for (int i = 0; i < n; i++) {
        tproc_kill(&p[i]);
        if (p[i].log[0] && !keep_logs) unlink(p[i].log);
    }
}

void tproc_assert_alive(const tproc_t *p)
{
    cr_assert_eq(waitpid(p->pid, NULL, WNOHANG), 0, "process %d died (log %s)", (int)p->pid,
                 p->log);
}

int tproc_log_count(const tproc_t *p, const char *needle)
{
    FILE *f = fopen(p->log, "r");
    if (!f) return 0;
    char line[1024];
    int n = 0;
    while (fgets(line, sizeof(line), f)) n += strstr(line, needle) != NULL;
    fclose(f);
    return n;
}

int tproc_open_request(int port, const char *path, const char *body)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
        close(fd);
        return -1;
    }
    char req[2048];
    if (body)
        snprintf(req, sizeof(req), "POST %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                 "Content-Length: %zu\r\n\r\n%s", path, strlen(body), body);
    else
        snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                 path);
    if (send(fd, req, strlen(req), MSG_NOSIGNAL) != (ssize_t)strlen(req)) {
        close(fd);
        return -1;
    }
    return fd;
}

char *tproc_read_all(int fd, double timeout_s, double *gap, atomic_int *first)
{
    size_t len = 0, cap = 1 << 20;
    char *out = malloc(cap);
    double end = wire_now() + timeout_s, last = 0;
    if (gap) *gap = 0;
    struct pollfd pf = {.fd = fd, .events = POLLIN};
    while (len < cap - 1 && wire_now() < end &&
           poll(&pf, 1, (int)((end - wire_now()) * 1000) + 1) == 1) {
        ssize_t k = recv(fd, out + len, cap - 1 - len, 0);
        if (k <= 0) break;
        double now = wire_now();
        if (last > 0 && gap && now - last > *gap) *gap = now - last;
        if (last == 0 && first) atomic_fetch_add(first, 1);
        last = now;
        len += (size_t)k;
    }
    out[len] = 0;
    close(fd);
    return out;
}

char *tproc_request(int port, const char *path, const char *body, double timeout_s)
{
    int fd = tproc_open_request(port, path, body);
    cr_assert_geq(fd, 0, "cannot reach 127.0.0.1:%d", port);
    return tproc_read_all(fd, timeout_s, NULL, NULL);
}

int tproc_status(const char *answer)
{
    int st = 0;
    sscanf(answer, "HTTP/1.1 %d", &st);
    return st;
}

int tproc_health(int port, char **body)
{
    char *r = tproc_request(port, "/health", NULL, 10);
    int st = tproc_status(r);
    char *b = strstr(r, "\r\n\r\n");
    if (body) *body = strdup(b ? b + 4 : "");
    free(r);
    return st;
}

double tproc_wait_health(int port, int want, double limit_s)
{
    double t0 = wire_now();
    for (;;) {
        if (tproc_health(port, NULL) == want) return wire_now() - t0;
        cr_assert_lt(wire_now() - t0, limit_s, "/health not %d within %.0f s", want, limit_s);
        usleep(50000);
    }
}

char *tproc_completion_text(const char *answer)
{
    cr_assert_eq(tproc_status(answer), 200, "%s", answer);
    const char *b = strstr(answer, "\r\n\r\n");
    cr_assert_not_null(b);
    json_t *j = json_loads(b + 4, 0, NULL);
    cr_assert_not_null(j);
    const char *t = json_string_value(
        json_object_get(json_array_get(json_object_get(j, "choices"), 0), "text"));
    cr_assert_not_null(t, "%s", answer);
    char *out = strdup(t);
    json_decref(j);
    return out;
}
