set title 'measured vs limit (ms per generated token)'
set logscale xy
set xlabel 'limit model, ms/token'
set ylabel 'measured, ms/token'
set grid
set key outside right
plot 'measured_vs_limit.dat' index 0 with points pt 7 title 'compute-bound', '' index 1 with points pt 5 title 'latency-bound', '' index 2 with points pt 9 title 'wire-bound', x with lines dt 2 title 'measured = limit'
