set title 'tokens/s vs concurrency' noenhanced
set xlabel 'concurrency'
set ylabel 'tokens/s (median, min-max)'
set key outside right
set grid
set yrange [0:*]
set logscale x 2
plot 'tps_vs_conc.dat' index 0 with yerrorlines title 'RTT ms 0' noenhanced, 'tps_vs_conc.dat' index 1 with yerrorlines title 'RTT ms 1' noenhanced, 'tps_vs_conc.dat' index 2 with yerrorlines title 'RTT ms 5' noenhanced
