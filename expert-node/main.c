/* moemesh-expert: parses the command line, sets the signals and runs one expert node
 * (STYLE.md: main.c holds only main()). The one line on stdout is the endpoint actually bound,
 * so scripts and tests can start the node on port 0 ("*") and read where it listens.
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "expert-node/xnode.h"

static xnode_t *volatile g_node;

static void on_signal(int sig)
{
    (void)sig;
    xnode_t *xn = g_node;
    if (xn) xnode_stop(xn); /* one write(2): async-signal-safe */
}

int main(int argc, char **argv)
{
    if (argc >= 2 && !strcmp(argv[1], "keygen")) return xnode_cli_keygen(argc - 1, argv + 1);
    xnode_config_t cfg = xnode_config_default();
    int status;
    if (!xnode_cli_parse(argc, argv, &cfg, &status)) return status;
    wire_log_set_role(cfg.name ? cfg.name : "xnode");

    xnode_t *xn = xnode_new(&cfg);
    if (!xn) return 1;
    g_node = xn;
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    printf("listening on %s\n", xnode_endpoint(xn));
    fflush(stdout);
    int err = xnode_run(xn);
    g_node = NULL;
    xnode_free(xn);
    return err ? 1 : 0;
}
