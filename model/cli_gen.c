/* `moemesh-model gen`: placeholder until the generator lands. */
#include <stdio.h>

#include "model/model.h"

int model_cli_gen(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "moemesh-model gen: not implemented yet\n");
    return 1;
}
