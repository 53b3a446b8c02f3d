/* moemesh-coordinator: picks the command and hands over to coordinator/ (STYLE.md). */
#include <stdio.h>
#include <string.h>

#include "coordinator/coord.h"

static void usage(FILE *f)
{
    fprintf(f, "usage: moemesh-coordinator COMMAND [options]\n"
               "commands:\n"
               "  run    generate text from a prompt (-m MODEL -p TEXT -n N)\n"
               "  eval   print teacher-forced top logits per position (-m MODEL --ids \"1 2 3\")\n"
               "  serve  OpenAI-compatible HTTP API (-m MODEL --port 8080)\n"
               "Every command takes --help.\n");
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "run")) return coord_cmd_run(argc, argv);
    if (!strcmp(argv[1], "eval")) return coord_cmd_eval(argc, argv);
    if (!strcmp(argv[1], "serve")) return coord_cmd_serve(argc, argv);
    fprintf(stderr, "moemesh-coordinator: unknown command '%s'\n", argv[1]);
    usage(stderr);
    return 2;
}
