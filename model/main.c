/* moemesh-model: the model tool. main() only picks a subcommand from the table and hands over
 * to its handler in model/ (STYLE.md: main.c parses and makes one call). To add a command, add
 * a line to the table and declare its handler in model/model.h. */
#include <stdio.h>
#include <string.h>

#include "model/model.h"

static const struct {
    const char *name;
    int (*run)(int argc, char **argv); /* argv[0] is the command name */
    const char *help;
} commands[] = {
    {"inspect", model_cli_inspect, "FILE [--json]: metadata, tensors, parameter counts"},
    {"plan", model_cli_plan, "FILE --nodes N [--node-mem GiB,...]: experts per node"},
    {"gen", model_cli_gen, "--arch A ... -o FILE: deterministic synthetic MoE model"},
    {"upcycle", model_cli_upcycle, "CKPT.bin TOK.bin -o OUT.gguf [--experts E] [--top-k K]: "
                                   "llama2.c checkpoint to GGUF MoE"},
    {"tokenize", model_cli_tokenize, "FILE [--ids-only] [--special] [--bos] < text: token ids"},
    {"detokenize", model_cli_detokenize, "FILE [--special] [ID ...]: text of ids (args or stdin)"},
};

int main(int argc, char **argv)
{
    const size_t n = sizeof(commands) / sizeof(commands[0]);
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        printf("usage: moemesh-model COMMAND [options]\n");
        for (size_t i = 0; i < n; i++) printf("  %-11s %s\n", commands[i].name, commands[i].help);
        return argc < 2 ? 2 : 0;
    }
    for (size_t i = 0; i < n; i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].run(argc - 1, argv + 1);
    fprintf(stderr, "moemesh-model: unknown command '%s' (try --help)\n", argv[1]);
    return 2;
}
