/* moemesh-model: parses the command line and hands over to model/ (STYLE.md). */
#include <stdio.h>
#include <string.h>

#include "model/model.h"

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0) {
        printf("usage: moemesh-model COMMAND [options]\n");
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "upcycle") == 0) return model_cli_upcycle(argc - 1, argv + 1);
    fprintf(stderr, "moemesh-model: unknown command '%s'\n", argv[1]);
    return 2;
}
