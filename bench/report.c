#include "bench/bench.h"
int bench_report_main(int argc, char **argv) { (void)argc, (void)argv; return 2; }
