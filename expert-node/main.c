/* moemesh-expert: parses the command line and hands over to expert-node/ (STYLE.md). */
#include <stdio.h>
#include <string.h>

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "--help") == 0) {
        printf("usage: moemesh-expert COMMAND [options]\n");
        return argc < 2 ? 2 : 0;
    }
    fprintf(stderr, "moemesh-expert: unknown command '%s'\n", argv[1]);
    return 2;
}
